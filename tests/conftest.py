"""Shared test helpers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import Phase, settings

# benchmarks/mutation.py runs these tests once per mutant with --hypothesis-profile=mutation: a failing
# example is not shrunk (a killed mutant needs no minimal example; shrinking made kills time out) and no
# example database is written into mutmut's copy of the tree
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)


def _wait_mid_epoch(proc, run_dir: Path, timeout: float = 240, poll: float = 0.002) -> None:
    """Wait until a `deepworks train` process has logged epoch 1 and then written a fresh
    in-epoch checkpoint: killed now, it is mid-epoch 2 with something to resume from."""
    metrics, ckpt = Path(run_dir) / "metrics.jsonl", Path(run_dir) / "checkpoints" / "last.safetensors"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            stamp = ckpt.stat().st_mtime_ns
            while proc.poll() is None and ckpt.stat().st_mtime_ns == stamp and time.time() < deadline:
                time.sleep(poll)
            break
        time.sleep(poll)
    assert proc.poll() is None, "the run finished before it could be killed"


@pytest.fixture
def wait_mid_epoch():
    """``wait_mid_epoch(proc, run_dir)``: see :func:`_wait_mid_epoch`."""
    return _wait_mid_epoch
