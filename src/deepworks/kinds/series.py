"""Time series: a built-in series (co2) or a table with ``data.time`` (a file or a pandas
DataFrame), split into training, validation and test periods in time order, scaled with the
training period's statistics and cut into windows (lookback steps in, horizon steps out). A trained
run forecasts the steps after each CSV (or Parquet) file or DataFrame of history; the exported graph
takes the standardised windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config, is_table_path
from deepworks.data.loaders import TensorData
from deepworks.data.memory import given_frame
from deepworks.data.series import (
    DEFAULT_LOOKBACK, Series, TimeStep, fit_scaling, last_value, make_windows, read_series,
    seasonal_naive, series_from_columns, split_periods, stamp_text, window_origins,
)
from deepworks.data.tabular import check_column, is_frame, read_table
from deepworks.errors import ConfigError, DataError
from deepworks.evaluation.figures import figure_png, forecast_figure
from deepworks.models.series import ChangeFromLast
from deepworks.kinds.common import PreparedData, RunInputs, expand_paths
from deepworks.runs import atomic_write, default_output
from deepworks.training.tasks import Forecasting, Task


def wrap_model(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """``data.difference``: the model sees each window relative to its last value."""
    source = info.get("input") or {}
    if source.get("difference"):
        return ChangeFromLast(model, len(source["targets"]), int(source["horizon"]), source["gain"])
    return model


def load_series(config: Config) -> Series:
    """The config's series: a built-in one (co2) or a table with ``data.time`` (a file, or a
    pandas DataFrame given in Python)."""
    d = config.data
    targets = [d.target] if isinstance(d.target, str) else list(d.target or [])
    if d.time is None:  # a built-in series names its own columns
        from deepworks.data.datasets import DATASETS

        series = DATASETS.get(d.dataset, where="data.dataset")(root=d.root)
        extra = [t for t in targets if t not in series.targets]
        if extra or d.features:
            raise ConfigError(
                f"data.dataset: {d.dataset} is the series {', '.join(map(repr, series.targets))} by "
                f"{series.time_name!r}; remove data.target/data.features (or read your own file with data.path and "
                "data.time)."
            )
        return series
    frame = given_frame(d)  # a DataFrame given in Python (deepworks.train(source=...)), if one was
    if frame is None and (d.path is None or not is_table_path(d.path)):
        raise ConfigError(
            f"data.time ({d.time!r}): a forecasting run reads a table; set data.path to a .csv (or .parquet) file."
        )
    if not targets:
        raise ConfigError("data.target: name the column to forecast (or a list of columns), e.g. data.target: sales.")
    return read_series(d.path if frame is None else frame, d.time, targets, list(d.features or []))


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """A series: read -> training, validation and test periods in time order -> scaling fitted on
    the training period -> windows (W, lookback, columns) and targets (W, horizon * targets)
    inside each period, standardised."""
    d = config.data
    if fold is not None:
        raise ConfigError("data.cv: a forecasting run splits by time, not into shuffled folds; remove data.cv / --cv.")
    series = load_series(config)
    where, step = series.where, series.step
    season_from = "data.season" if d.season else ("time step" if step.season else None)
    season = d.season or step.season
    lookback = d.lookback or season or DEFAULT_LOOKBACK
    horizon, t, c = d.horizon, len(series.targets), len(series.columns)
    periods = split_periods(len(series), d.val_fraction, d.test_fraction, lookback, horizon, where)
    n_train = periods["train"][1]
    mean, std, change = fit_scaling(series.values, n_train)  # the training period only
    scaled = ((series.values - mean) / std).astype(np.float32)
    origins, parts, skipped = {}, {}, {}
    for name, (start, stop) in periods.items():
        origins[name] = window_origins(start, stop, lookback, horizon, series.observed)
        skipped[name] = len(window_origins(start, stop, lookback, horizon)) - len(origins[name])
        if not len(origins[name]):
            raise DataError(
                f"{where}: every window of the {name} period has a missing target value, so there is nothing to "
                f"{'train on' if name == 'train' else 'score'}. Fix: fill in the series, or change "
                "data.val_fraction/data.test_fraction."
            )
        x, y = make_windows(scaled, origins[name], lookback, horizon, t)
        parts[name] = TensorData(torch.from_numpy(x), torch.from_numpy(y))
    train_values = series.values[:n_train, :t][series.observed[:n_train]]
    percent = "smape" if bool((train_values == 0).any()) else "mape"  # MAPE divides by the actual value
    task = Forecasting(series.targets, mean[:t].tolist(), std[:t].tolist(), horizon=horizon, percent=percent)
    forecasts: dict[str, dict[str, np.ndarray]] = {}
    baselines_note = None
    for name in ("val", "test"):
        o = origins[name]
        forecasts[name] = {
            "origin": o,
            "actual": make_windows(series.values, o, lookback, horizon, t)[1],
            "last_value": last_value(series.values, o, horizon, t),
        }
        if season is not None:
            try:
                forecasts[name]["seasonal_naive"] = seasonal_naive(series.values, o, horizon, t, season)
            except DataError:
                baselines_note = (f"seasonal_naive left out: a season ({season} steps) before the first validation "
                                  "window lies before the series starts")
    if season is None:
        baselines_note = "seasonal_naive left out: the time step has no season; set data.season to have it"
    if baselines_note:
        for name in ("val", "test"):
            forecasts[name].pop("seasonal_naive", None)
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(origins[name]).tobytes())
    digest.update(np.ascontiguousarray(series.values).tobytes())
    is_dt = step.is_datetime
    origin = str(np.datetime64(series.origin, "ns")) if is_dt else float(series.origin)
    info = {
        "dataset": "table" if d.dataset in (None, "dataframe") else d.dataset,
        "source": where,
        "kind": "series",
        "target": series.targets[0] if t == 1 else series.targets,
        "classes": [],
        "input_shape": [lookback, c],
        "features": series.columns,
        "input": {
            "kind": "series",
            "time": series.time_name,
            "targets": series.targets,
            "inputs": series.inputs,
            "columns": series.columns,
            "lookback": lookback,
            "horizon": horizon,
            "season": season,
            "season_from": season_from,
            "time_step": step.to_dict(),
            "time_step_text": step.describe(),
            "origin": origin,
            "steps": len(series),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "change_std": change.tolist(),
            "difference": d.difference,
            "gain": (std[:t] / change[:t]).tolist(),
            "percent_error": percent,
            "periods": {
                name: {"steps": stop - start, "first": stamp_text(series.stamps([start])[0]),
                       "last": stamp_text(series.stamps([stop - 1])[0])}
                for name, (start, stop) in periods.items()
            },
            "windows_skipped": skipped,
            "baselines_note": baselines_note,
            "report": series.report,
        },
        "sizes": {name: len(parts[name]) for name in ("train", "val", "test")},
        "class_counts": None,
        "official_test": False,
        "split_fingerprint": digest.hexdigest(),
        "task": task.record(),
    }
    print(
        f"{where}: {len(series)} steps ({step.describe()}); windows of {lookback} steps -> {horizon} ahead; "
        f"periods train/val/test {', '.join(str(stop - start) for start, stop in periods.values())} steps, "
        f"{', '.join(str(len(parts[n])) for n in ('train', 'val', 'test'))} windows",
        flush=True,
    )
    return PreparedData(parts["train"], parts["val"], parts["test"], [], (lookback, c), info, task, forecasts)




class SeriesInputs(RunInputs):
    """A forecasting run's inputs: histories (CSV or Parquet files, or pandas DataFrames, with the
    time column and the training columns), each put on the run's time grid; the model reads its last ``lookback``
    steps, standardised with the training period's mean and std."""

    kind = "series"
    reads = "histories (CSV files with the time column and the training columns)"

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        self.src = info["input"]
        self.step = TimeStep.from_dict(self.src["time_step"])
        self.lookback, self.horizon = int(self.src["lookback"]), int(self.src["horizon"])
        self.mean, self.std = np.asarray(self.src["mean"]), np.asarray(self.src["std"])

    def history(self, source: Any) -> Series:
        """A file (or a pandas DataFrame) of history on the run's time grid, with at least
        ``lookback`` steps."""
        src = self.src
        needed = [src["time"], *src["columns"]]
        if is_frame(source):
            path = Path("DataFrame")
            if src["time"] not in map(str, source.columns) and src["time"] in map(str, source.index.names):
                raise DataError(f"DataFrame: the time {src['time']!r} is the index, not a column, and the index is not "
                                f"read. Fix: pass df.reset_index() (the index as a column {src['time']!r}).")
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"{path}: no such file. Fix: give a CSV file of history with the columns "
                                f"{', '.join(map(repr, needed))}.")
        header, rows, lines = read_table(source if is_frame(source) else path)
        for name, key in [(src["time"], "data.time"), *[(c, "training column") for c in src["columns"]]]:
            check_column(path, header, name, key, fix=f"give the history the columns {', '.join(map(repr, needed))}, "
                         "as in training")
        columns = {name: [row[header.index(name)] for row in rows] for name in needed}
        history = series_from_columns(columns, lines, src["time"], src["targets"], src["inputs"], str(path),
                                      step=self.step)
        if len(history) < self.lookback:
            raise DataError(
                f"{path}: the history has {len(history)} time steps; the model reads the last {self.lookback} "
                f"(data.lookback of the run). Fix: give at least {self.lookback} steps of history."
            )
        return history

    def window(self, history: Series) -> torch.Tensor:
        """The model's input: the last lookback steps, standardised, float32 (1, L, C)."""
        return torch.from_numpy(((history.values[-self.lookback:] - self.mean) / self.std).astype(np.float32))[None]

    def forecast(self, model: nn.Module, task: Task, inputs: Any, out: Path | None) -> list[dict[str, Any]]:
        """The next ``horizon`` values after each history (a file or a pandas DataFrame), with
        their time stamps; a PNG each (``out``: one input only, a ``.csv`` or ``.json`` file for the
        forecast, the PNG beside it; else ``runs/forecasts/<file stem>.png``, ``runs/forecasts/dataframe.png``)."""
        src = self.src
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        frames = [i for i, item in enumerate(items) if is_frame(item)]
        given: list[tuple[Any, dict[str, Any], str, str]] = []  # (history, where it came from, PNG stem, title)
        for i, item in enumerate(items):
            if is_frame(item):
                given.append((item, {"frame": i}, "dataframe" if len(frames) == 1 else f"dataframe-{i}", "DataFrame"))
            else:
                given += [(Path(p), {"file": p}, Path(p).stem, Path(p).name)
                          for p in expand_paths([item], None, "history files")]
        if out is not None and (len(given) != 1 or out.suffix.lower() not in (".csv", ".json")):
            raise ConfigError(
                f"predict --out {out}: give one history file and an --out ending in .csv or .json (the PNG goes beside it)."
            )
        results = []
        for source, origin, stem, title in given:
            history = self.history(source)
            with torch.no_grad():
                values = task.unscale(model(self.window(history)).float()).reshape(self.horizon, -1).numpy()  # (H, T)
            stamps = history.stamps(len(history) - 1 + np.arange(1, self.horizon + 1))
            forecast = [{src["time"]: stamp_text(s), **{n: float(v) for n, v in zip(src["targets"], row)}}
                        for s, row in zip(stamps, values)]
            png = out.with_suffix(".png") if out is not None else default_output("forecasts", f"{stem}.png")
            shown = min(len(history), max(4 * self.lookback, 8 * self.horizon))  # enough of the past to see the pattern
            figure = forecast_figure(
                history.stamps(np.arange(len(history) - shown, len(history))),
                history.values[-shown:, : len(src["targets"])], {"forecast": (stamps, values)}, src["targets"],
                title=f"{title}: the next {self.horizon} step(s)", actual_label="history",
            )
            png.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(png, figure_png(figure))
            result = {**origin, "last": stamp_text(history.stamps([len(history) - 1])[0]),
                      "forecast": forecast, "png": str(png)}
            if out is not None:
                if out.suffix.lower() == ".json":
                    atomic_write(out, json.dumps(forecast, indent=2) + "\n")
                else:
                    lines_out = [",".join([src["time"], *src["targets"]])]
                    lines_out += [",".join([row[src["time"]], *(repr(row[n]) for n in src["targets"])])
                                  for row in forecast]
                    atomic_write(out, "\n".join(lines_out) + "\n")
                result["out"] = str(out)
            results.append(result)
        return results

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        source = self.src
        return "series", model, "windows", {
            "meaning": f"windows of the last {source['lookback']} steps of the columns {source['columns']}, "
                       "each standardised with the training period's mean and std",
            "preprocessing": {
                "how": "put the history on the run's time grid (time_step, gaps filled from the past), take the last "
                       "lookback steps of columns, then (value - mean) / std per column; the output is standardised: "
                       "target value = output * task.std + task.mean, step-major (horizon x targets)",
                "input": source,
            },
        }
