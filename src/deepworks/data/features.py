"""Table columns to model inputs: kinds, imputation, scaling, one-hot and ordinal codes.

A :class:`TableEncoder` is fitted on the training split's rows only and then applied,
unchanged, to validation, test and every later ``predict`` (and serving/export): that is
what keeps the figures honest. It is stored in the run directory as plain JSON
(``data.json`` -> ``encoder``), so loading it runs no code.

It works a column at a time on arrays, never a cell at a time: a column is read as numbers
(float64, NaN where missing) or as integer codes into its distinct values
(:class:`ColumnValues`), and every per-value step (stripping, "is this missing", "is this a
number", "which category") runs once per *distinct* value, not once per row.

Each input column becomes a group of model features:

=========== ================================================ =======================================
kind        detected when (on the training split)            becomes
=========== ================================================ =======================================
numeric     every present value is a number                   the value, scaled
categorical anything else (strings, booleans)                 one-hot over the training categories
                                                              plus an ``other`` slot for categories
                                                              never seen in training
ordinal     declared: ``{kind: ordinal, order: [...]}``       the position in ``order``, scaled
datetime    every present value is an ISO date/time          year, month, day, day of week (and
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

Two forms of the same rows:

- :meth:`TableEncoder.encode` -> float32 (N, S), one *slot* per value: a scaled number (NaN
  where missing) or a category's code (its index in ``categories``; ``len(categories)`` for an
  unseen one; NaN where missing). A table of any size is held in this form: a column of 500
  categories is one float per row, not 501.
- :meth:`TableEncoder.expand` -> float32 (N, F), the features above (imputed, one-hot, missing
  indicators). A run's model does this per batch on the device (:class:`deepworks.kinds.table.
  TableInput`, in the exported graph too); :meth:`transform` = ``expand(encode(...))`` is for
  small tables (a quick look, a lab, a test).

>>> enc = TableEncoder.fit({"size": ["1", "3", ""], "colour": ["red", "blue", "red"]})
>>> enc.feature_names
['size', 'size=missing', 'colour=blue', 'colour=red', 'colour=other']
>>> enc.input_names
['size', 'colour']
>>> enc.encode({"size": ["2"], "colour": ["green"]}).tolist()
[[0.0, 2.0]]
>>> enc.transform({"size": ["2"], "colour": ["green"]}).tolist()
[[0.0, 0.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepworks.errors import DataError

__all__ = [
    "TableEncoder", "ColumnValues", "KINDS", "MISSING_VALUES", "is_missing", "detect_kind", "parse_numbers",
    "number_text",
]

KINDS = ("numeric", "categorical", "ordinal", "datetime", "id", "ignore")
SCALINGS = ("standard", "minmax", "none")
# cell values (after stripping, lower-cased) that mean "no value"
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
_DATE_PARTS = ("year", "month", "day", "dayofweek")
_TIME_PARTS = ("hour", "minute")
# the feature types of TableEncoder.expand: the slot's value (imputed), one category of a slot, a slot's missingness
_VALUE, _ONE_HOT, _MISSING = 0, 1, 2


def is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_VALUES


def parse_numbers(cells: Sequence[str]) -> np.ndarray | None:
    """Float64 values of ``cells`` (NaN where missing), or None if a present cell is not a number."""
    return ColumnValues.of(cells).numeric()


def number_text(value: float) -> str:
    """A number as the text a CSV cell would hold: whole numbers without a fraction (3, not 3.0)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class ColumnValues:
    """One column's values as arrays: numbers (float64, NaN where missing) for a numeric column,
    or codes (int64, -1 where missing) into its distinct texts (stripped) for any other; each
    form is made from the other on demand, once per distinct value.

    Built by :meth:`of` from a pandas Series, a numpy array or a list of cells; :meth:`take`
    picks rows without redoing the per-value work.
    """

    __slots__ = ("n", "_numbers", "_codes", "_texts", "_stamps", "_parsed")

    def __init__(self, n: int, numbers: np.ndarray | None = None, codes: np.ndarray | None = None,
                 texts: list[str] | None = None, stamps: Any = None):
        self.n = n
        self._numbers, self._codes, self._texts, self._stamps = numbers, codes, texts, stamps
        self._parsed: dict[str, Any] = {}  # per-distinct-value results (numbers, dates), shared by take()

    @classmethod
    def of(cls, values: Any) -> ColumnValues:
        """A column's values: a pandas Series, a numpy array, or a list of cells (strings, numbers, None)."""
        if isinstance(values, ColumnValues):
            return values
        import pandas as pd

        series = values if isinstance(values, pd.Series) else pd.Series(
            values if isinstance(values, np.ndarray) and values.ndim == 1 else list(values),
            dtype=None if isinstance(values, np.ndarray) else object,
        )
        n = len(series)
        dtype = series.dtype
        if pd.api.types.is_bool_dtype(dtype):
            series = series.astype(object)
        elif pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
            numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
            return cls(n, numbers=numbers)
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            stamps = pd.DatetimeIndex(series)
            if stamps.tz is not None:
                stamps = stamps.tz_localize(None)
            return cls(n, stamps=stamps)
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        codes = np.asarray(codes, dtype=np.int64)
        # the per-value work: text of each distinct value, stripped; missing markers; repeats after stripping
        texts: list[str] = []
        index: dict[str, int] = {}
        remap = np.empty(len(uniques) + 1, dtype=np.int64)  # remap[-1] keeps a missing code missing
        remap[-1] = -1
        for i, value in enumerate(uniques.tolist() if hasattr(uniques, "tolist") else list(uniques)):
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            text = (number_text(value) if isinstance(value, float) else str(value)).strip()
            if text.lower() in MISSING_VALUES:
                remap[i] = -1
                continue
            remap[i] = index.setdefault(text, len(texts))
            if remap[i] == len(texts):
                texts.append(text)
        if len(texts) != len(uniques):
            codes = remap[codes]
        return cls(n, codes=codes, texts=texts)

    def take(self, rows: Any) -> ColumnValues:
        """The values of ``rows`` (positions), sharing this column's distinct values."""
        rows = np.asarray(rows, dtype=np.int64)
        out = ColumnValues(
            len(rows),
            numbers=self._numbers[rows] if self._numbers is not None else None,
            codes=self._codes[rows] if self._codes is not None else None,
            texts=self._texts,
            stamps=self._stamps[rows] if self._stamps is not None else None,
        )
        out._parsed = self._parsed
        return out

    def __len__(self) -> int:
        return self.n

    @property
    def is_numbers(self) -> bool:
        """A column read as numbers (its values are float64, not codes)."""
        return self._numbers is not None

    @property
    def is_dates(self) -> bool:
        """A column of datetime values (a Parquet timestamp, a DataFrame's datetime64)."""
        return self._stamps is not None

    def missing(self) -> np.ndarray:
        """(N,) bool: which rows have no value."""
        if self._numbers is not None:
            return np.isnan(self._numbers)
        if self._stamps is not None:
            return np.asarray(self._stamps.isna())
        return self._codes < 0

    def codes(self) -> tuple[np.ndarray, list[str]]:
        """(codes (N,) int64, -1 where missing; the distinct present values as text)."""
        if self._codes is None:
            if self._numbers is not None:
                import pandas as pd

                codes, uniques = pd.factorize(self._numbers, use_na_sentinel=True)
                self._codes, self._texts = np.asarray(codes, np.int64), [number_text(v) for v in uniques.tolist()]
            else:
                import pandas as pd

                codes, uniques = pd.factorize(self._stamps, use_na_sentinel=True)
                self._codes, self._texts = np.asarray(codes, np.int64), [str(v) for v in uniques]
        return self._codes, self._texts

    def numeric(self) -> np.ndarray | None:
        """(N,) float64, NaN where missing; None when a present value is not a number."""
        if self._numbers is not None:
            return self._numbers
        if self._stamps is not None:
            return None
        codes, texts = self.codes()
        if "numbers" not in self._parsed:
            values = [_as_float(t) for t in texts]
            self._parsed["numbers"] = None if any(v is None for v in values) else np.array(values + [np.nan])
        table = self._parsed["numbers"]
        return None if table is None else table[codes]  # code -1 reads the NaN at the end

    def first_not_number(self) -> int:
        """The first row whose value is present but not a number (0 if none)."""
        if self._codes is None:
            return 0
        codes, texts = self.codes()
        bad = np.array([_as_float(t) is None for t in texts] + [False])
        hits = np.flatnonzero(bad[codes])
        return int(hits[0]) if len(hits) else 0

    def cell(self, i: int) -> str:
        """Row ``i``'s value as text (for messages)."""
        if self._numbers is not None:
            return "" if np.isnan(self._numbers[i]) else number_text(float(self._numbers[i]))
        if self._stamps is not None:
            return "" if self.missing()[i] else str(self._stamps[i])
        code = int(self._codes[i])
        return "" if code < 0 else self._texts[code]

    def datetimes(self, strict_iso: bool) -> Any:
        """A pandas DatetimeIndex (NaT where missing), or None if a present value is not a date."""
        import pandas as pd

        if self._stamps is not None:
            return self._stamps
        if self._numbers is not None:
            return None
        codes, texts = self.codes()
        key = f"dates-{strict_iso}"
        if key not in self._parsed:
            self._parsed[key] = _parse_datetimes(texts, strict_iso)
        parsed = self._parsed[key]
        if parsed is None:
            return None
        return pd.DatetimeIndex(parsed.take(codes, allow_fill=True, fill_value=pd.NaT))


