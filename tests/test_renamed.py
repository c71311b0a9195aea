"""Each public name means one thing: ``deepworks.evaluate``, ``report``, ``export`` and ``train`` are
the functions, and the subpackages they shadowed are ``evaluation``, ``reporting``, ``exporting`` and
``training``. Code that imports the old paths still works, warns, and gets the very same modules.

Each case runs in a fresh interpreter, because what is being checked is the import system's state
(``sys.modules``, the attributes Python binds on a package when it imports a submodule)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=SRC.parent, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_dotted_paths_the_docs_print_resolve_after_import_deepworks():
    _run("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import deepworks, deepworks.evaluation.diagnosis, deepworks.reporting.compare, deepworks.exporting.to_onnx
            import deepworks.training.trainer
        assert not [w for w in caught if "is renamed" in str(w.message)]
        from deepworks.pipeline import evaluate
        from deepworks.front import train
        assert deepworks.evaluation.diagnosis.diagnose and deepworks.training.trainer.Trainer is deepworks.Trainer
        assert deepworks.evaluate is evaluate and deepworks.train is train
        assert deepworks.report is deepworks.reporting.write_report and deepworks.export is deepworks.exporting.export
    """)


def test_old_paths_import_the_same_modules_with_a_warning_and_leave_the_functions_alone():
    _run("""
        import sys, warnings
        import deepworks
        functions = {name: getattr(deepworks, name) for name in ("evaluate", "report", "export", "train")}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from deepworks.evaluate.metrics import classification_report
            import deepworks.evaluate.diagnosis
            from deepworks.report import compare
            import deepworks.export.to_onnx
            from deepworks.train.trainer import Trainer
            import deepworks.train
        import deepworks.evaluation.metrics as metrics
        assert classification_report is metrics.classification_report
        assert sys.modules["deepworks.evaluate.diagnosis"] is sys.modules["deepworks.evaluation.diagnosis"]
        assert compare is sys.modules["deepworks.reporting.compare"] and Trainer is deepworks.Trainer
        for name, function in functions.items():  # not rebound to the old-named subpackage
            assert getattr(deepworks, name) is function, name
        messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
        assert "deepworks.evaluate is renamed deepworks.evaluation: import deepworks.evaluation instead" in messages[0]
        assert any("deepworks.train.trainer is renamed deepworks.training.trainer" in m for m in messages), messages
        assert all(w.filename == "<string>" for w in caught), [w.filename for w in caught]  # the importing line
    """)


def test_an_old_path_import_in_a_fresh_process_before_deepworks_warns_once_and_works():
    proc = subprocess.run([sys.executable, "-W", "default::DeprecationWarning", "-c",
                           "from deepworks.export import ExportError; import deepworks; print(deepworks.export.__module__)"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deepworks.exporting.to_onnx"
    assert proc.stderr.count("DeprecationWarning: deepworks.export is renamed deepworks.exporting") == 1
