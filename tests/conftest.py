"""Shared test helpers."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import Phase, settings

# benchmarks/mutation.py runs these tests once per mutant with --hypothesis-profile=mutation: a failing
# example is not shrunk (a killed mutant needs no minimal example; shrinking made kills time out) and no
# example database is written into mutmut's copy of the tree
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)

# The one digits CNN run of the session (report, export and serve tests read it): early
# stopping with an impossible min_delta stops it after epoch 2, so the report shows a stop;
# log_gradients feeds the report's gradient section.
DIGITS_CNN = {
    "name": "report-digits",
    "data": {"dataset": "digits"},
    "model": {"name": "cnn", "filters": [8, 16], "hidden": [32]},
    "train": {
        "epochs": 3, "batch_size": 64, "progress": "none", "precision": "fp32", "log_gradients": 5,
        "optimizer": {"name": "adamw", "lr": 0.01}, "monitor": "val_loss",
        "early_stopping": {"monitor": "val_loss", "patience": 1, "min_delta": 100.0},
    },
}


@pytest.fixture(scope="session")
def digits_cnn_run(tmp_path_factory):
    """A finished digits CNN run (:data:`DIGITS_CNN`, with its report), trained once per session.
    Shared: read it, never write into it; a test that writes (export, report, a resume) takes
    :func:`digits_cnn_copy`."""
    import deepworks

    return deepworks.train(DIGITS_CNN, run_dir=tmp_path_factory.mktemp("digits-cnn") / "run")


@pytest.fixture
def digits_cnn_copy(digits_cnn_run, tmp_path):
    """This test's own copy of :func:`digits_cnn_run`'s directory (a Path), to write into."""
    target = tmp_path / "digits-cnn"
    shutil.copytree(digits_cnn_run.dir, target)
    return target

class CliRun(NamedTuple):
    """A run trained by ``deepworks train`` (the CLI, in this process) and what the command printed."""

    run: Any  # deepworks.load_run of the finished run directory
    printed: str  # the command's standard output


def _train_by_cli(*args: str, run_dir: Path) -> CliRun:
    """``deepworks train *args --run-dir RUN_DIR`` through :func:`deepworks.cli.main`, its
    standard output kept; a session or module fixture can call it (capsys cannot)."""
    import deepworks
    from deepworks.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *map(str, args), "--run-dir", str(run_dir)])
    assert code == 0, out.getvalue() + err.getvalue()
    return CliRun(deepworks.load_run(run_dir), out.getvalue())


@pytest.fixture(scope="session")
def train_by_cli():
    """``train_by_cli(*args, run_dir=...)``: see :func:`_train_by_cli` (for module fixtures)."""
    return _train_by_cli


ROOT = Path(__file__).resolve().parents[1]
PENGUINS = ROOT / "examples" / "data" / "penguins.csv"


@pytest.fixture(scope="session")
def penguin_regression_run(tmp_path_factory) -> CliRun:
    """examples/configs/penguins-regression.yaml (body mass in grams, with its report), trained once
    per session by `deepworks train`, with what the command printed. Shared: read it, never write
    into it."""
    return _train_by_cli(ROOT / "examples" / "configs" / "penguins-regression.yaml", "--set", f"data.path={PENGUINS}",
                        "--set", "train.progress=none", run_dir=tmp_path_factory.mktemp("penguins-mass") / "run")


@pytest.fixture(scope="session")
def penguin_species_run(tmp_path_factory):
    """examples/configs/penguins.yaml as shipped (species from mixed columns, with its report),
    trained once per session (tables, predictor and serve tests read it). Shared: read it, never
    write into it; a test that writes (an export, an ONNX backend) takes :func:`run_copy`."""
    import deepworks

    return deepworks.train(ROOT / "examples" / "configs" / "penguins.yaml", run_dir=tmp_path_factory.mktemp(
        "penguins-species") / "run", data__path=str(PENGUINS), train__progress="none")


from sentiment import SENTIMENT_LSTM, sentiment_csv  # noqa: E402  (shared with test modules)




@pytest.fixture(scope="session")
def sentiment_lstm_run(tmp_path_factory):
    """:data:`SENTIMENT_LSTM` on :func:`sentiment_csv` (with its report), trained once per session.
    Shared: read it, never write into it; a test that writes takes :func:`run_copy`."""
    import deepworks

    folder = tmp_path_factory.mktemp("sentiment")
    config = {**SENTIMENT_LSTM, "data": {**SENTIMENT_LSTM["data"], "path": str(sentiment_csv(folder / "reviews.csv"))}}
    return deepworks.train(config, run_dir=folder / "run")


def _run_copy(run, target: Path):
    """A copy of ``run``'s directory at ``target``, loaded (deepworks.load_run): a run to write into."""
    import deepworks

    shutil.copytree(run.dir, target)
    return deepworks.load_run(target)


