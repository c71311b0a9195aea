"""Tabular data: a CSV file of numeric feature columns and one label column.

>>> ds = load_csv("penguins.csv", target="species")          # doctest: +SKIP
>>> ds.x.shape, ds.input_shape, ds.classes                   # doctest: +SKIP
(torch.Size([333, 4]), (4,), ['Adelie', 'Chinstrap', 'Gentoo'])

Each sample is a 1-D float32 feature vector, so the dataset's ``x`` is (N, F) rather than
(N, C, H, W), and the models that take it are the ones that flatten their input
(``softmax``, ``mlp``). The features are not standardised here: like images, they are
normalised after splitting, with training-split statistics only (see
:func:`deepworks.data.splits.channel_stats`, which standardises each feature of (N, F)
data like scikit-learn's ``StandardScaler``).

The file is read with the standard ``csv`` module (no pandas dependency): comma-separated,
a header row with the column names, one row per sample. Every feature column must be
numeric and complete; problems are reported with the file, the column and the fix.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deepworks.data.datasets import ImageDataset
from deepworks.errors import DataError, close_matches

__all__ = ["load_csv", "MISSING_VALUES"]

# cell values (after stripping, lower-cased) that mean "no value"
MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def _suggest(name: str, columns: Sequence[str]) -> str:
    hint = close_matches(name, columns, n=1)
    return f" Did you mean {hint[0]!r}?" if hint else ""


def _column_list(columns: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and each row's line number; blank lines are skipped."""
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} field(s) but the header has {len(header)} "
                        f"column(s). Fix: give every row one value per column (quote values that contain commas)."
                    )
                rows.append([cell.strip() for cell in row])
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}). Fix: save the CSV as UTF-8.") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}).") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    if header is None:
        raise DataError(
            f"{path}: the file is empty. Fix: a CSV needs a header row with the column names and one row per sample."
        )
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows. Fix: add one row per sample.")
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    if unnamed:
        raise DataError(
            f"{path}: column(s) {', '.join(map(str, unnamed))} of the header have no name. "
            "Fix: name every column in the first row."
        )
    dupes = sorted({name for name in header if header.count(name) > 1})
    if dupes:
        raise DataError(
            f"{path}: column name(s) {', '.join(repr(d) for d in dupes)} appear more than once in the header. "
            "Fix: give every column its own name."
        )
    return header, rows, lines


def _missing_error(path: Path, gaps: dict[str, tuple[int, int]]) -> DataError:
    parts = [
        f"{col!r} ({count} row{'s' if count != 1 else ''}, first on line {first})"
        for col, (count, first) in gaps.items()
    ]
    return DataError(
        f"{path}: missing values in column(s) {', '.join(parts)}. "
        "Fix: impute or drop them (or leave the column out with data.features)."
    )


