"""Tables: CSV (or Parquet) files of mixed-type columns and one target column.

>>> table = load_table("penguins.csv", target="species")     # doctest: +SKIP
>>> y, classes, task = table_target(table)                     # doctest: +SKIP
>>> classes, task                                              # doctest: +SKIP
(['Adelie', 'Chinstrap', 'Gentoo'], 'classification')

:func:`load_table` reads the raw cells (strings) and checks the file, the target and the
chosen columns; nothing is fitted here. Turning cells into numbers (kinds, imputation,
scaling, one-hot) is :class:`deepworks.data.features.TableEncoder`'s job, fitted on the
training split only once the rows are split. :func:`load_csv` is the quick look: the whole
table encoded at once, for exploring a file, never for honest figures.

CSV files are read with the standard ``csv`` module (comma-separated, a header row, one row
per sample; errors name the line); Parquet files need ``pyarrow``
(``pip install deepworks[parquet]``). Problems are reported with the file, the column and
the fix.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.data.containers import ImageDataset
from deepworks.data.datasets import DATASETS
from deepworks.data.features import MISSING_VALUES, TableEncoder, is_missing, parse_numbers
from deepworks.errors import ConfigError, DataError, close_matches

__all__ = ["Table", "load_table", "table_target", "read_table", "check_column", "load_csv", "MISSING_VALUES"]

# a numeric target with more distinct values than this (or with fractions) is a regression target
REGRESSION_MIN_DISTINCT = 20


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


def _read_parquet(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header and rows of a Parquet file as text cells (missing -> ""); "lines" are row numbers."""
    try:
        import pandas as pd

        frame = pd.read_parquet(path)
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet files needs pyarrow. Fix: pip install 'deepworks[parquet]' (or save the table as CSV)."
        ) from None
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]}).") from None
    if len(frame.columns) == 0:
        raise DataError(f"{path}: the file is empty. Fix: a table needs named columns and one row per sample.")
    if len(frame) == 0:
        raise DataError(f"{path}: the file has columns but no rows. Fix: add one row per sample.")
    header, rows = frame_rows(frame)
    return header, rows, list(range(1, len(rows) + 1))


def frame_rows(frame: Any) -> tuple[list[str], list[list[str]]]:
    """A pandas DataFrame's header and rows as text cells (missing -> ""), as a Parquet file's are
    read: the one conversion of in-memory table values to the cells an encoder takes."""
    header = [str(c) for c in frame.columns]
    cells = frame.astype(object).where(frame.notna(), "")
    rows = [["" if v is None else str(v) for v in row] for row in cells.itertuples(index=False, name=None)]
    return header, rows


