"""Planted duplicate images: exact counts in summary.json, dropped from the figures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import deepworks
from deepworks.data import load_dataset, split_dataset


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / c / f"{i}.png")
    for k in range(6):  # copies within a class
        shutil.copy(root / "cat" / f"{k}.png", root / "cat" / f"copy{k}.png")
    for k in range(4):  # the same picture filed under the other class too
        shutil.copy(root / "dog" / f"{k}.png", root / "cat" / f"stray{k}.png")
    return root


def brute_force(x, idx):
    """Expected counts by comparing pixels directly (no hashing)."""
    flat = x.reshape(len(x), -1).numpy()
    def seen(pos, among):
        return any(np.array_equal(flat[pos], flat[j]) for j in among)
    within = {s: sum(seen(p, idx[s][:i]) for i, p in enumerate(idx[s])) for s in idx}
    leaked_val = [i for i, p in enumerate(idx["val"]) if seen(p, idx["train"])]
    leaked_test = [i for i, p in enumerate(idx["test"]) if seen(p, idx["train"]) or seen(p, idx["val"])]
    return within, len(leaked_val), len(leaked_test)


def test_duplicate_images_are_counted_exactly_and_dropped(folder, tmp_path):
    ds = load_dataset(path=folder)
    idx = split_dataset(ds, seed=0).indices
    within, leaked_val, leaked_test = brute_force(ds.x, idx)
    assert leaked_val + leaked_test > 0  # the plant reached val or test
    run = deepworks.train({"data": {"path": str(folder)}, "model": {"name": "softmax"},
                           "train": {"epochs": 1, "progress": "none"}}, run_dir=tmp_path / "run")
    dup = json.loads((run.dir / "summary.json").read_text())["data"]["duplicates"]
    assert dup["within"] == within
    assert dup["leaked"] == {"val": leaked_val, "test": leaked_test}
    assert dup["dropped"] == {"val": leaked_val, "test": leaked_test} and dup["policy"] == "drop"
    report = json.loads((run.dir / "test_report.json").read_text())
    assert report["support"] == len(idx["test"]) - leaked_test  # the test figures exclude them


def test_duplicates_can_be_kept_or_refused(folder, tmp_path):
    cfg = {"data": {"path": str(folder), "on_duplicates": "keep"}, "model": {"name": "softmax"},
           "train": {"epochs": 1, "progress": "none"}}
    run = deepworks.train(cfg, run_dir=tmp_path / "keep")
    assert run.summary["data"]["duplicates"]["dropped"] == {"val": 0, "test": 0}
    cfg["data"]["on_duplicates"] = "error"
    with pytest.raises(deepworks.DataError, match="on_duplicates"):
        deepworks.train(cfg, run_dir=tmp_path / "err")


def test_a_column_that_is_the_target_is_refused(tmp_path):
    rows = ["x,code,label"] + [f"{i * 0.37:.2f},{'AB'[i % 2]}{i % 2},{'ab'[i % 2]}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(deepworks.DataError, match=r"column\(s\) 'code' determine the target 'label' one to one"):
        deepworks.train({"data": {"path": str(tmp_path / "t.csv"), "target": "label"}}, run_dir=tmp_path / "r")
