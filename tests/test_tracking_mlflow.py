"""train.track: mlflow against a real tracking server (`mlflow server` on SQLite, started here), read
back through MlflowClient: a run killed and resumed is one MLflow run with every epoch once and the
values of metrics.jsonl, its params are the resolved config (flattened by pandas), its files are
artifacts; a study's trials are child runs of the study's run; a server that cannot be reached is
one warning and a finished run, and the resumed run sends what the server missed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from sklearn.datasets import load_digits

import deepworks
from deepworks import Trainer
from deepworks.errors import ConfigError

pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

TINY = {
    "name": "tracked",
    "data": {"dataset": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 3, "batch_size": 128, "progress": "none", "precision": "fp32",
              "optimizer": {"name": "adamw", "lr": 0.01}, "track": "mlflow"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(uri: str, server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until the server at ``uri`` answers /health (a failure with its log if it exits or times out)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer within {timeout} s:\n{log.read_text()}")
        time.sleep(0.1)  # polling /health


@pytest.fixture(scope="module", autouse=True)  # started with the module's first test, whichever it is
def server_starting(tmp_path_factory):
    """`mlflow server` with a SQLite backend on a free port of 127.0.0.1, for this module, as soon as it
    is started (it takes seconds to answer): ``(uri, ready)``, ``ready()`` waiting until it answers."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri, log = f"http://127.0.0.1:{port}", folder / "server.log"
    # no job runner: it starts eight worker processes that tracking does not use
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True,
        )
    try:
        yield uri, lambda: _wait_for(uri, server, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn process it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def mlflow_server(server_starting):
    """The URI of the module's tracking server, once it answers."""
    uri, ready = server_starting
    ready()
    return uri


# deepworks.train in its own process, stopped after epoch 2 reached the MLflow tracker but before its
# checkpoint was written (the tracker comes before the pausing callback); it waits to be killed. It
# starts while the server is still starting, and waits for it before training.
_STOPPED_RUN = r"""
import pathlib, signal, sys, time, urllib.request
import deepworks
from deepworks.config import load_config
from deepworks.training import MlflowTracker

config, run_dir, marker, uri = sys.argv[1:]
deadline = time.monotonic() + 240
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(uri + "/health", timeout=5).close()
        break
    except OSError:
        time.sleep(0.1)  # polling /health


class PauseAtEpoch2(deepworks.Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 2:
            pathlib.Path(marker).write_text(str(epoch))
            while True:
                signal.pause()  # until killed


tracker = MlflowTracker.from_config(load_config(config).mlflow)
deepworks.train(config, run_dir=run_dir, callbacks=[tracker, PauseAtEpoch2()])
"""


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _numbers(line: dict) -> dict:
    return {k: v for k, v in line.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _config_params(run_dir: Path) -> dict[str, str]:
    """The run's config.yaml flattened by pandas (dotted keys), each value as str() writes it."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {k: str(v) for k, v in pd.json_normalize(config, sep=".").iloc[0].items()}


def _assert_every_epoch_once(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """Each number of each metrics.jsonl line is in MLflow once, at step = epoch, with its value."""
    lines = _lines(run_dir)
    for key in _numbers(lines[0]):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(line["epoch"], float(line[key])) for line in lines], key


@pytest.fixture(scope="module")
def resumed_run(server_starting, tmp_path_factory):
    """:data:`TINY` logging to the server, killed after epoch 2 reached its tracker (before the epoch's
    checkpoint), then resumed to the end in this process; the run directory."""
    uri, ready = server_starting
    folder = tmp_path_factory.mktemp("tracked")
    config = folder / "tracked.yaml"
    config.write_text(yaml.safe_dump({**TINY, "mlflow": {"tracking_uri": uri, "experiment": "resumed"}}))
    run_dir, marker = folder / "run", folder / "paused"
    with (folder / "log").open("w") as log:  # started while the server starts: both take seconds
        proc = subprocess.Popen([sys.executable, "-c", _STOPPED_RUN, str(config), str(run_dir), str(marker), uri],
                                stdout=log, stderr=subprocess.STDOUT)
    ready()
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before epoch 2:\n{(folder / 'log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach the end of epoch 2 within 240 s")
        time.sleep(0.01)  # polling for the marker
    proc.kill()
    proc.wait()
    assert len(_lines(run_dir)) == 1  # epoch 2's line and checkpoint were never written
    killed_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(killed_id, "train_loss")] == [1]
    deepworks.resume(run_dir)
    return run_dir


def test_a_killed_and_resumed_run_is_one_mlflow_run_with_every_epoch_once(resumed_run, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("resumed")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed run went on in the killed run's MLflow run
    run = runs[0]
    assert run.info.run_id == json.loads((resumed_run / "mlflow.json").read_text())["run_id"]
    assert run.info.status == "FINISHED" and run.info.run_name == resumed_run.name
    assert len(_lines(resumed_run)) == 3
    # epoch 2 was redone by the resumed run: its values (wall seconds too) are the ones in metrics.jsonl
    _assert_every_epoch_once(client, run.info.run_id, resumed_run)

    assert run.data.params == _config_params(resumed_run)
    assert run.data.params["train.optimizer.lr"] == "0.01" and run.data.params["mlflow.experiment"] == "resumed"
    data = json.loads((resumed_run / "data.json").read_text())
    tags = run.data.tags
    assert (tags["task"], tags["model"], tags["data_fingerprint"], tags["deepworks_version"]) == (
        "classification", "mlp", data["split_fingerprint"], deepworks.__version__)

    summary = json.loads((resumed_run / "summary.json").read_text())
    assert run.data.metrics["test_accuracy"] == summary["test"]["accuracy"]
    assert run.data.metrics["final_val_loss"] == summary["val"]["loss"]
    stored = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "model.safetensors", "config.yaml"} <= stored
    got = Path(client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path)))
    assert got.read_bytes() == (resumed_run / "model.safetensors").read_bytes()


def test_a_study_is_a_parent_run_and_its_trials_child_runs(mlflow_server, tmp_path):
    pytest.importorskip("optuna")
    from deepworks.tune import tune

    config = {**TINY, "train": {**TINY["train"], "epochs": 2}, "report": False,
              "mlflow": {"tracking_uri": mlflow_server, "experiment": "study"},
              "tune": {"metric": "val_accuracy", "space": {"train.optimizer.lr": {"choice": [0.003, 0.03, 0.1]}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = tune(path, trials=3, sampler="grid", pruner="none", study_dir=tmp_path / "study")

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 4
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial-0000", "trial-0001", "trial-0002"]
    for child in children:
        run_dir = tmp_path / "study" / child.info.run_name
        assert child.info.status == "FINISHED"
        assert child.data.params == _config_params(run_dir)
        _assert_every_epoch_once(client, child.info.run_id, run_dir)
        assert client.list_artifacts(child.info.run_id) == []  # params and metrics only

    best = json.loads((tmp_path / "study" / "study.json").read_text())["best"]
    assert parent.data.tags["best_trial"] == str(best["trial"]) == str(result["best"]["trial"])
    assert parent.data.metrics["best_val_accuracy"] == best["values"]["val_accuracy"]
    best_dir = tmp_path / "study" / f"trial-{best['trial']:04d}"
    test = json.loads((best_dir / "summary.json").read_text())["test"]
    assert parent.data.metrics["test_accuracy"] == test["accuracy"]
    stored = {a.path for a in client.list_artifacts(parent.info.run_id, "best_trial")}
    assert {"best_trial/model.safetensors", "best_trial/summary.json", "best_trial/config.yaml"} <= stored
    assert {"study.html", "trials.csv", "best.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_an_unreachable_server_is_one_warning_and_the_run_finishes(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    config = {**TINY, "train": {**TINY["train"], "epochs": 2}, "report": False, "mlflow": {"tracking_uri": closed}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = deepworks.train(config, run_dir=tmp_path / "run")
    said = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(said) == 1, said
    assert closed in said[0] and "training goes on" in said[0] and "mlflow.tracking_uri" in said[0]
    assert run.summary["epochs_run"] == 2 and "test" in run.summary
    assert len(_lines(run.dir)) == 2 and (run.dir / "model.safetensors").exists()
    assert not (run.dir / "mlflow.json").exists()


def _digits() -> tuple:
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    return (x[:600], y[:600]), (x[600:800], y[600:800])


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def test_the_resumed_run_sends_the_epochs_an_unreachable_server_missed(mlflow_server, tmp_path, monkeypatch):
    # a Trainer on its own, told where by MLflow's environment variables
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    train, val = _digits()
    settings = {"progress": "none", "batch_size": 100, "precision": "fp32", "track": "mlflow"}
    with pytest.warns(UserWarning, match="MLflow"):
        Trainer(_mlp(), {**settings, "epochs": 2}, run_dir=tmp_path).fit(train, val)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the server is back
    Trainer(_mlp(), {**settings, "epochs": 3}, run_dir=tmp_path).fit(train, val, resume=True)

    client = MlflowClient(mlflow_server)
    run = client.get_run(json.loads((tmp_path / "mlflow.json").read_text())["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "from-env"
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "3"
    _assert_every_epoch_once(client, run.info.run_id, tmp_path)  # epochs 1-2 from the run directory, then 3
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"model.safetensors", "summary.json"}


def test_without_the_mlflow_package_the_run_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as e:
        deepworks.train(TINY, run_dir=tmp_path / "run")
    assert "train.track: mlflow" in str(e.value) and "pip install 'deepworks[mlflow]'" in str(e.value)
    assert not (tmp_path / "run").exists()
