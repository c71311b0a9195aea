"""Forecasting end to end on a tiny synthetic series: metrics, baselines, report, predict (API and CLI)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error, r2_score

import deepworks
from deepworks.cli import main
from deepworks.evaluation.forecasting import ForecastAccumulator, forecast_report
from deepworks.evaluation.predictions import load_predictions
from deepworks.training.tasks import Forecasting, task_from_record

N, HORIZON = 240, 3
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny recurrent steps run fastest on one thread; on a busy machine a second one spins idle
    (measured 10x slower per LSTM step here), so these tests use one and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sine_trend(n: int = N, seed: int = 0) -> np.ndarray:
    """A weekly pattern on a trend, daily steps: last_value misses the pattern, a model need not."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return np.round(10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.1, n), 4)


def write_series(path: Path, values: np.ndarray, start: str = "2024-01-01") -> Path:
    days = np.datetime64(start) + np.arange(len(values))
    path.write_text("day,visits\n" + "".join(f"{d},{v}\n" for d, v in zip(days, values)))
    return path


def config(csv_path: Path, model: dict) -> dict:
    return {
        "name": "sine", "seed": 0, "report": True,
        "data": {"path": str(csv_path), "time": "day", "target": "visits", "horizon": HORIZON, "difference": True},
        "model": model,
        "train": {"epochs": 25, "batch_size": 32, "progress": "none", "optimizer": {"name": "adamw", "lr": 0.01}},
    }


@pytest.fixture(scope="module")
def sine_cli_run(tmp_path_factory, train_by_cli, one_thread):
    """The MLP forecaster trained once by `deepworks train`: (the run, what the command printed, the CSV)."""
    import yaml

    root = tmp_path_factory.mktemp("forecast")
    csv_path = write_series(root / "visits.csv", sine_trend())
    (root / "sine.yaml").write_text(yaml.safe_dump(config(csv_path, {"name": "mlp", "hidden": [32], "dropout": 0.0})))
    run, printed = train_by_cli(root / "sine.yaml", run_dir=root / "run")
    return run, printed, csv_path


@pytest.fixture(scope="module")
def sine_run(sine_cli_run):
    run, _, csv_path = sine_cli_run
    return run, csv_path


def test_mlp_beats_last_value_and_records_everything(sine_run):
    run, _ = sine_run
    s = run.summary
    assert s["task"] == "forecasting" and s["monitor"] == "val_loss"
    assert set(s["test"]) == {"loss", "mae", "rmse", "mape", "r2", "support"}
    base = s["baselines"]
    assert set(base) == {"last_value", "seasonal_naive"} and set(base["last_value"]) == {"val", "test"}
    assert set(base["last_value"]["test"]) == {"mae", "rmse", "mape"}
    assert s["test"]["mae"] < 0.5 * base["last_value"]["test"]["mae"], (s["test"], base)
    info = json.loads((run.dir / "data.json").read_text())
    src = info["input"]
    assert info["input_shape"] == [7, 1] and src["lookback"] == 7 and src["season"] == 7  # daily: a week
    assert src["time_step_text"] == "daily" and src["percent_error"] == "mape" and src["difference"] is True
    # the baselines' figures are those of numpy on the same test windows
    pred = load_predictions(run.dir / "predictions.safetensors")["test"]
    values = sine_trend()
    origins = pred["origin"].numpy()
    actual = values[origins[:, None] + np.arange(HORIZON)]
    np.testing.assert_allclose(pred["actual"].numpy(), actual)
    naive = np.repeat(values[origins - 1][:, None], HORIZON, axis=1)
    assert base["last_value"]["test"]["mae"] == pytest.approx(np.abs(naive - actual).mean())
    assert base["last_value"]["test"]["rmse"] == pytest.approx(np.sqrt(((naive - actual) ** 2).mean()))
    assert base["last_value"]["test"]["mape"] == pytest.approx(100 * np.mean(np.abs(naive - actual) / actual))
    seasonal = values[origins[:, None] + np.arange(HORIZON) - 7]
    assert base["seasonal_naive"]["test"]["mae"] == pytest.approx(np.abs(seasonal - actual).mean())
    assert len(origins) == s["test"]["support"] == round(0.15 * N) - 7 - HORIZON + 1  # the test period's windows
    # the network's test MAE from its stored outputs
    task = task_from_record(info["task"])
    network = task.unscale(pred["outputs"]).numpy()
    assert s["test"]["mae"] == pytest.approx(np.abs(network - actual).mean(), rel=1e-5)
    report = json.loads((run.dir / "test_report.json").read_text())
    assert [r["step"] for r in report["per_step"]] == [1, 2, 3]
    per_step = np.abs(network - actual).mean(axis=0)
    np.testing.assert_allclose([r["mae"] for r in report["per_step"]], per_step, rtol=1e-5)
    page = (run.dir / "report.html").read_text()
    assert 'id="fig-forecast"' in page and 'id="fig-error-per-step"' in page