@pytest.fixture(scope="session")
def run_copy():
    """``run_copy(run, target)``: see :func:`_run_copy` (for a test or fixture that writes into a shared run)."""
    return _run_copy


# A `deepworks.train` run in its own process that stops itself at a known point and waits to be
# killed: after epoch 1, one step past the first in-epoch checkpoint of epoch 2 (the Trainer
# calls on_batch_end before it writes a step's checkpoint, so at step s + 1 the checkpoint of
# step s is on disk). It says so by writing MARKER. Through the public Callback hook, not timing.
_PAUSED_RUN = r"""
import pathlib, signal, sys
import deepworks

config, run_dir, marker, *overrides = sys.argv[1:]


class PauseMidEpoch2(deepworks.Callback):
    def on_batch_end(self, trainer, step):
        every = trainer.config.checkpoint_every_steps
        if trainer.epoch >= 1 and trainer.step_in_epoch >= 2 and (step - 1) % every == 0:
            pathlib.Path(marker).write_text(str(step))
            while True:
                signal.pause()  # until killed


deepworks.train(config, run_dir=run_dir, overrides=overrides, callbacks=[PauseMidEpoch2()])
"""


def _start_paused_mid_epoch(config, run_dir: Path, *overrides: str, timeout: float = 240, **popen) -> subprocess.Popen:
    """Start ``deepworks.train(config, run_dir=run_dir, overrides=overrides)`` in a process and
    return it once it is paused mid-epoch 2 with an in-epoch checkpoint behind it (and one step
    done past it): killed now, it has something to resume from and something to redo. Needs
    ``train.checkpoint_every_steps`` and at least three steps per epoch."""
    run_dir = Path(run_dir)
    marker, log = (run_dir.parent / f".{run_dir.name}.{what}" for what in ("paused", "log"))
    with log.open("w") as out:  # a file, not a pipe nobody reads while the run goes on
        proc = subprocess.Popen([sys.executable, "-c", _PAUSED_RUN, str(config), str(run_dir), str(marker), *overrides],
                                stdout=out, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it paused mid-epoch 2:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach mid-epoch 2 within {timeout} s")
        time.sleep(0.01)  # polling for the marker
    return proc


@pytest.fixture
def paused_mid_epoch():
    """``paused_mid_epoch(config, run_dir, *overrides, **popen)``: see :func:`_start_paused_mid_epoch`."""
    return _start_paused_mid_epoch


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The random order's seed at the end of every run, -q included (pytest-randomly prints it only
    in the header, which -q hides): a failure that depends on the order can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"random test order: --randomly-seed={seed} (replay in one process: make test "
                                    f"PYTEST_ARGS='--randomly-seed={seed}' PYTEST_WORKERS=0)")


def pytest_configure(config):
    """Under pytest-xdist each worker process gets one torch thread (and so do the programs it starts,
    through OMP_NUM_THREADS): two workers on a 2-core machine then share it without oversubscription."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
