"""Permutation importance: scikit-learn as the oracle, groups of encoded features, a planted
informative column in a trained tabular run, config-topK.yaml, and the command line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepworks
from deepworks.analysis import _scorer, importance, run_feature_groups
from deepworks.cli import main
from deepworks.config import load_config
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.evaluation.importance import permutation_importance, plot_importance

FEATURES = ["noise_a", "signal", "noise_b", "noise_c"]


def assert_png(path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()


# ----------------------------------------------------------------------------- the algorithm


def test_matches_sklearn_permutation_importance_on_a_linear_problem():
    from sklearn.inspection import permutation_importance as sk_importance
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    y = x @ np.array([3.0, 1.5, 0.7, 0.0, 0.0]) + rng.normal(scale=0.5, size=600)
    model = LinearRegression().fit(x, y)
    sk = sk_importance(model, x, y, n_repeats=30, random_state=0)  # R² drops

    rows = permutation_importance(
        lambda m: model.score(m.numpy(), y), torch.from_numpy(x), {f"x{j}": [j] for j in range(5)}, repeats=30
    )
    by_name = {r["column"]: r for r in rows}
    ours = np.array([by_name[f"x{j}"]["mean_drop"] for j in range(5)])
    assert rows[0]["baseline"] == pytest.approx(model.score(x, y))
    assert [r["column"] for r in rows[:3]] == ["x0", "x1", "x2"]  # the same ranking as scikit-learn's
    assert list(np.argsort(-sk.importances_mean)[:3]) == [0, 1, 2]
    # different permutations, the same expectation: within a few standard errors
    assert np.allclose(ours, sk.importances_mean, rtol=0.1, atol=0.01)
    assert np.allclose([by_name[f"x{j}"]["std_drop"] for j in range(3)], sk.importances_std[:3], rtol=0.6)
    assert all(len(r["drops"]) == 30 and r["std_drop"] == pytest.approx(np.std(r["drops"])) for r in rows)
    assert abs(by_name["x3"]["mean_drop"]) < 0.01 and abs(by_name["x4"]["mean_drop"]) < 0.01


def test_a_group_is_permuted_like_its_raw_column():
    """A categorical column one-hot encoded into three features, permuted as one group, gives
    exactly the drops of permuting the raw column: the same row order moves all three."""
    rng = np.random.default_rng(1)
    n = 300
    a = rng.normal(size=n)
    c = rng.integers(0, 3, size=n)
    y = ((c == 1) | (a > 1)).astype(int)
    raw = torch.tensor(np.column_stack([a, c]), dtype=torch.float64)  # (N, 2)
    encoded = torch.tensor(np.column_stack([a, np.eye(3)[c]]), dtype=torch.float64)  # (N, 1 + 3)

    def rule(a_col: np.ndarray, c_col: np.ndarray) -> float:
        return float(np.mean(((c_col == 1) | (a_col > 1)).astype(int) == y))

    raw_rows = permutation_importance(lambda m: rule(m[:, 0].numpy(), m[:, 1].numpy()), raw,
                                      {"a": [0], "colour": [1]}, repeats=4, seed=3)
    enc_rows = permutation_importance(lambda m: rule(m[:, 0].numpy(), m[:, 1:].argmax(1).numpy()), encoded,
                                      {"a": [0], "colour": [1, 2, 3]}, repeats=4, seed=3)
    assert raw_rows == enc_rows
    assert raw_rows[0]["column"] == "colour" and raw_rows[0]["mean_drop"] > 0.2


def test_seeded_and_the_global_rng_is_left_alone():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).float()
    score = lambda m: float(((m[:, 0] + 0.3 * m[:, 1] > 0).float() == y).float().mean())  # noqa: E731
    groups = {"a": [0], "b": [1], "c": [2]}
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first = permutation_importance(score, x, groups, repeats=3, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert permutation_importance(score, x, groups, repeats=3, seed=7) == first
    assert permutation_importance(score, x, groups, repeats=3, seed=8) != first
    assert first[0]["column"] == "a"
    assert {r["column"]: r["mean_drop"] for r in first}["c"] == 0.0  # the score never reads c


def test_bad_arguments_name_the_group_or_parameter():
    x = torch.zeros(10, 3)
    score = lambda m: 0.0  # noqa: E731
    with pytest.raises(DataError, match=r"groups\['b'\].*\[3\].*0\.\.2"):
        permutation_importance(score, x, {"a": [0], "b": [1, 3]})
    with pytest.raises(DataError, match=r"groups\['a'\]: no feature indices"):
        permutation_importance(score, x, {"a": []})
    with pytest.raises(DataError, match="groups is empty"):
        permutation_importance(score, x, {})
    with pytest.raises(ConfigError, match="repeats"):
        permutation_importance(score, x, {"a": [0]}, repeats=0)
    with pytest.raises(DataError, match="2-D tensor"):
        permutation_importance(score, torch.zeros(10), {"a": [0]})


def test_plot_importance_is_a_png(tmp_path):
    rows = [{"column": "b", "mean_drop": 0.3, "std_drop": 0.05}, {"column": "a", "mean_drop": 0.0, "std_drop": 0.0}]
    fig = plot_importance(rows, metric="accuracy", title="t")
    fig.savefig(tmp_path / "i.png")
    assert_png(tmp_path / "i.png")
    ax = fig.axes[0]
    top = max(zip(ax.get_yticks(), ax.get_yticklabels()), key=lambda tick: tick[0])[1]
    assert top.get_text() == "b"  # the most important column is drawn at the top


# ----------------------------------------------------------------------------- a trained run


def planted_csv(path: Path, n: int = 400) -> Path:
    """The label is decided by ``signal`` alone; the three noise columns carry nothing."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, 4))
    label = np.where(values[:, 1] + 0.1 * rng.normal(size=n) > 0, "yes", "no")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "label"])
        writer.writerows([*row, lab] for row, lab in zip(values.round(5), label))
    return path