def read_table(path: str | Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows of text cells and each row's line (CSV) or row number (Parquet)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file. Fix: set data.path to an existing CSV (or Parquet) file.")
    if path.is_dir():
        raise DataError(
            f"{path}: is a folder, not a table. Fix: point data.path at the .csv file "
            "(an image folder is read by data.dataset: folder)."
        )
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    return _read_rows(path)


@dataclass
class Table:
    """A table's raw cells: the feature columns, the target and (optionally) the group column.

    Rows whose target is missing are already dropped; ``lines`` are the kept rows' lines.
    """

    path: Path
    columns: dict[str, list[str]]  # feature column -> cells (stripped strings)
    target_name: str
    target: list[str]
    lines: list[int]
    groups: list[str] | None = None
    group_by: str | None = None

    def __len__(self) -> int:
        return len(self.target)

    def rows(self, index: Sequence[int]) -> dict[str, list[str]]:
        """The feature cells of the rows at ``index``."""
        return {name: [cells[i] for i in index] for name, cells in self.columns.items()}


def check_column(path: Path, header: list[str], name: str, key: str) -> None:
    """Refuse a table whose header lacks the column ``name`` (the config key ``key`` named it),
    with the closest column names and a hint when the file uses another separator."""
    if name not in header:
        hint = _suggest(name, header)
        sep = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
        extra = f" The header is one column; the file seems to use {sep!r} as a separator, not ','." if sep else ""
        raise DataError(
            f"{path}: no column {name!r} ({key}).{hint} Columns: {_column_list(header)}.{extra} "
            f"Fix: set {key} to one of the columns."
        )


# The old name: pipeline.py imports it until the kinds work rewrites that file; then it goes.


def labelled_rows(
    path: Path, rows: list[list[str]], lines: list[int], position: dict[str, int], target: str,
    group_by: str | None, noun: str = "target",
) -> tuple[list[int], list[str] | None]:
    """The rows that have a value in the ``target`` column (the others are left out with a
    warning) and, with ``group_by``, each kept row's group (every kept row must have one)."""
    cells = [row[position[target]] for row in rows]
    keep = [i for i, cell in enumerate(cells) if not is_missing(cell)]
    if not keep:
        raise DataError(
            f"{path}: column {target!r} (data.target) is entirely missing: every row's value is empty or NA. "
            f"Fix: fill in the {noun}s, or set data.target to the {noun} column."
        )
    if len(keep) < len(rows):
        first = next(lines[i] for i in range(len(rows)) if is_missing(cells[i]))
        warnings.warn(
            f"{path}: {len(rows) - len(keep)} row(s) have no value in the {noun} column {target!r} "
            f"(first on line {first}); they are left out.",
            stacklevel=3,
        )
    if group_by is None:
        return keep, None
    groups = [rows[i][position[group_by]] for i in keep]
    gaps = [lines[i] for i, g in zip(keep, groups) if is_missing(g)]
    if gaps:
        raise DataError(
            f"{path}: column {group_by!r} (data.group_by) is missing in {len(gaps)} row(s), first on line "
            f"{gaps[0]}. Fix: give every row a group."
        )
    return keep, groups

def load_table(
    path: str | Path,
    target: str | None,
    *,
    features: Sequence[str] | None = None,
    group_by: str | None = None,
) -> Table:
    """Read a table's raw cells and check its columns (nothing is fitted or converted here).

    ``target`` names the column to predict; ``features`` picks the input columns (default:
    every other column but ``group_by``); ``group_by`` names a column whose rows must stay in
    one split together. Rows with a missing target are dropped with a warning.
    """
    path = Path(path).expanduser()
    if target is None or (isinstance(target, str) and not target.strip()):
        raise DataError(
            f"{path}: a table needs a target column: set data.target to its name (e.g. data.target: label)."
        )
    header, rows, lines = read_table(path)
    check_column(path, header, target, "data.target")
    if group_by is not None:
        check_column(path, header, group_by, "data.group_by")
        if group_by == target:
            raise DataError(f"{path}: data.group_by is the target column {target!r}. Fix: group by another column.")
    if features is None:
        feature_cols = [c for c in header if c not in (target, group_by)]
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
                f"{path}: data.features includes the target column {target!r}. Fix: remove it from data.features."
            )
        repeated = sorted({c for c in feature_cols if feature_cols.count(c) > 1})
        if repeated:
            raise DataError(f"{path}: data.features lists {', '.join(map(repr, repeated))} more than once.")
    if not feature_cols:
        raise DataError(
            f"{path}: no feature columns: the file has only the target column {target!r}. "
            "Fix: add feature columns, or list them in data.features."
        )
    position = {c: i for i, c in enumerate(header)}
    target_cells = [row[position[target]] for row in rows]
    keep, groups = labelled_rows(path, rows, lines, position, target, group_by, noun="target")
    return Table(
        path=path,
        columns={c: [rows[i][position[c]] for i in keep] for c in feature_cols},
        target_name=target,
        target=[target_cells[i] for i in keep],
        lines=[lines[i] for i in keep],
        groups=groups,
        group_by=group_by,
    )


