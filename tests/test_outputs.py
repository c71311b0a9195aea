"""Everything a command writes by default goes under runs/ (by kind: studies, labs, compare,
generated, lr-find), the one folder .gitignore names: run from a clone's root, the commands leave
`git status` clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

import deepworks
from cli_in_process import run

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "softmax"},
    "train": {"epochs": 1, "batch_size": 128, "progress": "none", "optimizer": {"name": "sgd", "lr": 0.1}},
    "report": False,
    "tune": {"metric": "val_accuracy", "sampler": "random", "pruner": "none",
             "space": {"train.optimizer.lr": {"log_uniform": [0.01, 0.5]}}},
}


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=120).stdout


def test_default_outputs_stay_under_runs_in_a_clone(tmp_path, monkeypatch, capsys):
    if not (ROOT / ".git").exists():
        pytest.skip("the tests run from a git checkout only here")
    clone = tmp_path / "clone"
    git("clone", "-q", "--local", ROOT, clone, cwd=tmp_path)
    config = tmp_path / "tiny.yaml"  # outside the clone: a file written into it would itself show
    config.write_text(yaml.safe_dump(TINY))
    gan = deepworks.train({"name": "gan", "data": {"dataset": "digits"},
                           "model": {"name": "dcgan", "latent": 8, "g_width": 8, "d_width": 8},
                           "train": {"epochs": 1, "batch_size": 128, "progress": "none"}, "gan": {"quality": False},
                           "report": False}, run_dir=tmp_path / "gan")

    monkeypatch.chdir(clone)
    commands = [
        ["tune", config, "--trials", "2"],
        ["lab", "backprop"],
        ["compare", "runs/studies/tiny/trial-0000", "runs/studies/tiny/trial-0001"],
        ["generate", gan.dir, "--n", "4"],
        ["lr-find", config, "--steps", "20"],  # the default --out
    ]
    for args in commands:
        code, out, err = run(args, capsys)
        assert code == 0, (args, out, err)

    for written in ("studies/tiny/study.html", "labs/backprop/lab.json", "compare/compare.html",
                    "generated/gan/grid.png", "lr-find/tiny.png"):
        assert (clone / "runs" / written).is_file(), written
    assert git("status", "--porcelain", cwd=clone) == ""
    assert git("status", "--porcelain", "--ignored", cwd=clone) == "!! runs/\n"  # nothing anywhere else
