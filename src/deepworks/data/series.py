"""Time series: a table with a time column, read into a regular grid, split by time, cut into windows.

>>> s = read_series("sales.csv", time="week", targets=["sales"])       # doctest: +SKIP
>>> s.step.unit, s.step.season                                          # doctest: +SKIP
('week', 52)
>>> periods = split_periods(len(s), 0.15, 0.15, lookback=52, horizon=4)  # doctest: +SKIP

:func:`read_series` parses the time column (ISO dates and times, or numbers), sorts the rows
by it, infers the time step (hourly, daily, weekly, monthly, quarterly, yearly, another fixed
duration, or a numeric step) and places every row on that grid. Problems are reported, in
``Series.report`` (kept in ``data.json``) and as a warning:

- duplicate time stamps: the last row in the file wins (a later row corrects an earlier one);
- missing time steps: inserted, their values missing;
- missing values (empty cells and inserted steps): forward filled, from past values only, so
  nothing leaks from the future; leading steps before every column has a value are dropped.

A forecast is scored only against values that were observed: a window whose target steps
include a filled value is left out (its inputs may hold filled values, as they would when
forecasting).

:func:`split_periods` cuts the steps into training, validation and test periods, in that
order; :func:`window_origins` lists the windows that lie inside one period (inputs and
targets alike), and :func:`make_windows` gathers them: ``x`` (W, lookback, columns) and ``y``
(W, horizon * targets), step-major (all targets of step 1, then step 2, ...).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepworks.data.datasets import DATASETS, co2_file
from deepworks.data.features import is_missing
from deepworks.data.tabular import check_column, is_frame, read_table
from deepworks.errors import ConfigError, DataError

__all__ = [
    "SEASONS", "TimeStep", "Series", "read_series", "series_from_columns", "infer_step", "split_periods",
    "window_origins", "make_windows", "fit_scaling", "last_value", "seasonal_naive",
    "DEFAULT_LOOKBACK",
]

# season length of each time step: a year of weeks, months, quarters; a week of days; a day of hours
SEASONS = {"week": 52, "month": 12, "quarter": 4, "day": 7, "hour": 24}
# the lookback of a series whose step has no season and no data.season
DEFAULT_LOOKBACK = 24
_SHOWN = 5  # stamps listed per problem in data.json and the warning
_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
_MONTHS = {"month": 1, "quarter": 3, "year": 12}


# ----------------------------------------------------------------------------- time steps


@dataclass(frozen=True)
class TimeStep:
    """The spacing of a series: ``unit`` week/day/hour (or ``seconds`` for another fixed
    duration), month/quarter/year (calendar months), or ``numeric`` (a number ``size``)."""

    unit: str  # hour, day, week, seconds, month, quarter, year, numeric
    size: float  # seconds (fixed durations), months (calendar units) or the numeric step
    anchor: str = ""  # calendar units: "start" (day 1), "end" (last day) or "day" (the origin's day)

    @property
    def is_datetime(self) -> bool:
        return self.unit != "numeric"

    @property
    def season(self) -> int | None:
        return SEASONS.get(self.unit)

    def describe(self) -> str:
        if self.unit == "numeric":
            return f"a numeric step of {self.size:g}"
        if self.unit == "seconds":
            return f"a fixed step of {self.size:g} seconds"
        return {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly", "quarter": "quarterly",
                "year": "yearly"}[self.unit]

    def positions(self, stamps: Any, origin: Any) -> np.ndarray:
        """Float steps of ``stamps`` after ``origin`` (whole numbers on the grid)."""
        if self.unit == "numeric":
            return (np.asarray(stamps, dtype=np.float64) - float(origin)) / self.size
        t = np.asarray(stamps, dtype="datetime64[ns]")
        o = np.datetime64(origin, "ns")
        if self.unit in _MONTHS:
            months = _month_number(t) - _month_number(np.array([o]))[0]
            return months / self.size
        return (t - o).astype("timedelta64[ns]").astype(np.float64) / (self.size * 1e9)

    def at(self, origin: Any, positions: Any) -> np.ndarray:
        """The stamps of integer ``positions`` after ``origin`` (float64 or datetime64[ns])."""
        k = np.asarray(positions, dtype=np.int64)
        if self.unit == "numeric":
            return float(origin) + k * self.size
        o = np.datetime64(origin, "ns")
        if self.unit not in _MONTHS:
            return o + (k * int(round(self.size * 1e9))).astype("timedelta64[ns]")
        import pandas as pd

        start = pd.Timestamp(o)
        months = start.year * 12 + (start.month - 1) + k * int(self.size)
        years, month = months // 12, months % 12 + 1
        firsts = pd.to_datetime({"year": years, "month": month, "day": np.ones_like(k)})
        if self.anchor == "start":
            days = pd.DatetimeIndex(firsts)
        else:
            lengths = pd.DatetimeIndex(firsts).days_in_month.to_numpy()
            day = lengths if self.anchor == "end" else np.minimum(start.day, lengths)
            days = pd.DatetimeIndex(firsts) + pd.to_timedelta(day - 1, unit="D")
        clock = start - start.normalize()  # the time of day of the origin
        return (days + clock).to_numpy(dtype="datetime64[ns]")

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "size": self.size, "anchor": self.anchor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimeStep:
        return cls(str(d["unit"]), float(d["size"]), str(d.get("anchor", "")))


def _month_number(t: np.ndarray) -> np.ndarray:
    months = t.astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    return months.astype(np.float64)


def infer_step(stamps: Any, is_datetime: bool, where: str) -> TimeStep:
    """The step of sorted, distinct ``stamps``: the most common spacing, named when it is a
    calendar unit. Gaps (missing steps) do not change it."""
    if len(stamps) < 2:
        raise DataError(f"{where}: one time stamp only; a series needs at least two to have a time step.")
    if not is_datetime:
        values = np.asarray(stamps, dtype=np.float64)
        diffs = np.diff(values)
        return TimeStep("numeric", float(_mode(diffs)))
    t = np.asarray(stamps, dtype="datetime64[ns]")
    seconds = np.diff(t).astype("timedelta64[ns]").astype(np.float64) / 1e9
    common = float(_mode(seconds))
    for unit, size in _SECONDS.items():
        if common == size:
            return TimeStep(unit, float(size))
    day = 86400.0
    for unit, months, low, high in (("month", 1, 28, 31), ("quarter", 3, 89, 92), ("year", 12, 365, 366)):
        if low * day <= common <= high * day:
            import pandas as pd

            index = pd.DatetimeIndex(t)
            if bool(np.all(index.day == 1)):
                anchor = "start"
            elif bool(np.all(index.is_month_end)):
                anchor = "end"
            else:
                anchor = "day"
            return TimeStep(unit, float(months), anchor)
    return TimeStep("seconds", common)


def _mode(diffs: np.ndarray) -> float:
    """The most common spacing (the smallest among equals): robust to gaps of missing steps."""
    values, counts = np.unique(np.round(diffs, 9), return_counts=True)
    return float(values[np.argmax(counts)])


# ----------------------------------------------------------------------------- reading


@dataclass
class Series:
    """A series on a regular grid: ``values`` (N, columns) float64, targets first then the extra
    inputs, forward filled; ``observed`` (N,) is True where every target was in the file."""

    where: str
    time_name: str
    targets: list[str]
    inputs: list[str]
    step: TimeStep
    origin: Any  # the first stamp: float, or numpy datetime64[ns]
    values: np.ndarray
    observed: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def columns(self) -> list[str]:
        return [*self.targets, *self.inputs]

    def stamps(self, positions: Any = None) -> np.ndarray:
        positions = np.arange(len(self)) if positions is None else positions
        return self.step.at(self.origin, positions)


def stamp_text(value: Any) -> str:
    """A stamp as text: ISO date (with the time when it is not midnight) or a number."""
    if isinstance(value, (float, int, np.floating, np.integer)):
        return f"{float(value):g}"
    text = str(np.datetime_as_string(np.datetime64(value, "s"), unit="s"))
    return text[:10] if text.endswith("T00:00:00") else text


def _parse_time(cells: list[str], lines: list[int], name: str, where: str) -> tuple[np.ndarray, bool]:
    """(stamps, is_datetime): numbers, else ISO (or other unambiguous) dates and times."""
    gaps = [lines[i] for i, c in enumerate(cells) if is_missing(c)]
    if gaps:
        raise DataError(
            f"{where}: column {name!r} (data.time) is empty on {len(gaps)} line(s), first line {gaps[0]}. "
            "Fix: give every row its time stamp, or remove the rows."
        )
    try:
        values = np.array([float(c) for c in cells])
    except ValueError:
        values = None
    if values is not None:
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataError(f"{where}: column {name!r} (data.time) holds {cells[bad[0]]!r} on line {lines[bad[0]]}.")
        return values, False
    import pandas as pd

    for fmt in ("ISO8601", "mixed"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(pd.Series(cells, dtype=object), format=fmt)
            break
        except (ValueError, TypeError, OverflowError):
            continue
    else:
        bad = next((i for i, c in enumerate(cells) if _unparsable(c)), 0)
        raise DataError(
            f"{where}: column {name!r} (data.time) holds {cells[bad]!r} on line {lines[bad]}, neither a number nor "
            "a date. Fix: write times as ISO dates (2024-03-31, 2024-03-31T14:00) or as numbers."
        )
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]"), True


def _unparsable(cell: str) -> bool:
    import pandas as pd

    try:
        pd.to_datetime(cell, format="mixed")
        return False
    except (ValueError, TypeError, OverflowError):
        return True


def _numbers(cells: list[str], lines: list[int], name: str, key: str, where: str) -> np.ndarray:
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if is_missing(cell):
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            out[i] = math.nan
        if not math.isfinite(out[i]):
            raise DataError(
                f"{where}: column {name!r} ({key}) holds {cell!r} on line {lines[i]}; a series needs numbers "
                "(empty cells are missing values, forward filled). Fix: correct the cell, or leave it empty."
            )
    return out


def read_series(
    source: Any, time: str, targets: list[str], inputs: list[str] | None = None, where: str | None = None
) -> Series:
    """Read a CSV (or Parquet) file, or a pandas DataFrame, into a :class:`Series`: the ``time``
    column, the ``targets`` to forecast and the extra ``inputs`` (default: none). A frame's cells
    are read as text, as a file's are, so it gives the series the same rows in a file give."""
    path = Path("DataFrame") if is_frame(source) else Path(source).expanduser()
    header, rows, lines = read_table(source if is_frame(source) else path)
    where = where or str(path)
    check_column(path, header, time, "data.time")
    for name in targets:
        check_column(path, header, name, "data.target")
    for name in inputs or []:
        check_column(path, header, name, "data.features")
    columns = {name: [row[header.index(name)] for row in rows] for name in header}
    return series_from_columns(columns, lines, time, targets, inputs or [], where)


