"""DDP with torchrun: 2 CPU processes on gloo match one process, evaluate each sample once, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples/configs/quickstart.yaml"
COMMON = ["--set", "train.precision=fp32", "--set", "train.progress=log", "--set", "train.early_stopping=null",
          "--set", "model.filters=[16,32]"]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")


def cli(*args, check=0, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepworks", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check is not None:
        assert proc.returncode == check, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_two_processes_match_one_and_count_every_test_sample_once(tmp_path):
    epochs = ["--set", "train.epochs=8"]
    cli("train", CONFIG, *COMMON, *epochs, "--set", "train.batch_size=32", "--run-dir", tmp_path / "one")
    # the same global batch: 2 processes x 16
    out = cli("train", CONFIG, *COMMON, *epochs, "--set", "train.batch_size=16", "--nproc", "2",
              "--run-dir", tmp_path / "two").stdout
    assert out.count("results (best model)") == 1  # only rank 0 reports
    one, two = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert two["processes"] == 2 and one["processes"] == 1
    for split in ("val", "test"):
        assert abs(one[split]["accuracy"] - two[split]["accuracy"]) <= 0.03, (one[split], two[split])
    assert two["test"]["support"] == one["test"]["support"] == 270
    assert two["train"]["support"] == 1257 and two["val"]["support"] == 270
    # evaluating the DDP model in one process gives the very same confusion matrix: no sample was
    # dropped or counted twice by the sharding
    ddp_report = json.loads((tmp_path / "two" / "test_report.json").read_text())
    single = json.loads(cli("evaluate", tmp_path / "two", "--json").stdout)
    assert single["confusion_matrix"] == ddp_report["confusion_matrix"]
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == list(range(1, 9))  # one writer


def test_ddp_run_resumes_after_kill(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "deepworks", "train", str(CONFIG), *COMMON, "--set", "train.epochs=4",
            "--set", "train.batch_size=8", "--nproc", "2", "--run-dir", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # epoch 1 is logged and its checkpoint written (the log line comes first)
        if metrics.exists() and metrics.read_text().count("\n") >= 1 and (run / "checkpoints" / "last.safetensors").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    time.sleep(0.5)
    assert not (run / "summary.json").exists()
    cli("train", "--resume", run, "--nproc", "2")
    s = summary(run)
    assert s["epochs_run"] == 4 and s["test"]["support"] == 270
    epochs = [json.loads(l)["epoch"] for l in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
