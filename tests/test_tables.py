"""Real tables end to end: penguins classification and regression, predict on raw rows, bad input."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score,
                             recall_score)

import deepworks
from deepworks.cli import main
from deepworks.data.features import TableEncoder
from deepworks.data.tabular import load_table, table_target
from deepworks.data.splits import split_indices
from deepworks.evaluation.predictions import load_predictions
from deepworks.pipeline import prepare_data
from deepworks.training.tasks import task_from_record

ROOT = Path(__file__).resolve().parents[1]
PENGUINS = ROOT / "examples" / "data" / "penguins.csv"


def rows_of(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


@pytest.fixture
def penguin_run(penguin_species_run):
    """The session's penguins.yaml run (tests/conftest.py), read only: nothing here writes into it."""
    return penguin_species_run


def saved_model(run):
    """The run's network with the weights of its model.safetensors, read here with safetensors."""
    model = copy.deepcopy(run.model)
    model.load_state_dict(load_file(run.dir / "model.safetensors"))
    return model.eval()


def split_of(run):
    torch.manual_seed(run.config.seed)  # as deepworks.evaluate prepares it
    return prepare_data(run.config)


def features_of(data, x: torch.Tensor) -> np.ndarray:
    """The features the network sees (N, F): the run's slots expanded by its encoder (one-hot,
    imputation, missing indicators), as TableInput does inside the model."""
    return TableEncoder.from_dict(data.info["encoder"]).expand(x.numpy())


def test_penguins_species_from_mixed_columns(penguin_run):
    s = penguin_run.summary
    assert s["test"]["accuracy"] >= 0.95
    info = json.loads((penguin_run.dir / "data.json").read_text())
    assert info["features"] == ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
                                "sex", "year"]
    assert info["feature_groups"]["island"] == [0, 1, 2, 3]  # Biscoe, Dream, Torgersen, other
    assert "sex=missing" in info["feature_names"] and "bill_length_mm=missing" in info["feature_names"]


def test_classification_baselines_equal_scikit_learn_on_the_same_split(penguin_run):
    """The oracle: scikit-learn's LogisticRegression fitted here on the run's encoded training
    rows, and the majority class counted here, scored by scikit-learn's metrics."""
    data = split_of(penguin_run)
    baselines = penguin_run.summary["baselines"]
    assert set(baselines) == {"majority_class", "logistic_regression"}
    xtr, ytr = features_of(data, data.train.x), data.train.y.numpy()
    oracle = LogisticRegression(max_iter=2000, random_state=penguin_run.config.seed).fit(xtr, ytr)
    majority = np.bincount(ytr).argmax()
    for split in ("val", "test"):
        x, y = features_of(data, getattr(data, split).x), getattr(data, split).y.numpy()
        pred = oracle.predict(x)
        ours = baselines["logistic_regression"][split]
        assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
        assert ours["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro"), abs=1e-12)
        assert baselines["majority_class"][split]["accuracy"] == pytest.approx(float((y == majority).mean()), abs=1e-12)
    assert baselines["majority_class"]["test"]["accuracy"] < 0.5 < baselines["logistic_regression"]["test"]["accuracy"]


def test_evaluate_equals_a_forward_pass_of_the_saved_weights(penguin_run):
    data = split_of(penguin_run)
    with torch.no_grad():
        logits = saved_model(penguin_run)(data.test.x)
    y, pred = data.test.y.numpy(), logits.argmax(1).numpy()
    report = deepworks.evaluate(penguin_run.dir, split="test")
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, data.test.y)), rel=1e-5)


