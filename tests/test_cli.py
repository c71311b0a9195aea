"""The command line end to end on digits: train, evaluate, predict, datasets, resume, and errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from cli_in_process import refused, run as in_process

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train.epochs=4", "--set", "model.filters=[16,32]", "--set", "train.progress=log"]


def cli(*args, cwd=None, timeout=300, check=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepworks", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits"
    proc = cli("train", ROOT / "examples/configs/quickstart.yaml", *QUICK, "--run-dir", run, check=0)
    assert "test" in proc.stdout and str(run) in proc.stdout
    return run


def test_train_writes_the_run_directory(digits_run):
    files = {p.relative_to(digits_run).as_posix() for p in digits_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "data.json", "metrics.jsonl", "model.safetensors", "summary.json",
            "checkpoints/last.safetensors", "test_report.json"} <= files
    summary = json.loads((digits_run / "summary.json").read_text())
    for split in ("train", "val", "test"):
        assert {"accuracy", "macro_f1", "loss"} <= set(summary[split])
    assert summary["test"]["accuracy"] > 0.85  # 4 quick epochs; the full demo reaches >= 0.97
    assert summary["epochs_run"] == 4 and summary["wall_seconds"] > 0
    info = json.loads((digits_run / "data.json").read_text())
    assert info["sizes"]["train"] + info["sizes"]["val"] + info["sizes"]["test"] == 1797
    resolved = (digits_run / "config.yaml").read_text()
    assert "epochs: 4" in resolved and "head_dropout" in resolved  # overrides and defaults resolved


def test_evaluate_json_matches_sklearn(digits_run):
    from sklearn.metrics import f1_score

    proc = cli("evaluate", digits_run, "--split", "test", "--json", check=0)
    report = json.loads(proc.stdout)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == report["support"] and cm.shape == (10, 10)
    # rebuild (y_true, y_pred) from the confusion matrix and score it with scikit-learn
    y_true = np.repeat(np.arange(10), cm.sum(1))
    y_pred = np.concatenate([np.repeat(np.arange(10), row) for row in cm])
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    summary = json.loads((digits_run / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    text = cli("evaluate", digits_run, "--split", "val", check=0).stdout
    assert "accuracy" in text.lower()


def test_predict_png_files(digits_run, tmp_path):
    digits = load_digits()
    files, labels = [], []
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11):
        img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L")
        if i % 2:
            img = img.convert("RGB")  # colour input is converted to what the model expects
        f = tmp_path / f"digit{i}.png"
        img.save(f)
        files.append(f)
        labels.append(str(digits.target[i]))
    proc = cli("predict", digits_run, *files, "--top-k", "3", "--json", check=0)
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(f) for f in files]
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["class"] == r["prediction"] for r in results)
    assert all(abs(sum(t["probability"] for t in r["top_k"])) <= 1.0 + 1e-5 for r in results)
    correct = sum(r["prediction"] == label for r, label in zip(results, labels))
    assert correct >= 9
    table = cli("predict", digits_run, files[0].name, cwd=tmp_path, check=0).stdout  # a path short enough not to fold
    assert "digit0.png" in table


def test_datasets_lists_builtins():
    proc = cli("datasets", "--json", check=0)
    names = {d["name"] for d in json.loads(proc.stdout)}
    assert {"digits", "fashion-mnist"} <= names


def test_user_errors_exit_2_without_traceback(tmp_path, digits_run, capsys):
    # as a process once (the exit status a shell sees), then in this process (tests/cli_in_process.py)
    assert_user_error(cli("train", tmp_path / "nope.yaml"), "nope.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: digitz}\nmodel: {name: cnn}\n")
    refused(["train", bad, "--run-dir", tmp_path / "r1"], capsys, "digitz", "'digits'")
    bad.write_text("data: {dataset: digits}\nmodel: {name: cnn, filters: [8, 8, 8, 8]}\n")
    refused(["train", bad, "--run-dir", tmp_path / "r2"], capsys, "block 3")
    good = ROOT / "examples/configs/quickstart.yaml"
    refused(["train", good, "--set", "train.lr=0.1"], capsys, "train.lr")
    bad.write_text(f"data: {{path: {tmp_path / 'missing'}}}\n")
    refused(["train", bad, "--run-dir", tmp_path / "r3"], capsys, "missing")
    refused(["evaluate", tmp_path / "no-run"], capsys, "no-run")
    refused(["predict", digits_run, tmp_path / "ghost.png"], capsys, "ghost.png")
    refused(["train", good, "--run-dir", digits_run], capsys, "--resume")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["checkpoints/last.safetensors", "model.safetensors"])
@pytest.mark.parametrize("kind", ["pickle", "torch.save", "truncated"])
def test_pickled_or_tampered_files_are_refused(digits_run, tmp_path, target, kind):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "summary.json").unlink()  # make the run resumable again
    marker = tmp_path / "payload-ran"
    path = run / target
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": Payload(marker)}))
    elif kind == "torch.save":
        torch.save({"weights": Payload(marker)}, path)
    else:
        path.write_bytes(path.read_bytes()[:200])
    proc = cli("train", "--resume", run) if "checkpoints" in target else cli("evaluate", run)
    assert_user_error(proc, target.split("/")[-1], "refused")
    assert not marker.exists(), "the payload in the file ran"


def _weights(path):
    return load_file(path)


def test_resume_after_kill_mid_epoch_is_bitwise_equal(tmp_path, paused_mid_epoch):
    config = ROOT / "examples/configs/quickstart.yaml"
    # 30 steps an epoch (24 training images of each digit, batches of 8): the quickstart's dropout,
    # batch norm and shuffling, on fewer steps; the test split stays whole (no report: it is not compared)
    sets = ["train.epochs=3", "train.batch_size=8", "model.filters=[8,16]", "model.hidden=[32]", "train.progress=log",
            "train.checkpoint_every_steps=10", "data.subset.train_per_class=24", "data.subset.val_per_class=10",
            "report=false"]
    cli("train", config, *(a for s in sets for a in ("--set", s)), "--run-dir", tmp_path / "full", check=0)

    killed = tmp_path / "killed"
    # killed mid-epoch 2, one step past an in-epoch checkpoint (the process waits there to be killed)
    proc = paused_mid_epoch(config, killed, *sets)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    cli("train", "--resume", killed, check=0)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = _weights(tmp_path / "full" / name), _weights(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa = json.loads((tmp_path / "full" / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sa["test"] == sb["test"] and sa["epochs_run"] == sb["epochs_run"] == 3


def test_usage_errors_exit_2_with_the_usage_line(digits_run, capsys):
    # in this process (tests/cli_in_process.py); test_user_errors_exit_2_without_traceback runs one as a process
    for args, needle in [(["predict", digits_run, "x.png", "--top-k", "0"], "--top-k"),
                         (["train", "--bogus"], "No such option"), (["nosuch"], "No such command")]:
        code, out, err = in_process(args, capsys)
        assert code == 2 and "Traceback" not in err, out + err
        assert err.startswith("Usage: deepworks") and needle in err, err
    code, out, err = in_process(["--help"], capsys)
    assert code == 0 and "Usage: deepworks" in out, out + err
