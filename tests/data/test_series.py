"""Time series: reading, time steps, gaps, chronological periods, windows, scaling and baselines."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepworks.config import load_config
from deepworks.data.datasets import co2_file, list_datasets, load_dataset
from deepworks.data.series import (
    TimeStep, fit_scaling, infer_step, last_value, make_windows, read_series, seasonal_naive, split_periods,
    stamp_text, window_origins,
)
from deepworks.errors import ConfigError, DataError
from deepworks.models.series import ChangeFromLast  # a module: it moved from data.series to the model layer
from deepworks.pipeline import prepare_data


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def daily_csv(path: Path, values, start: str = "2024-01-01", extra=None) -> Path:
    days = np.datetime64(start) + np.arange(len(values))
    rows = [f"{d},{v}" + (f",{e}" if extra is not None else "") for d, v, e in
            zip(days, values, extra if extra is not None else [None] * len(values))]
    return write_csv(path, "day,sales" + (",price" if extra is not None else ""), rows)


# ----------------------------------------------------------------------------- periods and windows


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(10, 400), lookback=st.integers(1, 30), horizon=st.integers(1, 10),
    val=st.floats(0.05, 0.45), test=st.floats(0.05, 0.45),
)
def test_no_test_or_val_target_lies_inside_another_periods_window(n, lookback, horizon, val, test):
    try:
        periods = split_periods(n, val, test, lookback, horizon)
    except DataError as exc:  # too short for a window in some period: said, with the keys
        assert "data.lookback" in str(exc) and "data.horizon" in str(exc)
        return
    assert periods["train"][0] == 0 and periods["train"][1] == periods["val"][0]
    assert periods["val"][1] == periods["test"][0] and periods["test"][1] == n
    steps = {}
    for name, (start, stop) in periods.items():
        origins = window_origins(start, stop, lookback, horizon)
        assert len(origins) == (stop - start) - lookback - horizon + 1
        x_idx = origins[:, None] + np.arange(-lookback, 0)
        y_idx = origins[:, None] + np.arange(horizon)
        assert x_idx.min() >= start and y_idx.max() < stop  # inside its period, inputs and targets alike
        assert np.all(x_idx.max(axis=1) < y_idx.min(axis=1))  # inputs strictly before targets
        steps[name] = (set(x_idx.ravel()) | set(y_idx.ravel()), set(y_idx.ravel()))
    for later, earlier in (("test", "train"), ("test", "val"), ("val", "train")):
        assert not steps[later][1] & steps[earlier][0], f"a {later} target lies inside a {earlier} window"


def test_windows_are_step_major_and_gather_the_right_steps():
    values = np.arange(20, dtype=np.float64).reshape(10, 2) * [1, 100]  # target column, then an input column
    x, y = make_windows(values, np.array([3, 5]), lookback=3, horizon=2, targets=1)
    assert x.shape == (2, 3, 2) and y.shape == (2, 2)
    np.testing.assert_array_equal(x[0], values[0:3])
    np.testing.assert_array_equal(y[1], [values[5, 0], values[6, 0]])
    two = np.arange(30, dtype=np.float64).reshape(10, 3)
    _, y2 = make_windows(two, np.array([4]), lookback=2, horizon=3, targets=2)
    np.testing.assert_array_equal(y2[0], [two[4, 0], two[4, 1], two[5, 0], two[5, 1], two[6, 0], two[6, 1]])


def test_short_series_and_short_periods_are_clear_errors():
    with pytest.raises(DataError, match=r"10 steps, shorter than one window: data.lookback \(8\) \+ data.horizon \(4\)"):
        split_periods(10, 0.15, 0.15, lookback=8, horizon=4)
    with pytest.raises(DataError, match=r"test period has 15 of the 100 steps.*raise data.test_fraction"):
        split_periods(100, 0.15, 0.15, lookback=12, horizon=4)


def test_scaling_uses_the_training_period_only(tmp_path):
    rng = np.random.default_rng(0)
    sales = np.round(np.linspace(0, 50, 200) + rng.normal(0, 1, 200), 3)
    price = np.round(rng.uniform(1, 2, 200), 3)
    csv = daily_csv(tmp_path / "s.csv", sales, extra=price)
    cfg = load_config({"data": {"path": str(csv), "time": "day", "target": "sales", "features": ["price"],
                                "lookback": 5, "horizon": 2}, "model": "mlp"})
    data = prepare_data(cfg)
    n_train = 200 - 30 - 30
    raw = np.stack([sales, price], axis=1)
    src = data.info["input"]
    np.testing.assert_allclose(src["mean"], raw[:n_train].mean(axis=0))
    np.testing.assert_allclose(src["std"], raw[:n_train].std(axis=0))
    assert src["periods"]["train"]["steps"] == n_train and src["periods"]["test"]["first"] == "2024-06-19"
    # the stored windows are the raw values scaled with those statistics
    x = data.test.x.numpy() * np.asarray(src["std"]) + np.asarray(src["mean"])
    np.testing.assert_allclose(x[0], raw[170:175], rtol=1e-5, atol=1e-4)
    y = data.test.y.numpy() * src["std"][0] + src["mean"][0]
    np.testing.assert_allclose(y[0], sales[175:177], rtol=1e-5, atol=1e-4)
    assert data.info["input_shape"] == [5, 2] and data.task.name == "forecasting"
    assert data.info["sizes"] == {"train": 140 - 6, "val": 30 - 6, "test": 30 - 6}


def test_fit_scaling_matches_numpy():
    values = np.random.default_rng(1).normal(3, 2, (50, 3))
    values[:, 2] = 7.0  # a constant column gets std 1
    mean, std, change = fit_scaling(values, 30)
    np.testing.assert_allclose(mean, values[:30].mean(axis=0))
    np.testing.assert_allclose(std[:2], values[:30, :2].std(axis=0))
    assert std[2] == 1.0
    np.testing.assert_allclose(change[:2], np.diff(values[:30, :2], axis=0).std(axis=0))


# ----------------------------------------------------------------------------- reading


def test_duplicate_and_missing_steps_are_reported_and_filled_from_the_past(tmp_path):
    rows = ["2024-01-01,1", "2024-01-02,2", "2024-01-02,20", "2024-01-04,4", "2024-01-05,", "2024-01-06,6",
            "2024-01-03,3"]  # unsorted; a duplicate (the last wins), a missing value
    rows += [f"{np.datetime64('2024-01-07') + i},{7 + i}" for i in range(5)]
    rows.remove("2024-01-04,4")  # a missing step
    csv = write_csv(tmp_path / "gaps.csv", "day,sales", rows)
    with pytest.warns(UserWarning, match=r"1 duplicate time stamp.*2024-01-02.*1 missing time step.*2024-01-04.*"
                                         r"missing values in 'sales' \(1\)"):
        s = read_series(csv, "day", ["sales"])
    assert s.step.unit == "day" and len(s) == 11
    np.testing.assert_array_equal(s.values[:, 0], [1, 20, 3, 3, 3, 6, 7, 8, 9, 10, 11])  # forward filled
    np.testing.assert_array_equal(s.observed, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
    assert s.report["duplicates"]["count"] == 1 and s.report["duplicates"]["first"] == ["2024-01-02"]
    assert s.report["missing_steps"] == {"count": 1, "first": ["2024-01-04"]}
    assert s.report["missing_values"] == {"sales": 1} and s.report["sorted"] is False
    # windows with a filled target are left out; their inputs may hold filled values
    origins = window_origins(0, 11, 2, 1, s.observed)
    np.testing.assert_array_equal(origins, [2, 5, 6, 7, 8, 9, 10])


@pytest.mark.parametrize(
    ("stamps", "unit", "season", "future"),
    [
        (["2024-01-06", "2024-01-13", "2024-01-27"], "week", 52, ["2024-02-03", "2024-02-10"]),
        (["2023-11-01", "2023-12-01", "2024-01-01"], "month", 12, ["2024-02-01", "2024-03-01"]),
        (["2023-11-30", "2023-12-31", "2024-01-31"], "month", 12, ["2024-02-29", "2024-03-31"]),
        (["2024-01-01", "2024-01-02", "2024-01-05"], "day", 7, ["2024-01-06", "2024-01-07"]),
        (["2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T02:00"], "hour", 24,
         ["2024-01-01T03:00:00", "2024-01-01T04:00:00"]),
        (["2023-01-01", "2023-04-01", "2023-07-01"], "quarter", 4, ["2023-10-01", "2024-01-01"]),
    ],
)
def test_time_step_inference(tmp_path, stamps, unit, season, future):
    csv = write_csv(tmp_path / "t.csv", "t,y", [f"{s},{i}" for i, s in enumerate(stamps)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a gap in some of them
        s = read_series(csv, "t", ["y"])
    assert s.step.unit == unit and s.step.season == season
    assert [stamp_text(t) for t in s.stamps(len(s) - 1 + np.arange(1, 3))] == future


def test_numeric_time_and_its_errors(tmp_path):
    s = read_series(write_csv(tmp_path / "n.csv", "t,y", ["0.5,1", "1.0,2", "1.5,3", "2.0,4"]), "t", ["y"])
    assert s.step == TimeStep("numeric", 0.5) and s.step.season is None
    assert stamp_text(s.stamps([5])[0]) == "3"
    ymd = write_csv(tmp_path / "ymd.csv", "t,y", ["19580329,1", "19580405,2", "19580412,3", "19580419,4"])
    with pytest.raises(DataError, match=r"not a whole number of steps.*YYYYMMDD.*ISO dates"):
        read_series(ymd, "t", ["y"])
    bad = write_csv(tmp_path / "bad.csv", "t,y", ["2024-01-01,1", "soon,2"])
    with pytest.raises(DataError, match=r"column 't' \(data.time\) holds 'soon' on line 3"):
        read_series(bad, "t", ["y"])
    text = write_csv(tmp_path / "text.csv", "t,y", ["2024-01-01,1", "2024-01-02,high"])
    with pytest.raises(DataError, match=r"column 'y' \(data.target\) holds 'high' on line 3"):
        read_series(text, "t", ["y"])
    with pytest.raises(DataError, match=r"no column 'when' \(data.time\)"):
        read_series(text, "when", ["y"])
    assert infer_step(np.array([0.0, 2.0, 4.0, 10.0]), False, "x").size == 2.0  # gaps do not change the step


def test_config_keys_for_series():
    with pytest.raises(ConfigError, match=r"data.target: a list of columns .* set data.time"):
        load_config({"data": {"path": "t.csv", "target": ["a", "b"]}})
    with pytest.raises(ConfigError, match=r"data.lookback is for forecasting"):
        load_config({"data": {"path": "t.csv", "target": "a", "lookback": 5}})
    with pytest.raises(ConfigError, match=r"data.cv: a forecasting run splits by time"):
        load_config({"data": {"path": "t.csv", "target": "a", "time": "t", "cv": 3}})
    cfg = load_config({"data": {"path": "t.csv", "target": ["a", "b"], "time": "t"}})
    assert cfg.model.name == "lstm" and cfg.data.horizon == 1  # a series' default model reads its windows


# ----------------------------------------------------------------------------- baselines


def test_baselines_equal_a_hand_computation():
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (60, 2))
    origins = window_origins(30, 60, 4, 3)
    lv = last_value(values, origins, 3, 2)
    sn = seasonal_naive(values, origins, 3, 2, season=2)
    for w, t in enumerate(origins):
        np.testing.assert_array_equal(lv[w], np.tile(values[t - 1], 3))
        # y[t + h - season * k], k the smallest that lands before t: h=0 -> t-2, h=1 -> t-1, h=2 -> t-2
        np.testing.assert_array_equal(sn[w], np.concatenate([values[t - 2], values[t - 1], values[t - 2]]))
    long = seasonal_naive(values[:, :1], origins, 3, 1, season=12)  # lookback 4 < season: from before the window
    np.testing.assert_array_equal(long[:, 0], values[origins - 12, 0])
    with pytest.raises(DataError, match="before the series starts"):
        seasonal_naive(values, np.array([5]), 1, 1, season=12)


def test_change_from_last_adds_back_the_last_value():
    import torch
    from torch import nn

    class Echo(nn.Module):  # forecasts the relative input's last value (0): the forecast is the last value
        def forward(self, x):
            return x[:, -1, :2].repeat(1, 3)

    wrapped = ChangeFromLast(Echo(), targets=2, horizon=3, gain=[2.0, 4.0])
    x = torch.randn(5, 6, 3)
    out = wrapped(x)
    torch.testing.assert_close(out, x[:, -1, :2].repeat(1, 3))
    seen = {}
    Echo.forward = lambda self, z: (seen.setdefault("z", z), z[:, -1, :2].repeat(1, 3))[1]
    wrapped(x)
    torch.testing.assert_close(seen["z"][:, :, 0], (x[:, :, 0] - x[:, -1:, 0]) * 2.0)
    torch.testing.assert_close(seen["z"][:, :, 2], x[:, :, 2])  # extra inputs pass unchanged


# ----------------------------------------------------------------------------- co2


def test_co2_from_a_local_copy_and_the_error_without_one(tmp_path, monkeypatch):
    weeks = np.datetime64("1958-03-29") + 7 * np.arange(300)
    rows = [f"{str(d).replace('-', '')},{'' if i == 5 else 315 + i / 50}" for i, d in enumerate(weeks)]
    write_csv(tmp_path / "co2.csv", "date,co2", rows)
    with pytest.warns(UserWarning, match=r"missing values in 'co2' \(1\)"):
        s = load_dataset("co2", root=tmp_path)
    assert len(s) == 300 and s.step.unit == "week" and s.targets == ["co2"] and not s.observed[5]
    assert "co2" in {row["name"] for row in list_datasets()}
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps statsmodels.*data.root"):
        co2_file(tmp_path / "nowhere")
    cfg = load_config({"data": {"dataset": "co2", "root": str(tmp_path), "horizon": 4, "lookback": 8,
                                "val_fraction": 0.2, "test_fraction": 0.2}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_data(cfg)
    assert data.info["input"]["time_step_text"] == "weekly" and data.info["input"]["season"] == 52
    assert data.info["input"]["origin"].startswith("1958-03-29")