def test_predict_on_raw_rows_matches_evaluate(penguin_run, tmp_path):
    cfg = penguin_run.config
    data = prepare_data(cfg)
    with torch.no_grad():
        expected = penguin_run.model(data.test.x).argmax(1).tolist()
    # the raw test rows, recovered the way the pipeline split them
    table = load_table(PENGUINS, "species")
    y, _, _ = table_target(table)
    idx = split_indices(y, stratify=True, groups=None, val_fraction=0.15, test_fraction=0.15, seed=cfg.seed,
                        what="t")["test"]
    idx = np.sort(idx)  # a table's splits hold their rows in file order
    header, rows = rows_of(PENGUINS)
    kept = [r for r in rows if r[0] not in ("", "NA")]
    test_rows = [kept[i] for i in idx]
    odd = list(test_rows[0])
    odd[header.index("bill_length_mm")] = ""  # a missing value
    odd2 = list(test_rows[1])
    odd2[header.index("island")] = "Atlantis"  # never seen in training
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(test_rows + [odd, odd2])
    preds = deepworks.predict(penguin_run.dir, [path])
    assert [p["prediction"] for p in preds[: len(test_rows)]] == [penguin_run.classes[i] for i in expected]
    assert all(p["prediction"] in penguin_run.classes for p in preds[-2:])
    assert preds[-1]["line"] == len(test_rows) + 3


def test_penguin_body_mass_regression_beats_ridge_minus_003(penguin_regression_run, tmp_path):
    run = penguin_regression_run.run
    s = run.summary
    assert s["task"] == "regression"
    data = split_of(run)
    mean, std = data.task.mean[0], data.task.std[0]
    grams = lambda z: z.reshape(-1).double().numpy() * std + mean  # noqa: E731  (the model learns standardised mass)
    ytr, yte = grams(data.train.y), grams(data.test.y)

    # the baselines, against scikit-learn's Ridge fitted here on the same encoded rows, and the training mean
    ridge = Ridge(alpha=1.0).fit(features_of(data, data.train.x), data.train.y.numpy())
    ridge_pred = grams(torch.from_numpy(ridge.predict(features_of(data, data.test.x))))
    ours = s["baselines"]["ridge"]["test"]
    assert ours["r2"] == pytest.approx(r2_score(yte, ridge_pred), abs=1e-9)
    assert ours["mae"] == pytest.approx(mean_absolute_error(yte, ridge_pred), rel=1e-9)
    mean_mae = mean_absolute_error(yte, np.full_like(yte, ytr.mean()))
    assert s["baselines"]["training_mean"]["test"]["mae"] == pytest.approx(mean_mae, rel=1e-6)  # float32 targets
    assert s["test"]["r2"] >= ours["r2"] - 0.03

    # evaluate, against a plain forward pass of the saved weights scored by scikit-learn, in grams
    with torch.no_grad():
        pred = grams(saved_model(run)(data.test.x))
    report = deepworks.evaluate(run.dir, split="test")
    assert report["mae"] == pytest.approx(mean_absolute_error(yte, pred), rel=1e-6)
    assert report["r2"] == pytest.approx(r2_score(yte, pred), abs=1e-6)
    assert report["mae"] < 0.5 * mean_mae  # far better than always predicting the mean

    # predict on raw rows comes back in grams: better than the mean by far on every row with a mass
    header, rows = rows_of(PENGUINS)
    mass = header.index("body_mass_g")
    rows = [r for r in rows if r[mass] not in ("", "NA")]
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    preds = np.array([p["prediction"] for p in deepworks.predict(run.dir, [path])])
    truth = np.array([float(r[mass]) for r in rows])
    assert mean_absolute_error(truth, preds) < 0.5 * mean_absolute_error(truth, np.full_like(truth, ytr.mean()))


