"""The CLI's contract with the shell: refusals exit 2 with one line naming the option and writing
nothing, internal errors exit 1 with their traceback, the process's warning hook is the caller's
again after a command, and lr-find runs from the command line.

In-process through ``deepworks.cli.main`` (fast); one subprocess for the exit status of a crash."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

import deepworks
from cli_in_process import refused, run
from deepworks.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "configs" / "quickstart.yaml"


@pytest.fixture
def a_run_dir(tmp_path):
    """Something --resume could point at; the refusals must come before it is read."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.yaml").write_text(QUICKSTART.read_text())
    return path


def test_cv_with_resume_is_refused(tmp_path, capsys, a_run_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    refused(["train", "--resume", a_run_dir, "--cv", "3"], capsys, "--cv", "cannot be resumed")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no runs/ folder


def test_resume_with_a_config_or_set_is_refused(tmp_path, capsys, a_run_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    refused(["train", QUICKSTART, "--resume", a_run_dir], capsys, "--resume RUN_DIR takes no CONFIG")
    refused(["train", "--resume", a_run_dir, "--set", "train.epochs=1"], capsys, "takes no CONFIG or --set")
    assert sorted(tmp_path.rglob("*")) == before


def test_train_without_a_config_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["train"], capsys, "give a CONFIG.yaml", "--resume RUN_DIR")
    refused(["train", "--set", "train.epochs=1"], capsys, "give a CONFIG.yaml")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("split", ["testing", "validation", "TEST", ""])
def test_evaluate_with_a_bad_split_is_refused(tmp_path, capsys, split):
    # refused on the value alone, before the run directory (here: none) is looked at
    err = refused(["evaluate", tmp_path / "no-run", "--split", split], capsys, "--split", "train, val or test")
    assert repr(split) in err and "no-run" not in err


def test_internal_errors_exit_1_with_their_traceback(tmp_path):
    """A bug (not a DeepworksError) is not dressed up as a user error: exit 1, traceback shown."""
    script = (
        "import sys, deepworks\n"
        "from deepworks.cli import main\n"
        "def broken(*a, **k):\n"
        "    raise RuntimeError('a bug in evaluate')\n"
        "deepworks.evaluate = broken\n"
        f"sys.exit(main(['evaluate', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError: a bug in evaluate" in proc.stderr


def test_the_warning_hook_is_the_callers_again_after_every_command(tmp_path, capsys, monkeypatch):
    def mine(*args, **kwargs):
        pass

    monkeypatch.setattr(warnings, "showwarning", mine)
    monkeypatch.chdir(tmp_path)
    assert main(["datasets", "--json"]) == 0  # a command that succeeds
    assert warnings.showwarning is mine
    assert main(["train"]) == 2  # a refusal
    assert warnings.showwarning is mine

    def broken(*args, **kwargs):
        warnings.warn("about your data")  # printed the CLI's way while the command runs
        raise RuntimeError("a bug")

    monkeypatch.setattr(deepworks, "evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # an internal error
        main(["evaluate", str(tmp_path)])
    assert warnings.showwarning is mine
    assert "warning: about your data" in capsys.readouterr().err


def test_lr_find_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "data": {"dataset": "digits"}, "model": {"name": "softmax"},
                                      "train": {"batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1}}}))
    code, out, err = run(["lr-find", config, "--steps", "30", "--start-lr", "1e-5", "--end-lr", "10"], capsys)
    assert code == 0, out + err
    # default output: runs/lr-find/<name>.png under the working directory, the JSON beside it, no run directory
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["c.yaml", "runs/lr-find/tiny.json", "runs/lr-find/tiny.png"]
    assert (tmp_path / "runs/lr-find/tiny.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    result = json.loads((tmp_path / "runs/lr-find/tiny.json").read_text())
    lrs = result["lrs"]
    assert lrs[0] == pytest.approx(1e-5) and result["optimizer"] == "sgd"
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]  # an exponential sweep from --start-lr towards --end-lr
    assert ratios == pytest.approx([(10 / 1e-5) ** (1 / 29)] * len(ratios), rel=1e-6)
    assert len(lrs) == len(result["losses"]) == len(result["smoothed"]) <= 30
    assert all(math.isfinite(v) for v in result["smoothed"])
    assert lrs[0] <= result["suggestion"] <= lrs[-1]
    flat = " ".join(out.split())
    assert f"suggested learning rate: {result['suggestion']:.3g}" in flat
    assert f"train.optimizer.lr={result['suggestion']:.3g}" in flat

    refused(["lr-find", tmp_path / "nope.yaml"], capsys, "nope.yaml")


def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(tmp_path):
    """SIGINT (Ctrl-C) once an epoch is logged: exit 130 (128 + SIGINT, what shells expect), one
    line naming `deepworks train --resume`, no traceback; the command it names finishes the run."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [8]},
                                      "train": {"epochs": 15, "batch_size": 128, "progress": "log"},
                                      "report": False}))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "deepworks", "train", str(config), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # epoch 1 logged; 14 to go
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before epoch 1"
        time.sleep(0.01)  # polling
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err and f"deepworks train --resume {run_dir}" in err, err
    assert not (run_dir / "summary.json").exists()
    done = metrics.read_text().count("\n")
    assert 1 <= done < 15
    resumed = subprocess.run([sys.executable, "-m", "deepworks", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 15