TABLE_CONFIG = {"model": {"name": "softmax"},
                "train": {"epochs": 20, "progress": "none", "optimizer": {"name": "adamw", "lr": 0.05}}}


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("importance")
    path = planted_csv(root / "planted.csv")
    run = deepworks.train({"data": {"path": str(path), "target": "label"}, **TABLE_CONFIG}, run_dir=root / "run")
    assert run.summary["val"]["accuracy"] > 0.9
    return run.dir


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    config = {"data": {"dataset": "digits"}, "model": {"name": "softmax"}, "train": {"epochs": 1, "progress": "none"}}
    return deepworks.train(config, run_dir=tmp_path_factory.mktemp("digits") / "run").dir


def test_planted_column_ranks_above_noise(table_run):
    result = importance(table_run, repeats=5)
    names = [c["column"] for c in result["columns"]]
    assert names[0] == "signal" and set(names) == set(FEATURES)
    by_name = {c["column"]: c for c in result["columns"]}
    assert by_name["signal"]["mean_drop"] > 0.3
    assert all(by_name[f]["mean_drop"] < 0.05 for f in FEATURES if f != "signal")
    assert result["metric"] == "accuracy" and result["split"] == "val" and result["samples"] == 60
    assert result["baseline"] == pytest.approx(deepworks.evaluate(table_run, split="val")["accuracy"])
    assert json.loads((table_run / "importance.json").read_text()) == result
    assert_png(table_run / "importance.png")
    assert "config" not in result["files"]
    assert importance(table_run, repeats=5)["columns"] == result["columns"]  # seeded


def test_keep_top_writes_a_config_that_trains_on_those_columns(table_run, tmp_path):
    result = importance(table_run, repeats=2, keep_top=2, split="train")
    path = Path(result["files"]["config"])
    assert path == table_run / "config-top2.yaml"
    top = {c["column"] for c in result["columns"][:2]}
    config = load_config(path)
    assert set(config.data.features) == top and "signal" in top
    assert config.data.features == [f for f in FEATURES if f in top]  # the data's column order
    assert config.name == "run-top2" and config.model.name == "softmax" and config.train.epochs == 20
    run = deepworks.train(path, run_dir=tmp_path / "top2", train__epochs=2)
    info = json.loads((run.dir / "data.json").read_text())
    assert info["features"] == config.data.features and info["input_shape"] == [2]
    with pytest.raises(ConfigError, match=r"--keep-top: expected a whole number from 1 to 4"):
        importance(table_run, keep_top=5)


def test_feature_groups_from_data_json(table_run, tmp_path):
    run = tmp_path / "grouped"
    shutil.copytree(table_run, run)
    info = json.loads((run / "data.json").read_text())
    # a table run whose model reads slots groups its slots (input.groups); older runs their features
    record = info["input"] if (info.get("input") or {}).get("form") == "slots" else info
    key = "groups" if record is not info else "feature_groups"
    record[key] = {"noise_ab": [0, 2], "signal": [1], "noise_c": [3]}
    (run / "data.json").write_text(json.dumps(info))
    result = importance(run, repeats=2)
    assert [c["column"] for c in result["columns"]][0] == "signal"
    assert {c["column"] for c in result["columns"]} == {"noise_ab", "signal", "noise_c"}

    record[key] = {"signal": [1], "ghost": [9]}
    (run / "data.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="feature_groups"):
        importance(run)


def test_groups_default_to_one_per_feature():
    assert run_feature_groups({"input_shape": [3], "features": ["a", "b", "c"]}) == {"a": [0], "b": [1], "c": [2]}
    with pytest.raises(CheckpointError, match="features"):
        run_feature_groups({"input_shape": [3], "features": ["a"]})


def test_r2_is_the_score_when_the_report_has_one():
    class Reports:
        """Stands in for a regression run's Trainer: its report carries r2 next to the rest."""

        def evaluate(self, data):
            return {"r2": float(data.x.sum()), "accuracy": -1.0, "loss": 0.0}

    metric, score = _scorer(Reports(), torch.ones(4, 2), torch.zeros(4, dtype=torch.long))
    assert metric == "r2" and score(torch.ones(4, 2)) == 8.0


def test_image_runs_are_refused_with_a_pointer_to_projection(image_run):
    with pytest.raises(DataError, match=r"per input column of tabular runs.*deepworks projection"):
        importance(image_run)


# ----------------------------------------------------------------------------- the command line


def test_cli_importance(table_run, image_run, capsys):
    assert main(["importance", str(table_run), "--repeats", "2", "--keep-top", "1"]) == 0
    text = capsys.readouterr().out
    assert "signal" in text and "mean accuracy drop" in text
    assert str(table_run / "importance.json") in text and "config-top1.yaml" in text
    assert (table_run / "config-top1.yaml").is_file()

    assert main(["importance", str(table_run), "--repeats", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["columns"][0]["column"] == "signal"

    for args, needle in ((["--split", "vall"], "--split"), ([], "deepworks projection")):
        run = table_run if args else image_run
        assert main(["importance", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err and "Traceback" not in err

    assert main(["importance", str(table_run), "--repeats", "0"]) == 2  # a usage error