def series_from_columns(
    columns: dict[str, list[str]], lines: list[int], time: str, targets: list[str], inputs: list[str], where: str,
    step: TimeStep | None = None,
) -> Series:
    """A :class:`Series` from text cells by column (``lines``: each row's line in the file).
    ``step`` forces the time step (``predict``: the run's step), else it is inferred."""
    if not targets:
        raise ConfigError("data.target: name the column(s) to forecast, e.g. data.target: sales.")
    for key, names in (("data.target", targets), ("data.features", inputs)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{key}: {', '.join(map(repr, repeated))} listed more than once.")
    both = [n for n in inputs if n in targets]
    if time in targets or time in inputs or both:
        clash = time if time in (*targets, *inputs) else both[0]
        raise ConfigError(
            f"data.time, data.target and data.features must name different columns; {clash!r} is in two of them."
        )
    names = [*targets, *inputs]
    stamps, is_datetime = _parse_time(columns[time], lines, time, where)
    values = np.stack(
        [_numbers(columns[n], lines, n, "data.target" if n in targets else "data.features", where) for n in names],
        axis=1,
    )
    report: dict[str, Any] = {}
    # sort by time (stable: equal stamps keep the file's order), then the last of equal stamps wins
    order = np.argsort(stamps, kind="stable")
    report["sorted"] = bool(np.all(order == np.arange(len(order))))
    stamps, values, lines = stamps[order], values[order], [lines[i] for i in order]
    last = np.ones(len(stamps), dtype=bool)
    last[:-1] = stamps[1:] != stamps[:-1]
    duplicated = np.unique(stamps[~last])
    report["duplicates"] = {
        "count": int((~last).sum()),
        "first": [stamp_text(s) for s in duplicated[:_SHOWN]],
        "policy": "the last row of each time stamp is kept",
    }
    stamps, values, lines = stamps[last], values[last], [ln for ln, keep in zip(lines, last) if keep]
    if step is None:
        step = infer_step(stamps, is_datetime, f"{where}: column {time!r} (data.time)")
    elif step.is_datetime != is_datetime:
        raise DataError(
            f"{where}: column {time!r} (data.time) holds {'dates' if is_datetime else 'numbers'}, but the run was "
            f"trained on {'dates' if step.is_datetime else 'numbers'}."
        )
    origin = stamps[0]
    pos = step.positions(stamps, origin)
    off = np.flatnonzero(np.abs(pos - np.round(pos)) > 1e-6)
    if len(off):
        i = int(off[0])
        hint = (" Dates written as numbers (YYYYMMDD) are not on a numeric grid: write them as ISO dates "
                "(1958-03-29)." if not is_datetime else "")
        raise DataError(
            f"{where}: column {time!r} (data.time): the time step is {step.describe()}, but line {lines[i]} "
            f"({stamp_text(stamps[i])}) is not a whole number of steps after the first stamp ({stamp_text(origin)})."
            f"{hint} Fix: give the series one regular time step."
        )
    pos = np.round(pos).astype(np.int64)
    n = int(pos[-1]) + 1
    if n - len(pos) > len(pos):
        raise DataError(
            f"{where}: column {time!r} (data.time): with {step.describe()} the {len(pos)} rows span {n} steps, so "
            f"{n - len(pos)} steps would be missing: the series is too irregular for one time step. Fix: "
            "aggregate it to a regular step (e.g. daily means) first."
        )
    grid = np.full((n, values.shape[1]), np.nan)
    grid[pos] = values
    missing_steps = np.setdiff1d(np.arange(n), pos)
    report["missing_steps"] = {
        "count": int(len(missing_steps)),
        "first": [stamp_text(s) for s in step.at(origin, missing_steps[:_SHOWN])],
    }
    missing_cells = {name: int(np.isnan(values[:, j]).sum()) for j, name in enumerate(names)}
    report["missing_values"] = {name: c for name, c in missing_cells.items() if c}
    # nothing can be filled before each column's first value: start there
    present = ~np.isnan(grid)
    first = max(int(np.argmax(present[:, j])) if present[:, j].any() else n for j in range(grid.shape[1]))
    if first >= n:
        empty = [name for j, name in enumerate(names) if not present[:, j].any()]
        raise DataError(f"{where}: column(s) {', '.join(map(repr, empty))} hold no value at all.")
    report["dropped_leading_steps"] = first
    filled = _forward_fill(grid)[first:]  # fill first: a column's value before `first` carries over
    present = present[first:]
    origin = step.at(origin, [first])[0]
    observed = present[:, : len(targets)].all(axis=1)
    report["filled_values"] = int((~present).sum())
    report["filled"] = "forward fill: each missing value takes the last earlier value of its column"
    report["steps"] = len(filled)
    report["time_step"] = step.describe()
    problems = []
    if report["duplicates"]["count"]:
        problems.append(f"{report['duplicates']['count']} duplicate time stamp(s) (the last row of each is kept; first "
                        f"{', '.join(report['duplicates']['first'])})")
    if len(missing_steps):
        problems.append(f"{len(missing_steps)} missing time step(s) ({step.describe()}; first "
                        f"{', '.join(report['missing_steps']['first'])})")
    if report["missing_values"]:
        problems.append("missing values in " + ", ".join(f"{k!r} ({v})" for k, v in report["missing_values"].items()))
    if first:
        problems.append(f"the first {first} step(s) dropped (before every column has a value)")
    if problems:
        warnings.warn(
            f"{where}: " + "; ".join(problems) + ". Missing values are forward filled from past values only; windows "
            "whose targets include a filled value are not used for training or scoring. Details: data.json -> "
            "input -> report.",
            stacklevel=3,
        )
    return Series(where, time, list(targets), list(inputs), step, origin, filled, observed, report)


def _forward_fill(grid: np.ndarray) -> np.ndarray:
    """Each NaN takes the last earlier value of its column (NaN before the column's first value)."""
    n = len(grid)
    index = np.where(~np.isnan(grid), np.arange(n)[:, None], 0)
    np.maximum.accumulate(index, axis=0, out=index)
    return grid[index, np.arange(grid.shape[1])[None, :]]


# ----------------------------------------------------------------------------- periods and windows


def split_periods(
    n: int, val_fraction: float, test_fraction: float, lookback: int, horizon: int, where: str = "series"
) -> dict[str, tuple[int, int]]:
    """``{"train": (0, a), "val": (a, b), "test": (b, n)}``: consecutive periods, the last
    ``test_fraction`` of the steps for test and the ``val_fraction`` before them for validation.
    Each period must hold at least one window of ``lookback + horizon`` steps."""
    need = lookback + horizon
    if n < need:
        raise DataError(
            f"{where}: the series has {n} steps, shorter than one window: data.lookback ({lookback}) + "
            f"data.horizon ({horizon}) = {need}. Fix: lower data.lookback or data.horizon, or give a longer series."
        )
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    periods = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
    for name, key in (("test", "data.test_fraction"), ("val", "data.val_fraction"), ("train", None)):
        start, stop = periods[name]
        if stop - start < need:
            fix = (f"raise {key} (now {test_fraction if name == 'test' else val_fraction}), " if key else
                   "lower data.val_fraction and data.test_fraction, ")
            raise DataError(
                f"{where}: the {name} period has {stop - start} of the {n} steps, too short for one window of "
                f"data.lookback ({lookback}) + data.horizon ({horizon}) = {need} steps. Fix: {fix}lower "
                "data.lookback or data.horizon, or give a longer series."
            )
    return periods


def window_origins(start: int, stop: int, lookback: int, horizon: int, observed: np.ndarray | None = None) -> np.ndarray:
    """The first target step ``t`` of every window inside ``[start, stop)``: inputs
    ``t - lookback .. t - 1`` and targets ``t .. t + horizon - 1``; with ``observed``, only
    windows whose target steps were all observed."""
    origins = np.arange(start + lookback, stop - horizon + 1, dtype=np.int64)
    if observed is not None and len(origins):
        steps = origins[:, None] + np.arange(horizon)[None, :]
        origins = origins[observed[steps].all(axis=1)]
    return origins


def make_windows(values: np.ndarray, origins: np.ndarray, lookback: int, horizon: int, targets: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (W, lookback, columns) and ``y`` (W, horizon * targets), step-major."""
    x = values[origins[:, None] + np.arange(-lookback, 0)[None, :]]  # (W, L, C)
    y = values[origins[:, None] + np.arange(horizon)[None, :], :targets]  # (W, H, T)
    return x, y.reshape(len(origins), horizon * targets)


def fit_scaling(values: np.ndarray, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column mean, std and one-step-change std of the training period ``values[:stop]``
    (population std; a constant column gets 1)."""
    train = values[:stop]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    change = np.diff(train, axis=0).std(axis=0) if len(train) > 1 else np.zeros(train.shape[1])
    change = np.where(change > 0, change, std)
    return mean, std, change


# ----------------------------------------------------------------------------- baselines


def last_value(values: np.ndarray, origins: np.ndarray, horizon: int, targets: int) -> np.ndarray:
    """The last observed value (step ``t - 1``) repeated over the horizon: (W, horizon * targets)."""
    return np.tile(values[origins - 1, :targets], (1, horizon))


def seasonal_naive(values: np.ndarray, origins: np.ndarray, horizon: int, targets: int, season: int) -> np.ndarray:
    """The value one season before each target step, ``y[t + h - season * k]`` with the
    smallest k that lands before ``t`` (k = h // season + 1 for h = 0, 1, ...): (W, horizon * targets).
    It may come from before the window (when lookback < season): the past, known at forecast time."""
    steps = np.arange(horizon)
    back = (steps // season + 1) * season
    index = origins[:, None] + steps[None, :] - back[None, :]  # (W, H)
    if len(index) and int(index.min()) < 0:
        raise DataError(f"seasonal_naive: a window needs a value {-int(index.min())} step(s) before the series starts.")
    return values[index, :targets].reshape(len(origins), horizon * targets)


# ----------------------------------------------------------------------------- the co2 dataset


@DATASETS.register(
    "co2", description="weekly atmospheric CO2 at Mauna Loa (ppm), 1958-2001, 2,284 weeks, some missing (statsmodels)"
)
def _load_co2(*, root: str | Path | None = None, **_: Any) -> Any:
    """The series (:class:`~deepworks.data.series.Series`): time ``date``, target ``co2``."""
    path = co2_file(root)
    header, rows, lines = read_table(path)
    for name in ("date", "co2"):
        check_column(path, header, name, "co2 file")
    dates = [row[header.index("date")] for row in rows]
    bad = next((i for i, d in enumerate(dates) if not (len(d) == 8 and d.isdigit())), None)
    if bad is not None:
        raise DataError(f"{path}: line {lines[bad]}: expected a date as YYYYMMDD in column 'date', got {dates[bad]!r}.")
    columns = {"date": [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates], "co2": [row[header.index("co2")] for row in rows]}
    return series_from_columns(columns, lines, "date", ["co2"], [], f"co2 ({path})")