def _parse_datetimes(texts: Sequence[str], strict_iso: bool) -> Any:
    """A pandas DatetimeIndex of ``texts`` (distinct, present), or None if one does not parse."""
    import pandas as pd

    if not texts:
        return None
    if strict_iso and not all(len(c) >= 8 and c[:4].isdigit() and c[4] in "-/" for c in texts):
        return None  # only ISO-looking text is taken for a date without being told
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(pd.Series(list(texts), dtype=object), format="ISO8601" if strict_iso else "mixed")
    except (ValueError, TypeError, OverflowError):
        return None
    stamps = pd.DatetimeIndex(parsed)
    if stamps.tz is not None:
        stamps = stamps.tz_localize(None)
    return stamps


def detect_kind(cells: Any) -> str:
    """The kind of a column from its (training) values: numeric, datetime, id or categorical."""
    values = ColumnValues.of(cells)
    n = len(values)
    numbers = values.numeric()
    if numbers is not None:
        present = numbers[~np.isnan(numbers)]
        # a row number: distinct consecutive integers
        if len(present) > 10 and len(present) == n and np.all(present == np.round(present)):
            ordered = np.sort(present)
            if np.all(np.diff(ordered) == 1):
                return "id"
        return "numeric"
    if values.is_dates or values.datetimes(strict_iso=True) is not None:
        return "datetime"
    codes, texts = values.codes()
    if n > 10 and len(texts) == n and not (codes < 0).any():
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
    """Fitted per-column encoders: :meth:`encode` maps raw columns to slots (float32 (N, S)),
    :meth:`expand` slots to features (float32 (N, F)).

    Built by :meth:`fit` (training columns) or :meth:`from_dict` (a stored run);
    ``feature_names`` names the F features and ``groups`` maps each input column to the
    positions of its features (a one-hot block with its missing indicator, say);
    ``input_names`` and ``input_groups`` do the same for the S slots.
    """

    def __init__(self, columns: list[dict[str, Any]], scaling: str = "standard"):
        self.columns = columns
        self.scaling = scaling
        self.feature_names: list[str] = []
        self.groups: dict[str, list[int]] = {}
        self.input_names: list[str] = []
        self.input_groups: dict[str, list[int]] = {}
        # per feature: the slot it reads, its type, the fill of a missing slot, the category it stands for
        source, types, fills, codes = [], [], [], []
        for spec in columns:
            names = _feature_names(spec)
            self.groups[spec["name"]] = list(range(len(self.feature_names), len(self.feature_names) + len(names)))
            self.feature_names += names
            slots = _slot_names(spec)
            first = len(self.input_names)
            self.input_groups[spec["name"]] = list(range(first, first + len(slots)))
            self.input_names += slots
            kind = spec["kind"]
            if kind == "categorical":
                fill_code = float(spec["categories"].index(spec["fill"])) if spec["fill"] in spec["categories"] else 0.0
                for k in range(len(spec["categories"]) + 1):  # the categories, then "other"
                    source.append(first), types.append(_ONE_HOT), fills.append(fill_code), codes.append(float(k))
            elif kind == "datetime":
                for j, (fill, shift, scale) in enumerate(zip(spec["fill"], spec["shift"], spec["scale"])):
                    source.append(first + j), types.append(_VALUE), fills.append((fill - shift) / scale)
                    codes.append(0.0)
            else:  # numeric, ordinal
                source.append(first), types.append(_VALUE), fills.append((spec["fill"] - spec["shift"]) / spec["scale"])
                codes.append(0.0)
            if spec["indicator"]:
                source.append(first), types.append(_MISSING), fills.append(0.0), codes.append(0.0)
        self.expansion = {
            "source": np.array(source, dtype=np.int64),
            "type": np.array(types, dtype=np.int64),
            # float64 -> float32 once, as the features always were: (fill - shift) / scale, then rounded
            "fill": np.array(fills, dtype=np.float64).astype(np.float32),
            "code": np.array(codes, dtype=np.float32),
        }

    @property
    def inputs(self) -> list[str]:
        """The input columns the model uses (dropped id/ignore columns are not among them)."""
        return [spec["name"] for spec in self.columns]

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        columns: Mapping[str, Any],
        declared: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        scaling: str = "standard",
        lines: Any = None,
        where: str = "data",
    ) -> TableEncoder:
        """Learn each column's kind and parameters from the training rows.

        ``columns`` maps a column to its values (a pandas Series, an array, a list of cells, or
        :class:`ColumnValues`); ``declared`` maps a column to ``{kind, order, scaling}``
        (``data.columns``); ``lines`` gives each row's line in the file (indexable), for messages.
        """
        if scaling not in SCALINGS:
            raise DataError(f"data.scaling: expected one of {', '.join(SCALINGS)}, got {scaling!r}.")
        declared = declared or {}
        specs: list[dict[str, Any]] = []
        for name, raw in columns.items():
            values = ColumnValues.of(raw)
            decl = dict(declared.get(name) or {})
            kind = decl.get("kind") or detect_kind(values)
            col_scaling = decl.get("scaling") or scaling
            if kind in ("id", "ignore"):
                if kind == "id" and "kind" not in decl:
                    warnings.warn(
                        f"{where}: column {name!r} is unique per row (an identifier?), so it is left out. "
                        f"Fix: declare data.columns.{name}.kind (numeric or categorical) to use it.",
                        stacklevel=2,
                    )
                continue
            missing = values.missing()
            if missing.all():
                raise DataError(
                    f"{where}: column {name!r} has no values in the training rows (every cell is missing). "
                    f"Fix: fill it in, or leave it out with data.features (or data.columns.{name}.kind: ignore)."
                )
            spec: dict[str, Any] = {"name": name, "kind": kind, "indicator": bool(missing.any())}
            if kind == "numeric":
                numbers = _numbers(
                    values, name, lines, where, "is declared numeric but holds {cell}{line}. "
                    "Fix: declare it categorical, or clean the column."
                )
                fill = float(np.median(numbers[~missing]))
                spec["fill"] = fill
                spec["shift"], spec["scale"] = _scale_params(np.where(missing, fill, numbers), col_scaling)
            elif kind == "categorical":
                codes, texts = values.codes()
                counts = np.bincount(codes[codes >= 0], minlength=len(texts))
                seen = {texts[i]: int(c) for i, c in enumerate(counts) if c}
                spec["categories"] = sorted(seen)
                # most frequent; ties go to the first in sorted order
                spec["fill"] = min(seen, key=lambda c: (-seen[c], c))
            elif kind == "ordinal":
                order = [str(v) for v in decl.get("order") or []]
                if len(order) < 2:
                    raise DataError(
                        f"{where}: column {name!r} is ordinal but data.columns.{name}.order lists {len(order)} "
                        "value(s). Fix: list its values from lowest to highest, e.g. order: [low, medium, high]."
                    )
                positions = _ordinal_codes(values, order, name, lines, where)
                fill = float(np.median(positions[~missing]))
                spec["order"], spec["fill"] = order, fill
                spec["shift"], spec["scale"] = _scale_params(np.where(missing, fill, positions), col_scaling)
            elif kind == "datetime":
                stamps = values.datetimes(strict_iso="kind" not in decl)
                if stamps is None:
                    stamps = values.datetimes(strict_iso=False)
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
                    part_values = parts[part]
                    fill = float(np.nanmedian(part_values))
                    shift, scale = _scale_params(np.where(np.isnan(part_values), fill, part_values), col_scaling)
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

    # ------------------------------------------------------------------ encode / expand

    def encode(self, columns: Mapping[str, Any], *, lines: Any = None, where: str = "data") -> np.ndarray:
        """The input columns' values (other columns are ignored) -> slots, float32 (N, S)."""
        return self.encode_rows(columns, {"all": None}, lines=lines, where=where)["all"]

    def encode_rows(
        self, columns: Mapping[str, Any], rows: Mapping[str, Any], *, lines: Any = None, where: str = "data",
    ) -> dict[str, np.ndarray]:
        """Slots of several row selections at once: ``rows`` maps a name to positions (None: every
        row) -> {name: float32 (len, S)}. A column is encoded whole once and its slots copied into
        each selection, so a large table is never held twice over."""
        absent = [spec["name"] for spec in self.columns if spec["name"] not in columns]
        if absent:
            raise DataError(
                f"{where}: the model was trained on column(s) {', '.join(map(repr, absent))}, which are missing here. "
                f"Fix: give every row the columns {', '.join(map(repr, self.inputs))}."
            )
        n = len(ColumnValues.of(columns[self.columns[0]["name"]])) if self.columns else 0
        out = {name: np.empty((n if idx is None else len(idx), len(self.input_names)), dtype=np.float32)
               for name, idx in rows.items()}
        for spec in self.columns:  # a column's slots computed whole, then copied into each selection
            first = self.input_groups[spec["name"]][0]
            for j, slot in enumerate(self._slots(spec, ColumnValues.of(columns[spec["name"]]), lines, where)):
                for name, idx in rows.items():
                    out[name][:, first + j] = slot if idx is None else slot[idx]
        return out

    def _slots(self, spec: Mapping[str, Any], values: ColumnValues, lines: Any, where: str) -> list[np.ndarray]:
        """One column's slots, float32 (N,) each, NaN where the value is missing."""
        kind, name = spec["kind"], spec["name"]
        if kind == "numeric":
            numbers = _numbers(
                values, name, lines, where, "holds {cell}{line}, but the model was trained on numbers "
                "there. Fix: give a number (or leave the cell empty)."
            )
            return [((numbers - spec["shift"]) / spec["scale"]).astype(np.float32)]
        if kind == "categorical":
            codes, texts = values.codes()
            index = {c: i for i, c in enumerate(spec["categories"])}
            other = len(spec["categories"])
            # unseen categories go to the "other" code (the last); booleans and numbers match their
            # stored spelling (True / true, 1.50 / 1.5)
            table = np.array([_category(index, t, other) for t in texts] + [np.nan], dtype=np.float32)
            return [table[codes]]  # code -1 (missing) reads the NaN at the end
        if kind == "ordinal":
            positions = _ordinal_codes(values, spec["order"], name, lines, where)
            return [((positions - spec["shift"]) / spec["scale"]).astype(np.float32)]
        missing = values.missing()  # datetime
        stamps = values.datetimes(strict_iso=False) if not missing.all() else None
        if stamps is None and not missing.all():
            raise DataError(
                f"{where}: column {name!r} holds values that are not dates. Fix: use ISO dates (2024-03-01)."
            )
        parts = _date_parts(stamps) if stamps is not None else {}
        return [((parts.get(part, np.full(len(values), np.nan)) - shift) / scale).astype(np.float32)
                for part, shift, scale in zip(spec["parts"], spec["shift"], spec["scale"])]

    def expand(self, slots: np.ndarray) -> np.ndarray:
        """Slots (N, S) -> features (N, F), float32: missing slots imputed, categories one-hot,
        missing indicators; what :class:`deepworks.kinds.table.TableInput` computes per batch."""
        e = self.expansion
        picked = np.asarray(slots, dtype=np.float32)[:, e["source"]]  # (N, F)
        nan = np.isnan(picked)
        filled = np.where(nan, e["fill"], picked)
        out = np.where(e["type"] == _VALUE, filled,
                       np.where(e["type"] == _ONE_HOT, filled == e["code"], nan))
        return out.astype(np.float32)

    def expand_sparse(self, slots: np.ndarray) -> Any:
        """:meth:`expand` as a scipy CSR matrix (float64): a row stores its values and indicators
        and one entry per category column, not the zeros of its one-hot blocks (for scikit-learn
        on a large table)."""
        from scipy import sparse

        e = self.expansion
        x = np.asarray(slots, dtype=np.float32)
        n, width = len(x), len(self.feature_names)
        dense = np.flatnonzero(e["type"] != _ONE_HOT)  # value and indicator features: one entry each per row
        picked = x[:, e["source"][dense]]
        nan = np.isnan(picked)
        values = np.where(e["type"][dense] == _VALUE, np.where(nan, e["fill"][dense], picked), nan)
        columns, data = [np.broadcast_to(dense, (n, len(dense)))], [values.astype(np.float64)]
        for spec in self.columns:
            if spec["kind"] != "categorical":
                continue
            block = self.groups[spec["name"]][0]
            size = len(spec["categories"]) + 1
            codes = x[:, self.input_groups[spec["name"]][0]]
            codes = np.where(np.isnan(codes), e["fill"][block], codes)
            valid = (codes >= 0) & (codes < size) & (codes == np.floor(codes))
            columns.append((block + np.where(valid, codes, 0).astype(np.int64))[:, None])
            data.append(valid.astype(np.float64)[:, None])
        indices = np.concatenate(columns, axis=1)
        per_row = indices.shape[1]
        matrix = sparse.csr_matrix(
            (np.concatenate(data, axis=1).ravel(), indices.ravel(), np.arange(0, n * per_row + 1, per_row)),
            shape=(n, width),
        )
        matrix.sort_indices()
        return matrix

    def transform(self, columns: Mapping[str, Any], *, lines: Any = None, where: str = "data") -> np.ndarray:
        """The input columns' values -> features, float32 (N, F): ``expand(encode(...))``, for small tables."""
        return self.expand(self.encode(columns, lines=lines, where=where))

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