def _cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in re.split(r"[│┃|]", line) if c.strip()] for line in text.splitlines()]


def test_train_and_evaluate_print_the_forecast_errors(sine_cli_run, capsys):
    """What a user reads after `deepworks train` and `deepworks evaluate` on a forecasting run: MAE,
    RMSE and MAPE in the series' units, equal to summary.json and to numpy on the stored test
    forecasts, below the seasonal-naive forecast's (the value one season back) on the same windows."""
    run, printed, _ = sine_cli_run
    s = run.summary
    rows = {cells[0]: cells[1:] for cells in _cells(printed) if cells and cells[0] in ("split", "train", "val", "test")}
    assert rows.get("split") == ["mae", "rmse", "mape", "loss"], printed
    for split in ("train", "val", "test"):
        assert rows[split] == [f"{s[split][c]:.4f}" for c in ("mae", "rmse", "mape", "loss")], (split, printed)

    info = json.loads((run.dir / "data.json").read_text())
    pred = load_predictions(run.dir / "predictions.safetensors")["test"]
    network = task_from_record(info["task"]).unscale(pred["outputs"]).numpy()
    values = sine_trend()
    origins = pred["origin"].numpy()
    actual = values[origins[:, None] + np.arange(HORIZON)]
    seasonal = values[origins[:, None] + np.arange(HORIZON) - 7]
    mae, rmse, mape = (float(v) for v in rows["test"][:3])
    assert mae == pytest.approx(np.abs(network - actual).mean(), abs=5e-5, rel=1e-5)
    assert rmse == pytest.approx(np.sqrt(((network - actual) ** 2).mean()), abs=5e-5, rel=1e-5)
    assert mape == pytest.approx(100 * np.mean(np.abs(network - actual) / actual), abs=5e-5, rel=1e-5)
    assert mae < np.abs(seasonal - actual).mean()  # the model reads the trend the seasonal-naive forecast misses

    assert main(["evaluate", str(run.dir)]) == 0
    shown = capsys.readouterr().out
    line = " ".join(shown.split())
    figures = dict(re.findall(r"(MAE|RMSE|MAPE %|R²|loss) (-?\d+\.\d{4})", line))
    assert float(figures["MAE"]) == pytest.approx(np.abs(network - actual).mean(), abs=5e-5, rel=1e-5)
    assert float(figures["RMSE"]) == pytest.approx(np.sqrt(((network - actual) ** 2).mean()), abs=5e-5, rel=1e-5)
    assert float(figures["MAPE %"]) == pytest.approx(100 * np.mean(np.abs(network - actual) / actual), abs=5e-5, rel=1e-5)
    assert f"({len(origins)} windows)" in line
    per_step = [cells for cells in map(str.split, shown.splitlines()) if len(cells) == 4 and cells[0] in ("1", "2", "3")]
    assert [int(c[0]) for c in per_step] == [1, 2, 3], shown
    for h, cells in enumerate(per_step):
        assert float(cells[1]) == pytest.approx(np.abs(network[:, h] - actual[:, h]).mean(), abs=5e-5, rel=1e-5)


def test_lstm_beats_last_value(tmp_path):
    csv_path = write_series(tmp_path / "visits.csv", sine_trend(seed=1))
    cfg = config(csv_path, {"name": "lstm", "hidden": 16})
    cfg["report"] = False
    cfg["train"]["log_gradients"] = 20  # through the difference wrapper: the LSTM's per-step input gradients
    run = deepworks.train(cfg, run_dir=tmp_path / "run")
    assert run.summary["test"]["mae"] < 0.5 * run.summary["baselines"]["last_value"]["test"]["mae"]
    reach = run.summary["gradient_reach"]
    assert reach is not None and reach["length"] == 7 and 1 <= reach["steps"] <= 7
    records = [json.loads(line) for line in (run.dir / "gradients.jsonl").read_text().splitlines()]
    assert records and all(len(r["time_steps"]) == 7 for r in records)


