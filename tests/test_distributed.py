"""DDP with torchrun: 2 CPU processes on gloo match one process, evaluate each sample once, and resume exactly;
two nodes (two launchers on 127.0.0.1) match --nproc 2, and a node that stops answering ends the other."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file

from cli_in_process import run as in_process

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


# the same global batch as one process with batch_size 32: 2 processes x 16
TWO = [*COMMON, "--set", "train.epochs=8", "--set", "train.batch_size=16"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A run of 2 processes (--nproc 2), and its console output."""
    run = tmp_path_factory.mktemp("nproc") / "two"
    return run, cli("train", CONFIG, *TWO, "--nproc", "2", "--run-dir", run).stdout


def test_two_processes_match_one_and_count_every_test_sample_once(tmp_path, two_processes, capsys):
    # the one-process run and the evaluation need no process of their own: the CLI in this process
    code, out, err = in_process(["train", CONFIG, *COMMON, "--set", "train.epochs=8", "--set", "train.batch_size=32",
                                  "--run-dir", tmp_path / "one"], capsys)
    assert code == 0, out + err
    two_dir, out = two_processes
    assert out.count("results (best model)") == 1  # only rank 0 reports
    one, two = summary(tmp_path / "one"), summary(two_dir)
    assert two["processes"] == 2 and one["processes"] == 1
    for split in ("val", "test"):
        assert abs(one[split]["accuracy"] - two[split]["accuracy"]) <= 0.03, (one[split], two[split])
    assert two["test"]["support"] == one["test"]["support"] == 270
    assert two["train"]["support"] == 1257 and two["val"]["support"] == 270
    # evaluating the DDP model in one process gives the very same confusion matrix: no sample was
    # dropped or counted twice by the sharding
    ddp_report = json.loads((two_dir / "test_report.json").read_text())
    code, printed, err = in_process(["evaluate", two_dir, "--json"], capsys)
    assert code == 0, err
    single = json.loads(printed)
    assert single["confusion_matrix"] == ddp_report["confusion_matrix"]
    lines = (two_dir / "metrics.jsonl").read_text().splitlines()
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
def _running(pid: int) -> bool:
    """The process exists and is not a zombie (/proc/PID/stat's state)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:  # the CLI, torchrun and both workers, at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30  # every one of them gone (or a zombie) before the files are read
    while time.time() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.01)  # polling
    assert not any(_running(pid) for pid in pids), "a killed process is still running"
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(tmp_path, *args, nodes=2):
    """``deepworks train ... --nnodes 2`` started twice on this machine, one process per node,
    each in a folder of its own (``node0``, ``node1``), as on machines that share no disk."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # two processes on the same cores
    master = ["--nnodes", str(nodes), "--master-addr", f"127.0.0.1:{free_port()}", "--nproc", "1"]
    procs = []
    for rank in range(nodes):
        folder = tmp_path / f"node{rank}"
        folder.mkdir()
        log = open(folder / "console.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "deepworks", "train", *map(str, args), *master,
                                       "--node-rank", str(rank)], cwd=folder, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return procs