def _category(index: Mapping[str, int], text: str, other: int) -> int:
    """The code of ``text`` among a column's categories (``other`` when it is none of them)."""
    if text in index:
        return index[text]
    if text.lower() in index:
        return index[text.lower()]
    number = _as_float(text)
    return index.get(number_text(number), other) if number is not None else other


def _slot_names(spec: Mapping[str, Any]) -> list[str]:
    if spec["kind"] == "datetime":
        return [f"{spec['name']}.{p}" for p in spec["parts"]]
    return [spec["name"]]


def _line(lines: Any, i: int) -> str:
    return f" on line {lines[i]}" if lines is not None else f" in row {i + 1}"


def _numbers(values: ColumnValues, name: str, lines: Any, where: str, problem: str) -> np.ndarray:
    """The values as float64 (NaN where missing); a non-number or an infinity is a DataError.

    ``problem`` completes "column NAME ..." with ``{cell}`` and ``{line}`` placeholders."""
    numbers = values.numeric()
    if numbers is None:
        bad = values.first_not_number()
        raise DataError(f"{where}: column {name!r} " + problem.format(cell=repr(values.cell(bad)), line=_line(lines, bad)))
    infinite = np.isinf(numbers)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        cell = values.cell(i) if values._codes is not None and values._numbers is None else str(numbers[i])
        raise DataError(
            f"{where}: column {name!r} holds an infinite value ({cell!r}{_line(lines, i)}). "
            "Fix: replace it with a finite number or leave the cell empty."
        )
    if np.nanmax(np.abs(numbers), initial=0.0) > np.finfo(np.float32).max:
        raise DataError(f"{where}: column {name!r} has values beyond float32's range (about 3.4e38). Fix: rescale it.")
    return numbers


def _ordinal_codes(values: ColumnValues, order: Sequence[str], name: str, lines: Any, where: str) -> np.ndarray:
    """Each value's position in ``order`` (float64, NaN where missing); a value not in it is an error."""
    codes, texts = values.codes()
    index = {v: i for i, v in enumerate(order)}
    unknown = [t for t in texts if t not in index]
    table = np.array([index.get(t, -1) for t in texts] + [np.nan], dtype=np.float64)
    positions = table[codes]
    if unknown:
        bad = np.flatnonzero(positions == -1)
        if len(bad):
            i = int(bad[0])
            raise DataError(
                f"{where}: column {name!r} holds {values.cell(i)!r}{_line(lines, i)}, which is not in its declared order "
                f"{list(order)}. Fix: add it to data.columns.{name}.order, or correct the cell."
            )
    return positions


def _date_parts(stamps: Any) -> dict[str, np.ndarray]:
    """Year, month, day, day of week, hour, minute as float arrays (NaN where missing)."""
    out = {}
    for part in (*_DATE_PARTS, *_TIME_PARTS):
        values = getattr(stamps, "day_of_week" if part == "dayofweek" else part)
        out[part] = np.asarray(values, dtype=np.float64)
    return out