def _labels(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names: integers sorted numerically, anything else as sorted strings."""
    try:
        ints = [int(v) for v in values]
    except ValueError:
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[v] for v in values], dtype=np.int64), names
    unique = sorted(set(ints))
    index = {value: i for i, value in enumerate(unique)}
    return np.array([index[v] for v in ints], dtype=np.int64), [str(v) for v in unique]


def load_csv(
    path: str | Path,
    target: str | None,
    *,
    features: Sequence[str] | None = None,
    name: str = "csv",
) -> ImageDataset:
    """Read a CSV of numeric feature columns and a label column into a dataset with x (N, F).

    ``target`` names the label column; its distinct values (integers sorted numerically,
    else strings sorted) become the classes. ``features`` picks the feature columns (in
    that order); by default every column but the target.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file. Fix: set data.path to an existing CSV file.")
    if path.is_dir():
        raise DataError(
            f"{path}: is a folder, not a CSV file. Fix: point data.path at the .csv file "
            "(an image folder is read by data.dataset: folder)."
        )
    if target is None or (isinstance(target, str) and not target.strip()):
        raise DataError(
            f"{path}: a CSV file needs a label column: set data.target to its name (e.g. data.target: label)."
        )
    header, rows, lines = _read_rows(path)
    if target not in header:
        hint = _suggest(target, header)
        sep = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
        extra = f" The header is one column; the file seems to use {sep!r} as a separator, not ','." if sep else ""
        raise DataError(
            f"{path}: no column {target!r} (data.target).{hint} Columns: {_column_list(header)}.{extra} "
            "Fix: set data.target to the label column."
        )

    if features is None:
        feature_cols = [c for c in header if c != target]
    else:
        if isinstance(features, str):
            features = [features]
        feature_cols = list(features)
        unknown = [c for c in feature_cols if c not in header]
        if unknown:
            hints = "".join(_suggest(c, header) for c in unknown[:1])
            raise DataError(
                f"{path}: data.features names column(s) not in the file: {', '.join(repr(c) for c in unknown)}."
                f"{hints} Columns: {_column_list(header)}."
            )
        if target in feature_cols:
            raise DataError(
                f"{path}: data.features includes the label column {target!r}. Fix: remove it from data.features."
            )
        repeated = sorted({c for c in feature_cols if feature_cols.count(c) > 1})
        if repeated:
            raise DataError(f"{path}: data.features lists {', '.join(map(repr, repeated))} more than once.")
    if not feature_cols:
        raise DataError(
            f"{path}: no feature columns: the file has only the label column {target!r}. "
            "Fix: add numeric feature columns, or list them in data.features."
        )

    position = {c: i for i, c in enumerate(header)}
    n = len(rows)
    gaps: dict[str, tuple[int, int]] = {}  # column -> (rows missing, first line)

    labels = [row[position[target]] for row in rows]
    missing_labels = [i for i, v in enumerate(labels) if v.lower() in MISSING_VALUES]
    if missing_labels:
        gaps[target] = (len(missing_labels), lines[missing_labels[0]])

    x = np.empty((n, len(feature_cols)), dtype=np.float32)
    for j, col in enumerate(feature_cols):
        k = position[col]
        cells = [row[k] for row in rows]
        missing = np.fromiter((c.lower() in MISSING_VALUES for c in cells), dtype=bool, count=n)
        present = [c for c, m in zip(cells, missing) if not m]
        try:
            values = np.array(present, dtype=str).astype(np.float64)
        except ValueError:
            # find the first value that is not a number, to name it
            for i, cell in enumerate(cells):
                if missing[i]:
                    continue
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}: column {col!r} is not numeric (line {lines[i]} holds {cell!r}); only numeric "
                        "columns are supported as features. Fix: drop it with data.features or encode it as numbers."
                    ) from None
            raise  # pragma: no cover  (numpy refused a value that float() accepts)
        bad = ~np.isfinite(values)
        if bad.any():
            # an infinity; "nan" spellings are already counted as missing
            first = int(np.flatnonzero(bad)[0])
            i = int(np.flatnonzero(~missing)[first])
            raise DataError(
                f"{path}: column {col!r} holds an infinite value ({cells[i]!r} on line {lines[i]}). "
                "Fix: replace it with a finite number or drop the row."
            )
        if missing.any():
            gaps[col] = (int(missing.sum()), lines[int(np.flatnonzero(missing)[0])])
        column = np.zeros(n, dtype=np.float64)
        column[~missing] = values
        if np.abs(column).max(initial=0.0) > np.finfo(np.float32).max:
            raise DataError(f"{path}: column {col!r} has values beyond float32's range (about 3.4e38). Fix: rescale it.")
        x[:, j] = column
    if gaps:
        raise _missing_error(path, gaps)

    y, classes = _labels(labels)
    if len(classes) < 2:
        only = f" (every row is {classes[0]!r})" if classes else ""
        raise DataError(
            f"{path}: column {target!r} (data.target) has {len(classes)} distinct value(s){only}; a classifier needs "
            "at least 2 classes. Fix: check data.target names the label column."
        )
    return ImageDataset(
        name, torch.from_numpy(x), torch.from_numpy(y), classes, source=str(path.resolve()), features=feature_cols
    )


def read_feature_rows(path: str | Path, features: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """The ``features`` columns of a CSV as float32 (N, F), with each row's line number.

    For prediction: the file needs the training features (any order, other columns ignored,
    no label column needed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file. Fix: give a CSV file with the columns {_column_list(list(features))}.")
    header, rows, lines = _read_rows(path)
    missing = [c for c in features if c not in header]
    if missing:
        raise DataError(
            f"{path}: the model was trained on column(s) {', '.join(map(repr, missing))}, which this file lacks. "
            f"Columns here: {_column_list(header)}."
        )
    position = [header.index(c) for c in features]
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, k in enumerate(position):
            cell = row[k]
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(
                    f"{path}: line {lines[i]}, column {features[j]!r}: {cell!r} is not a finite number. "
                    "Fix: give every feature a numeric value."
                )
            x[i, j] = value
    return x, lines
