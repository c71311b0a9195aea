"""Table columns to model inputs: kinds, imputation, scaling, one-hot and ordinal codes.

A :class:`TableEncoder` is fitted on the training split's raw cells only and then applied,
unchanged, to validation, test and every later ``predict`` (and serving/export): that is
what keeps the figures honest. It is stored in the run directory as plain JSON
(``data.json`` -> ``encoder``), so loading it runs no code.

Each input column becomes a group of model features:

=========== ================================================ =======================================
kind        detected when (on the training split)            becomes
=========== ================================================ =======================================
numeric     every present cell is a number                    the value, scaled
categorical anything else (strings, booleans)                 one-hot over the training categories
                                                              plus an ``other`` slot for categories
                                                              never seen in training
ordinal     declared: ``{kind: ordinal, order: [...]}``       the position in ``order``, scaled
datetime    every present cell is an ISO date/time            year, month, day, day of week (and
            (other formats: declare ``kind: datetime``)       hour, minute when times vary), scaled
id          unique per row (strings, or consecutive           dropped, with a warning
            integers); or declared
ignore      declared                                          dropped
=========== ================================================ =======================================

Missing cells (empty, ``NA``, ``nan``, ``?``, ...) are imputed with the training median
(numeric, ordinal, datetime parts) or the most frequent training category, and a
``<column>=missing`` indicator feature is added for every column that had missing cells in
training. Scaling is ``standard`` (z-score with training mean and population std, as
scikit-learn's ``StandardScaler``), ``minmax`` (to [0, 1] on the training range) or ``none``.

>>> enc = TableEncoder.fit({"size": ["1", "3", ""], "colour": ["red", "blue", "red"]})
>>> enc.feature_names
['size', 'size=missing', 'colour=blue', 'colour=red', 'colour=other']
>>> enc.transform({"size": ["2"], "colour": ["green"]}).tolist()
[[0.0, 0.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepworks.errors import DataError

__all__ = ["TableEncoder", "KINDS", "MISSING_VALUES", "is_missing", "detect_kind", "parse_numbers"]

KINDS = ("numeric", "categorical", "ordinal", "datetime", "id", "ignore")
SCALINGS = ("standard", "minmax", "none")
# cell values (after stripping, lower-cased) that mean "no value"
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
_DATE_PARTS = ("year", "month", "day", "dayofweek")
_TIME_PARTS = ("hour", "minute")


def is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_VALUES


def parse_numbers(cells: Sequence[str]) -> np.ndarray | None:
    """Float64 values of ``cells`` (NaN where missing), or None if a present cell is not a number."""
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if is_missing(cell):
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            return None
    return out


def _parse_datetimes(cells: Sequence[str], strict_iso: bool) -> Any:
    """A pandas DatetimeIndex (NaT where missing), or None if a present cell does not parse."""
    import pandas as pd

    present = [c for c in cells if not is_missing(c)]
    if not present:
        return None
    if strict_iso and not all(len(c) >= 8 and c[:4].isdigit() and c[4] in "-/" for c in present):
        return None  # only ISO-looking text is taken for a date without being told
    values = [None if is_missing(c) else c for c in cells]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601" if strict_iso else "mixed")
    except (ValueError, TypeError, OverflowError):
        return None
    return pd.DatetimeIndex(parsed)


def detect_kind(cells: Sequence[str]) -> str:
    """The kind of a column from its (training) cells: numeric, datetime, id or categorical."""
    present = [c for c in cells if not is_missing(c)]
    numbers = parse_numbers(cells)
    if numbers is not None:
        values = numbers[~np.isnan(numbers)]
        # a row number: distinct consecutive integers
        if len(values) > 10 and len(values) == len(cells) and np.all(values == np.round(values)):
            ordered = np.sort(values)
            if len(np.unique(values)) == len(values) and np.all(np.diff(ordered) == 1):
                return "id"
        return "numeric"
    if _parse_datetimes(cells, strict_iso=True) is not None:
        return "datetime"
    if len(present) > 10 and len(present) == len(cells) and len(set(present)) == len(present):
        return "id"
    return "categorical"


def _scale_params(values: np.ndarray, scaling: str) -> tuple[float, float]:
    """(shift, divisor) so that (v - shift) / divisor is the scaled value."""
    if scaling == "standard":
        mean = float(values.mean())
        std = float(values.std())
        # a constant feature is centred, not blown up (StandardScaler's rule)
        return mean, std if std > 10 * np.finfo(np.float64).eps * max(abs(mean), 1.0) else 1.0
    if scaling == "minmax":
        low, high = float(values.min()), float(values.max())
        return low, (high - low) if high > low else 1.0
    return 0.0, 1.0


class TableEncoder:
    """Fitted per-column encoders; ``transform`` maps raw cells to a float32 (N, F) matrix.

    Built by :meth:`fit` (training cells) or :meth:`from_dict` (a stored run);
    ``feature_names`` names the F features and ``groups`` maps each input column to the
    positions of its features (a one-hot block with its missing indicator, say).
    """

    def __init__(self, columns: list[dict[str, Any]], scaling: str = "standard"):
        self.columns = columns
        self.scaling = scaling
        self.feature_names: list[str] = []
        self.groups: dict[str, list[int]] = {}
        for spec in columns:
            names = _feature_names(spec)
            self.groups[spec["name"]] = list(range(len(self.feature_names), len(self.feature_names) + len(names)))
            self.feature_names += names

    @property
    def inputs(self) -> list[str]:
        """The input columns the model uses (dropped id/ignore columns are not among them)."""
        return [spec["name"] for spec in self.columns]

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        columns: Mapping[str, Sequence[str]],
        declared: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        scaling: str = "standard",
        lines: Sequence[int] | None = None,
        where: str = "data",
    ) -> TableEncoder:
        """Learn each column's kind and parameters from training cells (raw strings).

        ``declared`` maps a column to ``{kind, order, scaling}`` (``data.columns``);
        ``lines`` gives each row's line in the file, for error messages.
        """
        if scaling not in SCALINGS:
            raise DataError(f"data.scaling: expected one of {', '.join(SCALINGS)}, got {scaling!r}.")
        declared = declared or {}
        specs: list[dict[str, Any]] = []
        for name, cells in columns.items():
            cells = list(cells)
            decl = dict(declared.get(name) or {})
            kind = decl.get("kind") or detect_kind(cells)
            col_scaling = decl.get("scaling") or scaling
            missing = np.fromiter((is_missing(c) for c in cells), dtype=bool, count=len(cells))
            if kind in ("id", "ignore"):
                if kind == "id" and "kind" not in decl:
                    warnings.warn(
                        f"{where}: column {name!r} is unique per row (an identifier?), so it is left out. "
                        f"Fix: declare data.columns.{name}.kind (numeric or categorical) to use it.",
                        stacklevel=2,
                    )
                continue
            if missing.all():
                raise DataError(
                    f"{where}: column {name!r} has no values in the training rows (every cell is missing). "
                    f"Fix: fill it in, or leave it out with data.features (or data.columns.{name}.kind: ignore)."
                )
            spec: dict[str, Any] = {"name": name, "kind": kind, "indicator": bool(missing.any())}
            if kind == "numeric":
                values = _numeric_cells(
                    cells, name, lines, where, "is declared numeric but holds {cell}{line}. "
                    "Fix: declare it categorical, or clean the column."
                )
                fill = float(np.median(values[~missing]))
                spec["fill"] = fill
                spec["shift"], spec["scale"] = _scale_params(np.where(missing, fill, values), col_scaling)
            elif kind == "categorical":
                counts = Counter(c for c, m in zip(cells, missing) if not m)
                spec["categories"] = sorted(counts)
                # most frequent; ties go to the first in sorted order
                spec["fill"] = min(counts, key=lambda c: (-counts[c], c))
            elif kind == "ordinal":
                order = [str(v) for v in decl.get("order") or []]
                if len(order) < 2:
                    raise DataError(
                        f"{where}: column {name!r} is ordinal but data.columns.{name}.order lists {len(order)} "
                        "value(s). Fix: list its values from lowest to highest, e.g. order: [low, medium, high]."
                    )
                codes = _ordinal_codes(cells, order, name, lines, where)
                fill = float(np.median(codes[~missing]))
                spec["order"], spec["fill"] = order, fill
                spec["shift"], spec["scale"] = _scale_params(np.where(missing, fill, codes), col_scaling)
            elif kind == "datetime":
                stamps = _parse_datetimes(cells, strict_iso="kind" not in decl)
                if stamps is None:
                    stamps = _parse_datetimes(cells, strict_iso=False)
                if stamps is None:
                    raise DataError(
                        f"{where}: column {name!r} is declared datetime but not every value is a date or time. "
                        "Fix: use ISO dates (2024-03-01 or 2024-03-01 14:30), or declare the column categorical."
                    )
                parts = _date_parts(stamps)
                names = list(_DATE_PARTS)
                if any(np.nanmax(np.abs(parts[p])) > 0 for p in _TIME_PARTS):
                    names += list(_TIME_PARTS)
                spec["parts"], spec["fill"], spec["shift"], spec["scale"] = names, [], [], []
                for part in names:
                    values = parts[part]
                    fill = float(np.nanmedian(values))
                    shift, scale = _scale_params(np.where(np.isnan(values), fill, values), col_scaling)
                    spec["fill"].append(fill)
                    spec["shift"].append(shift)
                    spec["scale"].append(scale)
            else:
                raise DataError(
                    f"{where}: data.columns.{name}.kind: expected one of {', '.join(KINDS)}, got {kind!r}."
                )
            specs.append(spec)
        if not specs:
            raise DataError(
                f"{where}: no usable feature columns (every column is an identifier, ignored or missing). "
                "Fix: add feature columns, or declare their kinds in data.columns."
            )
        return cls(specs, scaling)

    # ------------------------------------------------------------------ transform

    def transform(
        self, columns: Mapping[str, Sequence[str]], *, lines: Sequence[int] | None = None, where: str = "data"
    ) -> np.ndarray:
        """Raw cells of the input columns (other columns are ignored) -> float32 (N, F)."""
        absent = [spec["name"] for spec in self.columns if spec["name"] not in columns]
        if absent:
            raise DataError(
                f"{where}: the model was trained on column(s) {', '.join(map(repr, absent))}, which are missing here. "
                f"Fix: give every row the columns {', '.join(map(repr, self.inputs))}."
            )
        n = len(next(iter(columns.values()))) if columns else 0
        parts: list[np.ndarray] = []
        for spec in self.columns:
            cells = list(columns[spec["name"]])
            missing = np.fromiter((is_missing(c) for c in cells), dtype=bool, count=n)
            kind = spec["kind"]
            if kind == "numeric":
                values = _numeric_cells(
                    cells, spec["name"], lines, where, "holds {cell}{line}, but the model was trained on numbers "
                    "there. Fix: give a number (or leave the cell empty)."
                )
                block = ((np.where(missing, spec["fill"], values) - spec["shift"]) / spec["scale"])[:, None]
            elif kind == "categorical":
                cats = spec["categories"]
                index = {c: i for i, c in enumerate(cats)}
                block = np.zeros((n, len(cats) + 1))
                for i, cell in enumerate(cells):
                    # unseen categories go to the "other" slot (last)
                    block[i, index.get(spec["fill"] if missing[i] else cell, len(cats))] = 1.0
            elif kind == "ordinal":
                codes = _ordinal_codes(cells, spec["order"], spec["name"], lines, where)
                block = ((np.where(missing, spec["fill"], codes) - spec["shift"]) / spec["scale"])[:, None]
            else:  # datetime
                stamps = _parse_datetimes(cells, strict_iso=False) if not missing.all() else None
                stamp_parts = _date_parts(stamps) if stamps is not None else {}
                if stamps is None and not missing.all():
                    raise DataError(
                        f"{where}: column {spec['name']!r} holds values that are not dates. Fix: use ISO dates "
                        "(2024-03-01)."
                    )
                cols = []
                for part, fill, shift, scale in zip(spec["parts"], spec["fill"], spec["shift"], spec["scale"]):
                    values = stamp_parts.get(part, np.full(n, np.nan))
                    cols.append((np.where(np.isnan(values), fill, values) - shift) / scale)
                block = np.stack(cols, axis=1)
            if spec["indicator"]:
                block = np.concatenate([block, missing[:, None].astype(np.float64)], axis=1)
            parts.append(block)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        return {"format": "deepworks-table-encoder-1", "scaling": self.scaling, "columns": self.columns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableEncoder:
        if data.get("format") != "deepworks-table-encoder-1":
            raise DataError(f"table encoder: unknown format {data.get('format')!r}; was data.json edited?")
        return cls([dict(c) for c in data["columns"]], data.get("scaling", "standard"))


# ----------------------------------------------------------------------------- helpers


def _feature_names(spec: Mapping[str, Any]) -> list[str]:
    name, kind = spec["name"], spec["kind"]
    if kind == "categorical":
        names = [f"{name}={c}" for c in spec["categories"]] + [f"{name}=other"]
    elif kind == "datetime":
        names = [f"{name}.{p}" for p in spec["parts"]]
    else:
        names = [name]
    return names + ([f"{name}=missing"] if spec["indicator"] else [])


def _line(lines: Sequence[int] | None, i: int) -> str:
    return f" on line {lines[i]}" if lines is not None else f" in row {i + 1}"


def _numeric_cells(
    cells: Sequence[str], name: str, lines: Sequence[int] | None, where: str, problem: str
) -> np.ndarray:
    """The cells as float64 (NaN where missing); a non-number or an infinity is a DataError.

    ``problem`` completes "column NAME ..." with ``{cell}`` and ``{line}`` placeholders."""
    values = parse_numbers(cells)
    if values is None:
        bad = _first_bad(cells, float)
        raise DataError(f"{where}: column {name!r} " + problem.format(cell=repr(cells[bad]), line=_line(lines, bad)))
    _check_finite(values, name, cells, lines, where)
    return values


def _first_bad(cells: Sequence[str], parse: Any) -> int:
    for i, cell in enumerate(cells):
        if is_missing(cell):
            continue
        try:
            parse(cell)
        except ValueError:
            return i
    return 0


def _check_finite(values: np.ndarray, name: str, cells: Sequence[str], lines: Sequence[int] | None, where: str) -> None:
    bad = np.isinf(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: column {name!r} holds an infinite value ({cells[i]!r}{_line(lines, i)}). "
            "Fix: replace it with a finite number or leave the cell empty."
        )
    if np.abs(np.nan_to_num(values)).max(initial=0.0) > np.finfo(np.float32).max:
        raise DataError(f"{where}: column {name!r} has values beyond float32's range (about 3.4e38). Fix: rescale it.")


def _ordinal_codes(
    cells: Sequence[str], order: Sequence[str], name: str, lines: Sequence[int] | None, where: str
) -> np.ndarray:
    index = {v: i for i, v in enumerate(order)}
    codes = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if is_missing(cell):
            continue
        if cell not in index:
            raise DataError(
                f"{where}: column {name!r} holds {cell!r}{_line(lines, i)}, which is not in its declared order "
                f"{list(order)}. Fix: add it to data.columns.{name}.order, or correct the cell."
            )
        codes[i] = index[cell]
    return codes


def _date_parts(stamps: Any) -> dict[str, np.ndarray]:
    """Year, month, day, day of week, hour, minute as float arrays (NaN where missing)."""
    out = {}
    for part in (*_DATE_PARTS, *_TIME_PARTS):
        values = getattr(stamps, "day_of_week" if part == "dayofweek" else part)
        out[part] = np.asarray(values, dtype=np.float64)
    return out
