"""k-fold cross-validation: disjoint stratified folds, fold run directories, mean ± std, one test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deepworks.cli import main
from deepworks.data import load_dataset, split_dataset
from deepworks.data.splits import kfold_indices as fold_indices


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # not the working directory

def test_five_folds_on_digits_are_disjoint_stratified_and_cover_the_non_test_data():
    ds = load_dataset("digits")
    s = split_dataset(ds, seed=0)
    rest = np.sort(np.concatenate([s.indices["train"], s.indices["val"]]))
    y = ds.y.numpy()[rest]
    folds = fold_indices(y, 5, stratify=True, groups=None, seed=0, what="digits")
    vals = [va for _, va in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(rest)))  # each row validates exactly once
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(rest)
        per_class = np.bincount(y[va], minlength=10)
        expected = np.bincount(y, minlength=10) / 5
        assert np.all(np.abs(per_class - expected) <= 1)  # stratified
    assert not set(rest) & set(s.indices["test"])  # the test split is outside every fold


def test_cli_cv_writes_fold_runs_and_mean_std(tmp_path, capsys):
    code = main(["train", str(EXAMPLES / "configs" / "quickstart.yaml"), "--cv", "5", "--run-dir", str(tmp_path / "cv"),
                 "--set", "model={name: softmax}", "--set", "train.epochs=2", "--set", "train.progress=none",
                 "--set", "train.early_stopping=null"])
    assert code == 0
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["folds"] == 5 and [f["fold"] for f in summary["per_fold"]] == [1, 2, 3, 4, 5]
    accs = [f["accuracy"] for f in summary["per_fold"]]
    assert summary["mean"]["accuracy"] == np.mean(accs) and summary["std"]["accuracy"] == np.std(accs)
    sizes = [json.loads((tmp_path / "cv" / f"fold-{i}" / "data.json").read_text())["sizes"] for i in range(1, 6)]
    assert sum(s["val"] for s in sizes) == sizes[0]["train"] + sizes[0]["val"]  # the folds partition the rest
    for i in range(1, 6):  # folds never touch the test split
        assert "test" not in json.loads((tmp_path / "cv" / f"fold-{i}" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.8 and summary["final_run"] == "final"
    assert "mean ± std" in capsys.readouterr().out
