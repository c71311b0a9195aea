"""examples/notebooks/quickstart.ipynb runs top to bottom in a Jupyter kernel (nbclient, ipykernel
from this interpreter with the repository's src first on its path; no user-wide Jupyter install is
read): no cell raises, the run and its report show inline with the run's real figures, the progress
bar is one output updated in place, and nothing floods the notebook with terminal control codes."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the dev extra installs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the dev extra installs nbformat, nbclient and ipykernel")
pytest.importorskip("ipykernel", reason="the dev extra installs nbformat, nbclient and ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebooks" / "quickstart.ipynb"
KERNEL = "deepworks-tests"


def _kernel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel spec of this interpreter in a folder of the test's own, the only one Jupyter reads
    here (JUPYTER_PATH comes first; the name is one no user install has), with ``src`` first on the
    kernel's path, and the runtime and IPython folders in the test's folder too."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "deepworks tests", "language": "python", "env": {"PYTHONPATH": path},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))


def _outputs(nb) -> list[tuple[int, dict]]:
    return [(i, out) for i, cell in enumerate(nb.cells) if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_the_quickstart_notebook_runs_and_shows_the_run_inline(tmp_path, monkeypatch):
    _kernel_home(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # stored clean
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a cell that raises fails here (CellExecutionError), naming the cell
    outputs = _outputs(nb)
    htmls = [(i, out["data"]["text/html"]) for i, out in outputs if "text/html" in out.get("data", {})]
    cards = [h for _, h in htmls if 'class="deepworks-inline"' in h]
    run_card = next(h for h in cards if "<h3>Run <code>" in h)
    report_card = next(h for h in cards if "<h3>Report <code>" in h)
    # the run's folder, as the card names it: the temporary folder the notebook made
    run_dir = Path(html.unescape(re.search(r"run directory <code>(.*?)</code>", run_card).group(1)))
    try:
        assert run_dir.parent.parent == Path(tempfile.gettempdir()) and run_dir.name == "digits"
        summary = json.loads((run_dir / "summary.json").read_text())
        accuracy = summary["test"]["accuracy"]
        assert accuracy > 0.8  # 4 epochs of a small CNN: far above the 0.1 of a guess
        # the run's card and the report's key sections carry the run's own test accuracy
        assert f'<td class="num" title="{accuracy!r}">{accuracy:.4f}</td>' in run_card
        test_row = re.search(r"<tr><td>test</td>(.*?)</tr>", report_card).group(1)
        assert f'<td class="num">{accuracy:.4f}</td>' in test_row
        assert 'id="sec-diagnosis"' in report_card and 'id="fig-learning-curves"' in report_card
        # the progress bar: one output, updated in place to the last batch of the last epoch
        bars = [(i, h) for i, h in htmls if 'class="deepworks-progress"' in h]
        assert len(bars) == 1, [h[:80] for _, h in bars]
        done = re.search(r'<progress value="(\d+)" max="(\d+)"', bars[0][1])
        assert done and done.group(1) == done.group(2) and "epoch 4/4" in bars[0][1]
        # what the training printed: a few plain lines (one per epoch and the run's paths), no control codes
        text = "".join("".join(out.get("text", "")) for _, out in outputs if out.get("output_type") == "stream")
        assert "\x1b" not in text and "\r" not in text
        assert text.count("\n") < 40, text
        assert sum(line.startswith("epoch ") for line in text.splitlines()) == 4
        # predictions on an array, and ONNX Runtime giving the same labels
        last = nb.cells[-1].outputs[-1]["data"]["text/plain"]
        assert last == "True"
        assert (run_dir.parent / "digits.onnx").is_file()
        assert not [p for p in tmp_path.iterdir() if p.name not in ("jupyter", "runtime", "ipython")]  # cwd untouched
    finally:
        if run_dir.parent.name.startswith("deepworks-quickstart-"):
            shutil.rmtree(run_dir.parent, ignore_errors=True)
