"""A model of one's own: named by import path (``module:factory``) or added by an installed package's
``deepworks.models`` entry point, it gets what a built-in model gets (training, report, predict in
a fresh process, evaluate, export with its parity check, serve, tune), ``deepworks models`` lists
it, and a run that names it refuses to load without it and warns when its module has changed.

One digits run of a small CNN class defined in a module written for the test is shared by the
module (trained once, 1 epoch)."""

from __future__ import annotations

import hashlib

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import deepworks
from deepworks.cli import main
from deepworks.errors import ConfigError, ModelImportError
from deepworks.models import MODELS
from deepworks.models.external import ModelSourceWarning

SRC = str(Path(__file__).resolve().parents[1] / "src")

NETS = '''
"""Small networks of a user's own, outside deepworks."""
import math

from torch import nn


class SmallCNN(nn.Module):
    """One conv layer and a linear head.

    channels: filters of the conv layer
    """

    def __init__(self, input_shape, num_classes, channels: int = 4):
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(channels * h * w, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))  # (B, channels*h*w) -> (B, num_classes)


def mlp(input_shape, num_classes, width: int = 8):
    """A one-hidden-layer network on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes))


def not_a_network(input_shape, num_classes):
    return "a network"


def one_argument(input_shape):
    return nn.Identity()


class NotAModule:
    def __init__(self, input_shape, num_classes):
        pass


SIZE = 3
'''

QUIET = {"epochs": 1, "batch_size": 64, "progress": "none", "precision": "fp32",
         "optimizer": {"name": "adamw", "lr": 0.01}}


def _forget(module: str) -> None:
    """Drop ``module`` from the import cache, so the next use imports it again from sys.path."""
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def nets_dir(tmp_path_factory):
    """A folder holding ``user_nets.py``, on sys.path for the module's tests."""
    folder = tmp_path_factory.mktemp("user-code")
    (folder / "user_nets.py").write_text(NETS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    _forget("user_nets")


@pytest.fixture(scope="module")
def own_run(nets_dir, tmp_path_factory):
    """A digits run of ``user_nets:SmallCNN`` (channels 6), one epoch, with its report."""
    config = {"name": "own", "data": {"dataset": "digits"}, "model": {"name": "user_nets:SmallCNN", "channels": 6},
              "train": QUIET}
    return deepworks.train(config, run_dir=tmp_path_factory.mktemp("own") / "run")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digit-files")
    digits = load_digits()
    files = []
    for i in range(5):
        files.append(folder / f"digit-{i}.png")
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(files[-1])
    return files


@pytest.fixture
def registry_kept():
    """MODELS as it was before the test: entry points a test loads are forgotten after it."""
    entries, loaded = dict(MODELS._entries), set(MODELS._loaded_points)
    yield
    MODELS._entries.clear()
    MODELS._entries.update(entries)
    MODELS._loaded_points.clear()
    MODELS._loaded_points.update(loaded)


def test_an_imported_model_trains_reports_and_records_its_module(own_run, nets_dir):
    run = own_run
    assert type(run.model).__name__ == "SmallCNN" and run.model.conv[0].out_channels == 6  # the config's key
    assert (run.dir / "report.html").is_file() and run.summary["test"]["accuracy"] > 0.5
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())["model"]
    assert saved["name"] == "user_nets:SmallCNN" and saved["channels"] == 6
    source = json.loads((run.dir / "data.json").read_text())["model_source"]
    module_file = nets_dir / "user_nets.py"
    assert source["module"] == "user_nets" and Path(source["file"]) == module_file.resolve()
    assert source["sha256"] == hashlib.sha256(module_file.read_bytes()).hexdigest()


def test_evaluate_imports_the_model_again_and_gives_the_runs_test_figures(own_run):
    _forget("user_nets")
    report = deepworks.evaluate(own_run.dir, split="test")
    assert "user_nets" in sys.modules  # imported again by name
    assert report["accuracy"] == pytest.approx(own_run.summary["test"]["accuracy"], abs=1e-9)