def test_predict_from_history_api(sine_run, tmp_path, monkeypatch):
    run, _ = sine_run
    history = write_series(tmp_path / "history.csv", sine_trend()[-30:], start="2024-07-29")
    monkeypatch.chdir(tmp_path)
    [result] = deepworks.predict(run.dir, [history])
    assert [row["day"] for row in result["forecast"]] == ["2024-08-28", "2024-08-29", "2024-08-30"]
    assert result["last"] == "2024-08-27"
    png = tmp_path / "runs" / "forecasts" / "history.png"  # the default place, beside the runs
    assert Path(result["png"]) == png.relative_to(tmp_path) and png.stat().st_size
    # the same numbers as the model on the last window, scaled by hand
    src = json.loads((run.dir / "data.json").read_text())["input"]
    window = (sine_trend()[-7:] - src["mean"][0]) / src["std"][0]
    with torch.no_grad():
        out = run.model(torch.tensor(window, dtype=torch.float32).view(1, 7, 1)).double().numpy()[0]
    np.testing.assert_allclose([r["visits"] for r in result["forecast"]], out * src["std"][0] + src["mean"][0],
                               rtol=1e-5)
    short = write_series(tmp_path / "short.csv", sine_trend()[:5])
    with pytest.raises(deepworks.errors.DataError, match=r"has 5 time steps; the model reads the last 7 \(data.lookback"):
        deepworks.predict(run.dir, [short])


def test_predict_from_history_cli(sine_run, tmp_path):
    run, _ = sine_run
    history = write_series(tmp_path / "history.csv", sine_trend()[-30:], start="2024-07-29")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "next.csv"
    proc = subprocess.run([sys.executable, "-m", "deepworks", "predict", str(run.dir), str(history), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["day"] for r in rows] == ["2024-08-28", "2024-08-29", "2024-08-30"]
    assert all(np.isfinite(float(r["visits"])) for r in rows)
    assert (tmp_path / "next.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2024-08-28" in proc.stdout and "next.png" in proc.stdout


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("percent", ["mape", "smape"])
def test_forecast_metrics_match_scikit_learn(percent):
    rng = np.random.default_rng(0)
    horizon, targets, n = 4, 2, 50
    mean, std = [5.0, -3.0], [2.0, 0.5]
    true = rng.normal(0, 1, (n, horizon * targets))
    pred = true + rng.normal(0, 0.3, true.shape)
    acc = ForecastAccumulator(horizon, targets, mean=mean * horizon, std=std * horizon, percent=percent)
    for rows in np.array_split(np.arange(n), 3):  # summed over batches
        acc.update(torch.from_numpy(pred[rows]), torch.from_numpy(true[rows]))
    report = forecast_report(acc, ["a", "b"])
    units = lambda v: v * np.tile(std, horizon) + np.tile(mean, horizon)  # noqa: E731
    p, y = units(pred), units(true)
    assert report["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert report["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    if percent == "mape":
        assert report["mape"] == pytest.approx(100 * mean_absolute_percentage_error(y, p))
    else:
        assert report["smape"] == pytest.approx(100 * np.mean(2 * np.abs(p - y) / (np.abs(p) + np.abs(y))))
    assert report["r2"] == pytest.approx(r2_score(y, p))
    step2 = slice(2, 4)
    assert report["per_step"][1]["mae"] == pytest.approx(mean_absolute_error(y[:, step2], p[:, step2]))
    assert report["per_target"][1]["mae"] == pytest.approx(mean_absolute_error(y[:, 1::2], p[:, 1::2]))


def test_forecasting_task_record_and_smape_for_series_with_zeros(tmp_path):
    task = Forecasting(["a"], [1.0], [2.0], horizon=3, percent="smape")
    again = task_from_record(task.record())
    assert isinstance(again, Forecasting) and again.horizon == 3 and again.metrics == ("loss", "mae", "rmse", "smape", "r2")
    assert again.check_monitor("val_smape", "train.monitor") == "val_smape"
    values = np.abs(sine_trend()) * (np.arange(N) % 5 != 0)  # zeros in the training period
    csv_path = write_series(tmp_path / "zeros.csv", values)
    cfg = deepworks.config.load_config({"data": {"path": str(csv_path), "time": "day", "target": "visits"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = deepworks.pipeline.prepare_data(cfg)
    assert data.task.percent == "smape" and data.info["input"]["percent_error"] == "smape"


def test_inspect_a_series_config(tmp_path):
    from deepworks.inspection import inspect_config

    csv_path = write_series(tmp_path / "visits.csv", sine_trend())
    out = inspect_config(config(csv_path, {"name": "lstm", "hidden": 5}))
    assert out["input_shape"] == [7, 1] and out["num_classes"] == HORIZON
    lstm = 4 * 5 * (1 + 5) + 2 * 4 * 5  # four gates: input and recurrent weights, two bias vectors
    assert out["total_params"] == lstm + 5 * HORIZON + HORIZON