def end_all(procs):
    for proc in procs:
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the torchrun workers in /proc")
def test_two_nodes_match_two_processes_and_only_node_0_writes(tmp_path, two_processes, capsys):
    # a relative --run-dir: each node would find it in its own folder, so node 1 sees no file of the run
    procs = launch_nodes(tmp_path, CONFIG, *TWO, "--run-dir", "run")
    try:
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        end_all(procs)
    logs = [(tmp_path / f"node{rank}" / "console.log").read_text() for rank in range(2)]
    assert codes == [0, 0], logs
    run, nproc_run = tmp_path / "node0" / "run", two_processes[0]
    assert sorted(p.name for p in (tmp_path / "node1").iterdir()) == ["console.log"]  # node 1 wrote nothing
    assert logs[0].count("results (best model)") == 1 and "results" not in logs[1]
    assert summary(run)["processes"] == 2
    # the same 2 processes, rank 0 and rank 1, now on two nodes: the very same weights, and the same
    # test figures (node 1 evaluates its shard with rank 0's kept model, which it never read from disk)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        nodes, nproc = load_file(run / name), load_file(nproc_run / name)
        assert nodes.keys() == nproc.keys(), name
        assert not [k for k in nodes if not torch.equal(nodes[k], nproc[k])], name
    report = json.loads((run / "test_report.json").read_text())
    assert report["confusion_matrix"] == json.loads((nproc_run / "test_report.json").read_text())["confusion_matrix"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == list(range(1, 9))  # one writer

    # resuming needs as many processes as trained the run: one process is refused, in one line
    copy = tmp_path / "unfinished"
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    from deepworks.cli import main

    capsys.readouterr()
    assert main(["train", "--resume", str(copy)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "trained with 2 process(es)" in message and "--nnodes" in message, message
    assert len(message.splitlines()) == 1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the torchrun workers in /proc")
def test_a_node_that_stops_answering_ends_the_other_with_a_clear_error(tmp_path):
    procs = launch_nodes(tmp_path, CONFIG, *COMMON, "--set", "train.epochs=200", "--set", "train.batch_size=16",
                         "--run-dir", "run", "--dist-timeout", "10")
    log = tmp_path / "node0" / "console.log"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "epoch 1/200" not in log.read_text() and procs[0].poll() is None:
            time.sleep(0.1)
        assert "epoch 1/200" in log.read_text(), log.read_text()
        # node 1 freezes, launcher and worker alike, as a machine that crashed or lost its network:
        # nothing closes its connections, so node 0 learns of it only through the collective timeout
        for pid in [procs[1].pid, *descendants(procs[1].pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        code = procs[0].wait(timeout=120)  # rather than wait for ever
    finally:
        end_all(procs)
    text = log.read_text()
    assert code != 0, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "rank 0 of 2 (node 0 of 2): lost contact" in errors[0] and "10 s collective timeout" in errors[0], errors
    assert "deepworks train --resume run --nnodes 2 --nproc 1" in errors[0], errors
    assert "Traceback" not in text.split(errors[0])[0]  # deepworks' own message, not the worker's traceback


def test_bad_node_options_are_refused_in_one_line(capsys):
    from deepworks.cli import main
    from deepworks.runtime import parse_master_addr

    cases = {
        ("--nnodes", "2", "--node-rank", "2", "--master-addr", "h"): "--node-rank: expected 0 to 1",
        ("--nnodes", "2", "--node-rank", "-1", "--master-addr", "h"): "--node-rank: expected 0 to 1",
        ("--nnodes", "0"): "--nnodes: expected the number of machines, 1 or more, got 0",
        ("--nnodes", "2", "--node-rank", "1"): "--master-addr: needed with --nnodes 2",
        ("--nnodes", "2", "--master-addr", "node0:http"): "--master-addr: expected HOST or HOST:PORT",
        ("--nnodes", "2", "--master-addr", "node0:70000"): "--master-addr: expected HOST or HOST:PORT",
        ("--nnodes", "2", "--master-addr", ":29500"): "--master-addr: expected HOST or HOST:PORT",
        ("--nnodes", "2", "--master-addr", "[::1"): "--master-addr: expected HOST or HOST:PORT",
        ("--dist-timeout", "0"): "--dist-timeout: expected a positive number of seconds",
        ("--dist-timeout", "soon"): "--dist-timeout: expected a positive number of seconds",
    }
    for args, expected in cases.items():
        assert main(["train", str(CONFIG), *args]) == 2, args
        message = capsys.readouterr().err.strip()
        assert message.startswith(f"error: {expected}") and len(message.splitlines()) == 1, (args, message)
    assert parse_master_addr("10.0.0.1") == ("10.0.0.1", 29500)
    assert parse_master_addr("node0.cluster:1234") == ("node0.cluster", 1234)
    assert parse_master_addr("[fe80::1]:29501") == ("fe80::1", 29501)
    assert parse_master_addr("fe80::1") == ("fe80::1", 29500)