def test_a_fresh_process_predicts_what_this_one_does(own_run, nets_dir, digit_files):
    here = deepworks.Predictor(own_run.dir, device="cpu").predict_proba(digit_files)
    code = textwrap.dedent("""
        import json, sys
        import deepworks
        p = deepworks.Predictor(sys.argv[1], device="cpu", workers=0)
        print(json.dumps(p.predict_proba(sys.argv[2:]).tolist()))
    """)
    env_path = f"{SRC}:{nets_dir}"
    done = subprocess.run([sys.executable, "-c", code, str(own_run.dir), *map(str, digit_files)],
                          capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    there = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(there, here, atol=1e-6)


def test_export_passes_its_parity_check(own_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(own_run.dir, run_dir)
    out = tmp_path / "own.onnx"
    sidecar = deepworks.export(run_dir, out=out)  # raises ExportError when ONNX Runtime and PyTorch differ
    assert out.is_file() and sidecar["classes"] == own_run.classes
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4


def test_serve_answers_as_predict_does(own_run, digit_files):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    expected = deepworks.predict(own_run.dir, digit_files, top_k=2)
    with TestClient(create_app(own_run.dir)) as client:
        for f, want in zip(digit_files, expected):
            for _ in range(600):
                r = client.post("/predict?top_k=2", files={"file": (f.name, f.read_bytes(), "image/png")})
                if r.status_code != 503:  # still loading
                    break
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [p["label"] for p in got] == [p["class"] for p in want["top_k"]]
            assert got[0]["probability"] == pytest.approx(want["top_k"][0]["probability"], abs=1e-4)


def test_tune_searches_the_models_own_keys(nets_dir, tmp_path):
    pytest.importorskip("optuna")
    config = {"name": "own-tune", "data": {"dataset": "digits"}, "model": {"name": "user_nets:mlp"},
              "train": QUIET, "report": False,
              "tune": {"metric": "val_accuracy", "space": {"model.width": {"choice": [4, 12]}}}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    study = tmp_path / "study"
    assert main(["tune", str(path), "--sampler", "grid", "--trials", "2", "--study-dir", str(study)]) == 0
    widths = []
    for trial in sorted(study.glob("trial-*")):
        model = yaml.safe_load((trial / "config.yaml").read_text())["model"]
        assert model["name"] == "user_nets:mlp"
        widths.append(model["width"])
        assert (trial / "summary.json").is_file()
    assert sorted(widths) == [4, 12]


def test_a_table_regression_gives_the_function_the_feature_count_and_one_output_per_target(nets_dir, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    rows = ["a,b,c,y"] + [f"{a:.4f},{b:.4f},{c:.4f},{2 * a - b + 0.5 * c:.4f}" for a, b, c in x]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    config = {"data": {"path": str(tmp_path / "t.csv"), "target": "y", "task": "regression"},
              "model": {"name": "user_nets:mlp", "width": 7}, "train": QUIET, "report": False}
    run = deepworks.train(config, run_dir=tmp_path / "run")
    net = run.model.net  # a table run's model is TableInput (slots -> features) and then the user's network
    first, last = net[1], net[3]
    assert (first.in_features, first.out_features, last.out_features) == (3, 7, 1)
    assert run.task.name == "regression" and "rmse" in run.summary["test"]


def test_a_run_whose_module_is_gone_is_refused_naming_the_run(own_run, nets_dir, digit_files, capsys):
    sys.path.remove(str(nets_dir))
    _forget("user_nets")
    try:
        with pytest.raises(ModelImportError) as caught:
            deepworks.load_run(own_run.dir)
        message = str(caught.value)
        assert message.startswith(f"model 'user_nets:SmallCNN' of run {own_run.dir}: cannot import 'user_nets'")
        assert "Fix: install the package that provides it, or put the folder that holds user_nets on PYTHONPATH" in message
        assert str((nets_dir / "user_nets.py").resolve()) in message  # where it was when the run was trained
        capsys.readouterr()
        assert main(["predict", str(own_run.dir), str(digit_files[0])]) == 2
        err = capsys.readouterr().err
        assert "cannot import 'user_nets'" in err and "Traceback" not in err
    finally:
        sys.path.insert(0, str(nets_dir))


def test_a_changed_module_is_a_warning_and_the_run_still_loads(own_run, nets_dir, tmp_path):
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "user_nets.py").write_text(NETS + "\n# edited after the run was trained\n")
    sys.path.insert(0, str(changed))
    _forget("user_nets")
    try:
        with pytest.warns(ModelSourceWarning, match=r"user_nets\.py has changed since the run was trained"):
            loaded = deepworks.load_run(own_run.dir)
        assert type(loaded.model).__name__ == "SmallCNN"
    finally:
        sys.path.remove(str(changed))
        _forget("user_nets")


@pytest.mark.parametrize(("model", "expected"), [
    ({"name": "user_nets:SmallCNN", "channel": 3},
     "model.channel: unknown key. Did you mean 'model.channels'? Valid keys here: channels."),
    ({"name": "user_nets:SmallCNN", "channels": "many"}, "model.channels: Input should be a valid integer"),
    ({"name": "no_such_package.nets:Net"},
     "model.name: cannot import 'no_such_package.nets' (no module named 'no_such_package'). Fix: install"),
    ({"name": "user_nets:SmallCN"}, "model.name: user_nets has no attribute 'SmallCN' (did you mean 'SmallCNN'?)"),
    ({"name": "user_nets:SIZE"}, "model.name: 'user_nets:SIZE' is an int, not a model: expected a function or an "
                                 "nn.Module class"),
    ({"name": "user_nets:NotAModule"}, "'user_nets:NotAModule' is the class NotAModule, not a model"),
    ({"name": "user_nets:one_argument"}, "takes (input_shape), not (input_shape, num_classes, ...)"),
    ({"name": "user_nets:not_a_network"}, "model.name: user_nets:not_a_network returned a str, not a torch nn.Module"),
    ({"name": "user nets:x"}, "model.name: 'user nets:x' is not an import path: expected 'package.module:factory'"),
], ids=["unknown-key", "bad-type", "no-module", "no-attribute", "not-callable", "not-a-module-class", "one-argument",
        "returns-no-module", "not-a-path"])
def test_bad_import_paths_are_one_line_errors_and_exit_2(nets_dir, tmp_path, capsys, model, expected):
    config = {"data": {"dataset": "digits"}, "model": model, "train": QUIET, "report": False}
    with pytest.raises(ConfigError) as caught:
        deepworks.train(config, run_dir=tmp_path / "run")
    assert expected in str(caught.value)
    assert not (tmp_path / "run").exists()
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", str(path), "--run-dir", str(tmp_path / "cli-run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def _install_entry_points(root: Path) -> None:
    """A package installed in ``root`` as pip would leave it: its modules and a dist-info folder whose
    entry_points.txt adds ``ep_tiny`` (a factory) and the models ``ep_module_net`` registers."""
    (root / "ep_models.py").write_text(textwrap.dedent('''
        import math
        from torch import nn

        def tiny(input_shape, num_classes, hidden: int = 8):
            """A tiny MLP from an installed package.

            hidden: hidden units
            """
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    '''))
    (root / "ep_registering.py").write_text(textwrap.dedent('''
        from pydantic import BaseModel, ConfigDict, Field
        from torch import nn
        from deepworks.models import MODELS
        from deepworks.models.registry import flat_input

        class Params(BaseModel):
            model_config = ConfigDict(extra="forbid")
            scale: float = Field(1.0, description="a factor on the logits")

        @MODELS.register("ep_module_net", params=Params, description="registered by a module on import")
        @flat_input
        def net(input_shape, num_classes, scale):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    '''))
    info = root / "ep_models-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-models\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[deepworks.models]\nep_tiny = ep_models:tiny\nep_module = ep_registering\n")


def test_an_entry_point_model_is_listed_and_trains_from_a_config(tmp_path, monkeypatch, capsys, registry_kept):
    site = tmp_path / "site"
    site.mkdir()
    _install_entry_points(site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        capsys.readouterr()
        assert main(["models"]) == 0
        listing = capsys.readouterr().out
        assert "ep_tiny (entry point ep_tiny = ep_models:tiny of package ep-models 1.2; reads any): A tiny MLP" in listing
        assert "keys: hidden=8" in listing
        assert "ep_module_net (entry point ep_module = ep_registering of package ep-models 1.2; reads images, " \
               "feature vectors): registered by a module on import" in listing
        assert "cnn (built-in; reads images)" in listing
        assert main(["models", "ep_tiny"]) == 0
        one = capsys.readouterr().out
        assert "hidden" in one and "hidden units" in one
        # a fresh registry view: the name is found by loading the entry point when it is first used
        MODELS._entries.pop("ep_tiny")
        MODELS._loaded_points.clear()
        run = deepworks.train({"data": {"dataset": "digits"}, "model": {"name": "ep_tiny", "hidden": 5},
                               "train": QUIET, "report": False}, run_dir=tmp_path / "run")
        assert run.model[1].out_features == 5 and run.summary["test"]["accuracy"] > 0.3
        source = json.loads((run.dir / "data.json").read_text())["model_source"]
        assert source["origin"] == "entry point ep_tiny = ep_models:tiny of package ep-models 1.2"
        assert source["sha256"] == hashlib.sha256((site / "ep_models.py").read_bytes()).hexdigest()
    finally:
        for module in ("ep_models", "ep_registering"):
            _forget(module)


def test_models_command_describes_one_model_and_refuses_an_unknown_name(capsys):
    assert main(["models", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "mlp (built-in)" in out and "units of each hidden layer" in out and "[256, 128]" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mlp = next(r for r in rows if r["name"] == "mlp")
    assert {p["name"]: p["default"] for p in mlp["params"]}["dropout"] == 0.2
    assert main(["models", "mpl"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mpl'. Did you mean 'mlp'?" in err and "Traceback" not in err