def table_target(table: Table, task: str = "auto") -> tuple[np.ndarray, list[str], str]:
    """The target as class indices (classification) or float64 values (regression).

    Returns ``(y, classes, task)``; ``classes`` is empty for regression. ``task: auto``
    takes a numeric target with more than 20 distinct values (or with fractions) as a
    regression target, and says so.
    """
    where = f"{table.path}: column {table.target_name!r} (data.target)"
    numbers = parse_numbers(table.target)
    if task == "auto":
        if numbers is not None:
            distinct = len(np.unique(numbers))
            if distinct > REGRESSION_MIN_DISTINCT or not np.all(numbers == np.round(numbers)):
                print(
                    f"{table.path}: the target {table.target_name!r} is numeric with {distinct} distinct values: "
                    "training a regression model (set data.task: classification to treat them as classes).",
                    flush=True,
                )
                task = "regression"
        task = "classification" if task == "auto" else task
    if task == "regression":
        if numbers is None:
            i = next(i for i, c in enumerate(table.target) if parse_numbers([c]) is None)
            raise DataError(
                f"{where} holds {table.target[i]!r} on line {table.lines[i]}: a regression task needs a numeric "
                "target. Fix: set data.task: classification, or choose a numeric data.target."
            )
        if not np.all(np.isfinite(numbers)):
            i = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise DataError(f"{where} holds {table.target[i]!r} on line {table.lines[i]}. Fix: give a finite number.")
        return numbers, [], "regression"
    y, classes = _labels(table.target)
    if len(classes) < 2:
        only = f" (every row is {classes[0]!r})" if classes else ""
        raise DataError(
            f"{where} has {len(classes)} distinct value(s){only}; a classifier needs at least 2 classes. "
            "Fix: check data.target names the label column."
        )
    return y, classes, "classification"


def load_csv(
    path: str | Path,
    target: str | None,
    *,
    features: Sequence[str] | None = None,
    name: str = "csv",
) -> ImageDataset:
    """A classification table encoded as (N, F) float32 features, for a quick look at a file.

    Numeric columns keep their values (unscaled); text columns are one-hot; missing cells
    are imputed with a missing-indicator feature. The encoder is fitted on EVERY row here,
    which is fine for looking at data but not for honest figures: training fits it on the
    training split only (:func:`deepworks.pipeline.prepare_data`).
    """
    table = load_table(path, target, features=features)
    y, classes, _ = table_target(table, "classification")
    # unscaled: numeric columns keep their values (scaling needs training-split statistics)
    encoder = TableEncoder.fit(table.columns, scaling="none", lines=table.lines, where=str(table.path))
    x = encoder.transform(table.columns, lines=table.lines, where=str(table.path))
    return ImageDataset(
        name, torch.from_numpy(x), torch.from_numpy(y), classes, source=str(table.path.resolve()),
        features=encoder.feature_names,
    )

def feature_matrix(columns: dict[str, Sequence[str]], features: Sequence[str], lines: Sequence[int], where: str) -> np.ndarray:
    """The ``features`` columns' cells as float32 (N, F); a cell that is not a finite number
    (empty, text, nan, inf) is an error naming ``where``, its line and column."""
    n = len(lines)
    x = np.empty((n, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        for i, cell in enumerate(columns[name]):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(
                    f"{where}: line {lines[i]}, column {name!r}: {cell!r} is not a finite number. "
                    "Fix: give every feature a numeric value."
                )
            x[i, j] = value
    return x


@DATASETS.register(
    "csv", description="a CSV file of numeric feature columns and a label column (data.path, data.target)"
)
def _load_csv(
    *, path: str | Path | None = None, target: str | None = None, features: list[str] | None = None, **_: Any
) -> ImageDataset:
    if path is None:
        raise ConfigError("data.path: the csv dataset needs a path to a CSV file (data.path: file.csv).")
    return load_csv(path, target, features=features)


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
    columns = {name: [row[header.index(name)] for row in rows] for name in features}
    x = feature_matrix(columns, features, lines, str(path))
    return x, lines
