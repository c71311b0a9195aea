"""DDP with torchrun: 2 CPU processes on gloo match one process, evaluate each sample once, and resume exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file

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


def descendants(pid):
    """Every process below ``pid``. torchrun starts each worker in a session of its own, so
    killing the launcher's process group leaves the workers running."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after the command name
        except OSError:  # the process has gone
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def checkpoint_state(path):
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the torchrun workers in /proc")
def test_ddp_run_resumes_after_kill(tmp_path):
    # 25 steps an epoch (40 training images of each digit, 2 processes x 8; the test split stays
    # whole); a checkpoint every 10 steps and at each epoch's end; the quickstart's dropout and
    # batch norm in a smaller network, and no report (it is not compared)
    common = [str(CONFIG), *COMMON, "--set", "train.epochs=3", "--set", "train.batch_size=8",
              "--set", "train.checkpoint_every_steps=10", "--set", "model.filters=[8,16]", "--set", "model.hidden=[32]",
              "--set", "data.subset.train_per_class=40", "--set", "data.subset.val_per_class=10", "--set", "report=false",
              "--nproc", "2"]
    cli("train", *common, "--run-dir", tmp_path / "full")

    run = tmp_path / "run"
    args = [sys.executable, "-m", "deepworks", "train", *common, "--run-dir", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 240
    # kill once a checkpoint inside epoch 2 is written: the workers are mid-epoch, with running
    # metric sums on both ranks
    while time.time() < deadline and proc.poll() is None:
        state = checkpoint_state(ckpt)
        if state is not None and state["epoch"] >= 1 and state["step_in_epoch"] > 0:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    for pid in [proc.pid, *descendants(proc.pid)]:  # the CLI, torchrun and both workers, at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not (run / "summary.json").exists()
    state = checkpoint_state(ckpt)
    assert state["epoch"] < 3 and state["step_in_epoch"] > 0, state  # what resume starts from
    cli("train", "--resume", run, "--nproc", "2")
    s = summary(run)
    assert s["epochs_run"] == 3 and s["test"]["support"] == 270
    # both processes resume their own random streams, data shards and metric sums: the weights and
    # every logged figure are those of the run that was never killed, bit for bit
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        full, resumed = load_file(tmp_path / "full" / name), load_file(run / name)
        assert full.keys() == resumed.keys(), name
        differ = [k for k in full if not torch.equal(full[k], resumed[k])]
        assert not differ, (name, differ)
    assert summary(tmp_path / "full")["test"] == s["test"]

    def logged(path):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]

    assert [r["epoch"] for r in logged(run / "metrics.jsonl")] == [1, 2, 3]
    assert logged(run / "metrics.jsonl") == logged(tmp_path / "full" / "metrics.jsonl")