def printed_table(text: str) -> dict[str, dict[str, str]]:
    """The rows of the results table `deepworks train` prints: {split: {column: cell}}."""
    header, rows = None, {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == "split":
            header = cells[1:]
        elif header and cells and cells[0] in ("train", "val", "test"):
            rows[cells[0]] = dict(zip(header, cells[1:]))
    return rows


def test_train_and_evaluate_print_the_regression_figures(penguin_regression_run, capsys):
    """What a user reads after `deepworks train` and `deepworks evaluate` on a regression run: MAE,
    RMSE and R² in grams, equal to summary.json and to scikit-learn's metrics on the run's stored
    test predictions (train) and on a forward pass of the saved weights (evaluate)."""
    run, printed = penguin_regression_run
    s = run.summary
    table = printed_table(printed)
    assert set(table) == {"train", "val", "test"}, printed
    for split, cells in table.items():
        assert list(cells) == ["mae", "rmse", "r2", "loss"], printed
        for column, cell in cells.items():
            assert cell == f"{s[split][column]:.4f}", (split, column, printed)
    assert f"run directory: {run.dir}" in printed
    assert f"epochs run: {s['epochs_run']} (best {s['best_epoch']})" in printed

    # the oracle: scikit-learn on the test outputs the run stored, un-scaled to grams
    task = task_from_record(json.loads((run.dir / "data.json").read_text())["task"])
    stored = load_predictions(run.dir / "predictions.safetensors")["test"]
    pred, true = (task.unscale(stored[k]).double().numpy().ravel() for k in ("outputs", "targets"))
    shown = {k: float(v) for k, v in table["test"].items()}
    assert shown["mae"] == pytest.approx(mean_absolute_error(true, pred), abs=5e-5, rel=1e-6)
    assert shown["rmse"] == pytest.approx(mean_squared_error(true, pred) ** 0.5, abs=5e-5, rel=1e-6)
    assert shown["r2"] == pytest.approx(r2_score(true, pred), abs=1e-4)
    assert 100 < shown["mae"] < 0.5 * s["baselines"]["training_mean"]["test"]["mae"]  # grams, far from the mean

    assert main(["evaluate", str(run.dir)]) == 0
    line = " ".join(capsys.readouterr().out.split())
    figures = dict(re.findall(r"(MAE|RMSE|R²|loss) (-?\d+\.\d{4})", line))
    assert set(figures) == {"MAE", "RMSE", "R²", "loss"}, line
    data = split_of(run)
    mean, std = data.task.mean[0], data.task.std[0]
    with torch.no_grad():
        forward = saved_model(run)(data.test.x).reshape(-1).double().numpy() * std + mean
    truth = data.test.y.reshape(-1).double().numpy() * std + mean
    assert float(figures["MAE"]) == pytest.approx(mean_absolute_error(truth, forward), abs=5e-5, rel=1e-6)
    assert float(figures["RMSE"]) == pytest.approx(mean_squared_error(truth, forward) ** 0.5, abs=5e-5, rel=1e-6)
    assert float(figures["R²"]) == pytest.approx(r2_score(truth, forward), abs=1e-4)
    assert f"({len(truth)} samples)" in line


def test_parquet_tables_read_like_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(PENGUINS)
    frame.to_parquet(tmp_path / "p.parquet")
    a = prepare_data(deepworks.load_config({"data": {"path": str(PENGUINS), "target": "species"}}))
    b = prepare_data(deepworks.load_config({"data": {"path": str(tmp_path / "p.parquet"), "target": "species"}}))
    assert a.info["feature_names"] == b.info["feature_names"]
    torch.testing.assert_close(a.train.x, b.train.x, equal_nan=True)  # slots: NaN where a value is missing


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", r"empty.csv: the file is empty"),
        ("header.csv", b"a,b,label\n", r"header.csv: the file has a header but no data rows"),
        ("nolabel.csv", b"a,b,klass\n1,2,x\n3,4,y\n", r"nolabel.csv: no column 'label' \(data.target\)"),
        ("one.csv", b"a,label\n1,x\n2,x\n3,x\n", r"one.csv: column 'label' \(data.target\) has 1 distinct value"),
        ("gap.csv", b"a,b,label\n1,,x\n2,NA,y\n3,,x\n4,,y\n5,,x\n6,,y\n7,,x\n8,,y\n9,,x\n10,,y\n",
         r"gap.csv: column 'b' has no values in the training rows"),
        ("latin.csv", "a,label\n1,caf\xe9\n".encode("latin-1"), r"latin.csv: not a UTF-8 text file"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, err = run_cli(["train", str(ROOT / "examples/configs/penguins.yaml"), "--set", f"data.path={path}",
                         "--set", "data.target=label", "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, " ".join(err.split())), err
    assert "Fix" in err or "fix" in err.lower()


def test_regression_on_a_string_target_is_refused(tmp_path, capsys):
    code, err = run_cli(["train", str(ROOT / "examples/configs/penguins.yaml"), "--set", f"data.path={PENGUINS}",
                         "--set", "data.task=regression", "--run-dir", str(tmp_path / "run")], capsys)
    flat = " ".join(err.split())
    assert code == 2 and "column 'species' (data.target) holds 'Adelie'" in flat and "data.task: classification" in flat
