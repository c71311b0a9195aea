"""Tables: CSV, TSV, Parquet or JSON Lines files (or a pandas DataFrame) of mixed-type columns
and one target column.

>>> table = load_table("penguins.csv", target="species")     # doctest: +SKIP
>>> y, classes, task = table_target(table)                     # doctest: +SKIP
>>> classes, task                                              # doctest: +SKIP
(['Adelie', 'Chinstrap', 'Gentoo'], 'classification')

:func:`load_table` reads a table into typed columns (numbers as float64 arrays, text as integer
codes into its distinct values: :class:`~deepworks.data.features.ColumnValues`) and checks the
file, the target and the chosen columns; nothing is fitted here. Turning columns into model
inputs (kinds, imputation, scaling, category codes) is
:class:`deepworks.data.features.TableEncoder`'s job, fitted on the training split only once the
rows are split. :func:`load_csv` is the quick look: the whole table encoded at once, for
exploring a file, never for honest figures. :func:`peek_table` gives a file's first rows as a
DataFrame, read by the same rules.

Readers, by suffix (:data:`deepworks.config.TABLE_SUFFIXES`):

- ``.csv`` (any other suffix too): ``pandas.read_csv`` (its C parser), the delimiter taken from
  the header row (the one of ``,`` ``;`` tab ``|`` that splits it into the most names) unless
  ``data.delimiter`` names it; a header row, one row per sample, surrounding spaces ignored.
- ``.tsv``: the same with a tab.
- ``.parquet`` / ``.pq``: ``pandas.read_parquet`` (pyarrow).
- ``.jsonl``: ``pandas.read_json(lines=True)``, one JSON object per line.

Errors name the file and the fix: an empty file, a header without names or with a name twice,
a row with more fields than the header (with its line), text that is not UTF-8. A row with
fewer fields than the header reads as missing values in its last columns (pandas' rule).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.data.containers import ImageDataset
from deepworks.data.datasets import DATASETS
from deepworks.data.features import MISSING_VALUES, ColumnValues, TableEncoder, is_missing
from deepworks.errors import ConfigError, DataError, close_matches

__all__ = [
    "Table", "Lines", "is_frame", "load_table", "peek_table", "read_frame", "table_target", "read_table", "check_column",
    "load_csv", "sniff_delimiter", "MISSING_VALUES", "DELIMITERS",
]

# a numeric target with more distinct values than this (or with fractions) is a regression target
REGRESSION_MIN_DISTINCT = 20
# the delimiters a CSV's header row is tried with, in order of preference on a tie
DELIMITERS = (",", ";", "\t", "|")
# what pandas' parser takes for a missing cell (the common spellings of MISSING_VALUES; any other
# spelling of them is found per distinct value afterwards)
_NA_CELLS = sorted({v for m in MISSING_VALUES for v in (m, m.upper(), m.title())})
_COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma", ".zst": None, ".zip": None}


def _suggest(name: str, columns: Sequence[str]) -> str:
    hint = close_matches(name, columns, n=1)
    return f" Did you mean {hint[0]!r}?" if hint else ""


def _column_list(columns: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


# ----------------------------------------------------------------------------- line numbers


class Lines(Sequence):
    """Each row's line in its file, for messages: a CSV's physical line (blank lines and a value
    spanning lines counted, as the ``csv`` module counts them), found by reading the file again
    up to the row asked for, only when one is asked for; elsewhere the row's number from 1.
    ``unit`` is "line" or "row"."""

    def __init__(self, n: int, *, path: Path | None = None, delimiter: str = ",", unit: str = "row",
                 positions: np.ndarray | None = None, source: Lines | None = None):
        self.n, self.path, self.delimiter, self.unit = n, path, delimiter, unit
        self.positions = positions  # rows of ``source`` (a selection of another Lines)
        self.source = source
        self._found: list[int] = []
        self._reader: Any = None

    def take(self, positions: Any) -> Lines:
        """The lines of ``positions`` (rows of this sequence)."""
        positions = np.asarray(positions, dtype=np.int64)
        return Lines(len(positions), unit=self.unit, positions=positions, source=self)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        if self.source is not None:
            return self.source[int(self.positions[i])]
        if self.path is None:
            return i + 1
        while len(self._found) <= i:
            line = self._next_line()
            if line is None:  # fewer rows in the file than read (cannot happen for an unchanged file)
                return i + 2
            self._found.append(line)
        return self._found[i]

    def _next_line(self) -> int | None:
        if self._reader is None:
            handle = _open_text(self.path)
            self._reader = csv.reader(handle, delimiter=self.delimiter)
            self._header_seen = False
        for row in self._reader:
            if _blank(row):
                continue
            if not self._header_seen:
                self._header_seen = True
                continue
            # the line the row starts on: csv counts the lines read so far, a row may span several
            return self._reader.line_num - _extra_lines(row)
        return None


def _blank(row: list[str]) -> bool:
    """A line pandas skips: empty, or spaces only."""
    return not row or (len(row) == 1 and not row[0].strip())


def _extra_lines(row: list[str]) -> int:
    """How many line breaks a row's quoted values hold (the row starts that many lines earlier)."""
    return sum(cell.count("\n") for cell in row)


def _open_text(path: Path) -> Any:
    """A CSV file as text (utf-8-sig: a byte-order mark is not part of the first name), compressed or not."""
    compression = _COMPRESSED.get(path.suffix.lower())
    if compression == "gzip":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    if compression == "bz2":
        import bz2

        return bz2.open(path, "rt", encoding="utf-8-sig", newline="")
    if compression == "lzma":
        import lzma

        return lzma.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


# ----------------------------------------------------------------------------- reading


def _suffix(path: Path) -> str:
    """The table suffix of ``path``, looking through a compression suffix (data.csv.gz -> .csv)."""
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED:
        suffix = Path(path.stem).suffix.lower() or ".csv"
    return suffix


def sniff_delimiter(path: str | Path) -> str:
    """The delimiter of a CSV file: of ``,`` ``;`` tab ``|``, the one that splits the header row
    (the first line that is not blank) into the most names; ``,`` when none splits it."""
    path = Path(path)
    if _suffix(path) == ".tsv":
        return "\t"
    header = _header_line(path)
    if header is None:
        return ","
    best, fields = ",", 1
    for sep in DELIMITERS:
        count = len(next(csv.reader([header], delimiter=sep), []))
        if count > fields:
            best, fields = sep, count
    return best


def _header_line(path: Path) -> str | None:
    try:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}). Fix: save the CSV as UTF-8.") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    return None


def _header(path: Path, delimiter: str) -> list[str]:
    """The header row's names, stripped; checked: not empty, every column named, no name twice."""
    line = _header_line(path)
    if line is None:
        raise DataError(
            f"{path}: the file is empty. Fix: a CSV needs a header row with the column names and one row per sample."
        )
    try:
        header = [cell.strip() for cell in next(csv.reader(io.StringIO(line), delimiter=delimiter))]
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}).") from None
    check_names(path, header)
    return header


def check_names(where: Any, header: Sequence[str]) -> None:
    """Refuse a header with an unnamed column or a name given twice."""
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    if unnamed:
        raise DataError(
            f"{where}: column(s) {', '.join(map(str, unnamed))} of the header have no name. "
            "Fix: name every column in the first row."
        )
    dupes = sorted({name for name in header if list(header).count(name) > 1})
    if dupes:
        raise DataError(
            f"{where}: column name(s) {', '.join(repr(d) for d in dupes)} appear more than once in the header. "
            "Fix: give every column its own name."
        )


def _ragged(path: Path, delimiter: str, width: int) -> DataError | None:
    """The first row whose number of fields differs from the header's, as today's error (or None)."""
    reader = csv.reader(_open_text(path), delimiter=delimiter)
    header_seen = False
    for row in reader:
        if _blank(row):
            continue
        if not header_seen:
            header_seen = True
            continue
        if len(row) > width:
            return DataError(
                f"{path}: line {reader.line_num - _extra_lines(row)} has {len(row)} field(s) but the header has "
                f"{width} column(s). Fix: give every row one value per column (quote values that contain "
                f"{'commas' if delimiter == ',' else repr(delimiter) + 's'})."
            )
    return None


def _spaced(path: Path, delimiter: str) -> bool:
    """Whether the file's first 64 KB put spaces after a delimiter (``a, b``): pandas then skips
    them, so a quoted value after one reads as quoted. Skipping costs about a fifth of the read,
    and the cells of a file without such spaces need nothing skipped (a stray space before a
    value is stripped later all the same: text per distinct value, numbers by the parser)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return True
    sep = delimiter.encode()
    return sep + b" " in head or (sep != b"\t" and sep + b"\t" in head)


def _read_csv(path: Path, delimiter: str | None, text: bool, nrows: int | None) -> tuple[Any, Lines]:
    import pandas as pd

    delimiter = delimiter or sniff_delimiter(path)
    header = _header(path, delimiter)
    options: dict[str, Any] = {
        "sep": delimiter, "header": 0, "index_col": False, "skipinitialspace": _spaced(path, delimiter),
        "encoding": "utf-8",
        "nrows": nrows, "skip_blank_lines": True,
    }
    # text: every cell as read (the text and series kinds' cells); else typed columns, missing cells NaN
    options.update({"dtype": str, "na_filter": False} if text else {"keep_default_na": False, "na_values": _NA_CELLS})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # a column of mixed types is read as objects
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a first row longer than the header
            frame = pd.read_csv(path, **options)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}). Fix: save the CSV as UTF-8.") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        raise _ragged(path, delimiter, len(header)) or DataError(
            f"{path}: not a readable CSV file ({str(exc).strip().splitlines()[-1][:200]})."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty. Fix: a CSV needs a header row with the column names and one row per sample."
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    if len(frame.columns) != len(header):
        raise DataError(f"{path}: the header has {len(header)} names but pandas read {len(frame.columns)} columns. "
                        "Fix: check the quoting of the header row.")
    frame.columns = header
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no data rows. Fix: add one row per sample.")
    return frame, Lines(len(frame), path=path, delimiter=delimiter, unit="line")


def _read_parquet(path: Path, nrows: int | None) -> Any:
    try:
        import pandas as pd

        if nrows is not None:
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(path).iter_batches(batch_size=nrows), None)
            return batch.to_pandas() if batch is not None else pd.read_parquet(path)
        return pd.read_parquet(path)
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet files needs pyarrow. Fix: pip install pyarrow (or save the table as CSV)."
        ) from None
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]}).") from None


def _read_jsonl(path: Path, nrows: int | None) -> Any:
    import pandas as pd

    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty. Fix: one JSON object per line, e.g. {{\"x\": 1, \"label\": \"a\"}}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dates stay text: the encoder decides what is a date, as for a CSV
            return pd.read_json(path, lines=True, nrows=nrows, dtype=False, convert_dates=False, precise_float=True,
                                keep_default_dates=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}). Fix: save the file as UTF-8.") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a readable JSON Lines file ({str(exc).splitlines()[0][:200]}). "
                        "Fix: one JSON object per line, each with the same keys.") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (asked without importing pandas)."""
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


def read_frame(
    source: Any, *, delimiter: str | None = None, text: bool = False, nrows: int | None = None,
) -> tuple[Any, Lines]:
    """A table file (or a pandas DataFrame, used as it is) as a DataFrame with string column
    names, and each row's line (:class:`Lines`). ``delimiter`` overrides a CSV's sniffed one;
    ``text`` reads a CSV's cells as text, as written; ``nrows`` reads only the first rows."""
    if is_frame(source):
        header = [str(c) for c in source.columns]
        check_names("DataFrame", header)
        if len(header) == 0:
            raise DataError("DataFrame: the frame has no columns. Fix: a table needs named columns and one row per sample.")
        if len(source) == 0:
            raise DataError("DataFrame: the frame has columns but no rows. Fix: add one row per sample.")
        frame = source if list(source.columns) == header else source.set_axis(header, axis=1)
        if nrows is not None:
            frame = frame.iloc[:nrows]
        return frame, Lines(len(frame), unit="row")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file. Fix: set data.path to an existing table file "
                        "(.csv, .tsv, .parquet or .jsonl).")
    if path.is_dir():
        raise DataError(
            f"{path}: is a folder, not a table. Fix: point data.path at the .csv file "
            "(an image folder is read by data.dataset: folder)."
        )
    suffix = _suffix(path)
    if suffix in (".parquet", ".pq"):
        frame = _read_parquet(path, nrows)
    elif suffix == ".jsonl":
        frame = _read_jsonl(path, nrows)
    else:
        return _read_csv(path, delimiter or ("\t" if suffix == ".tsv" else None), text, nrows)
    if len(frame.columns) == 0:
        raise DataError(f"{path}: the file is empty. Fix: a table needs named columns and one row per sample.")
    header = [str(c).strip() for c in frame.columns]
    check_names(path, header)
    frame.columns = header
    if len(frame) == 0:
        raise DataError(f"{path}: the file has columns but no rows. Fix: add one row per sample.")
    return frame, Lines(len(frame), unit="line" if suffix == ".jsonl" else "row")


def peek_table(path: str | Path, rows: int = 1000, *, delimiter: str | None = None) -> Any:
    """The first ``rows`` rows of a table file as a pandas DataFrame, read by the same rules as
    training (suffix, delimiter, missing cells, header checks): for inferring a config from a file."""
    frame, _ = read_frame(path, delimiter=delimiter, nrows=int(rows))
    return frame


def frame_rows(frame: Any) -> tuple[list[str], list[list[str]]]:
    """A pandas DataFrame's header and rows as text cells (missing -> ""): the text and series
    kinds' view of a Parquet file or a frame."""
    header = [str(c) for c in frame.columns]
    columns = [_text_cells(frame.iloc[:, j]) for j in range(len(header))]
    return header, [list(row) for row in zip(*columns)] if columns else []


def _text_cells(series: Any) -> list[str]:
    values = ColumnValues.of(series)
    codes, texts = values.codes()
    table = np.array(texts + [""], dtype=object)
    return table[codes].tolist()


def read_table(path: str | Path, *, delimiter: str | None = None) -> tuple[list[str], list[list[str]], Lines]:
    """Header, rows of text cells and each row's line (CSV) or row number (Parquet): the text and
    series kinds' reader (a table run reads typed columns: :func:`load_table`)."""
    frame, lines = read_frame(path, delimiter=delimiter, text=True)
    header = list(frame.columns)
    if all(_is_text_dtype(t) for t in frame.dtypes):
        cells = [frame.iloc[:, j].fillna("").astype(str).str.strip().tolist() for j in range(len(header))]
        rows = [list(row) for row in zip(*cells)]
    else:
        header, rows = frame_rows(frame)
    return header, rows, lines


def _is_text_dtype(dtype: Any) -> bool:
    import pandas as pd

    return pd.api.types.is_string_dtype(dtype) or dtype == object


@dataclass
class Table:
    """A table's columns: the feature columns, the target and (optionally) the group column.

    Rows whose target is missing are already dropped; ``lines`` are the kept rows' lines.
    ``columns`` maps a feature column to its values (:class:`ColumnValues`, or anything
    :meth:`ColumnValues.of` takes).
    """

    path: Path
    columns: dict[str, Any]
    target_name: str
    target: Any
    lines: Any
    groups: np.ndarray | None = None
    group_by: str | None = None
    where: str = field(default="")

    def __post_init__(self) -> None:
        self.columns = {name: ColumnValues.of(values) for name, values in self.columns.items()}
        self.target = ColumnValues.of(self.target)
        self.where = self.where or str(self.path)

    def __len__(self) -> int:
        return len(self.target)

    def rows(self, index: Sequence[int]) -> dict[str, ColumnValues]:
        """The feature columns' values at rows ``index``."""
        return {name: values.take(index) for name, values in self.columns.items()}


def check_column(path: Any, header: list[str], name: str, key: str, fix: str | None = None) -> None:
    """Refuse a table whose header lacks the column ``name`` (the config key ``key`` named it),
    with the closest column names and a hint when the file uses another separator. ``fix`` says
    what to do (default: set ``key`` to one of the columns)."""
    if name not in header:
        hint = _suggest(name, header)
        sep = next((s for s in (";", "\t", "|", ",") if len(header) == 1 and s in header[0]), None)
        extra = (f" The header is one column; the file seems to use {sep!r} as a separator (set data.delimiter)."
                 if sep else "")
        raise DataError(
            f"{path}: no column {name!r} ({key}).{hint} Columns: {_column_list(header)}.{extra} "
            f"Fix: {fix or f'set {key} to one of the columns'}."
        )


def labelled_rows(
    path: Path, rows: list[list[str]], lines: Sequence[int], position: dict[str, int], target: str,
    group_by: str | None, noun: str = "target",
) -> tuple[list[int], list[str] | None]:
    """The rows (text cells) that have a value in the ``target`` column (the others are left out
    with a warning) and, with ``group_by``, each kept row's group (every kept row must have one)."""
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


def _sorted_codes(values: ColumnValues) -> np.ndarray:
    """Codes of a column's values in the sorted order of their text (-1 where missing), so that
    splits by group are the same whatever the reader's order of first appearance."""
    codes, texts = values.codes()
    order = np.argsort(np.array(texts, dtype=object), kind="stable") if texts else np.zeros(0, np.int64)
    rank = np.empty(len(texts) + 1, dtype=np.int64)
    rank[order] = np.arange(len(texts))
    rank[-1] = -1
    return rank[codes]


def load_table(
    source: Any,
    target: str | None,
    *,
    features: Sequence[str] | None = None,
    group_by: str | None = None,
    delimiter: str | None = None,
) -> Table:
    """Read a table into typed columns and check them (nothing is fitted here).

    ``source`` is a file path (CSV, TSV, Parquet, JSON Lines) or a pandas DataFrame.
    ``target`` names the column to predict; ``features`` picks the input columns (default:
    every other column but ``group_by``); ``group_by`` names a column whose rows must stay in
    one split together; ``delimiter`` overrides a CSV's sniffed delimiter. Rows with a missing
    target are dropped with a warning.
    """
    frame_given = is_frame(source)
    path = Path("DataFrame") if frame_given else Path(source).expanduser()
    if target is None or (isinstance(target, str) and not target.strip()):
        raise DataError(
            f"{path}: a table needs a target column: set data.target to its name (e.g. data.target: label)."
        )
    frame, lines = read_frame(source, delimiter=delimiter)
    header = list(frame.columns)
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
    target_values = ColumnValues.of(frame[target])
    absent = target_values.missing()
    keep = None
    if absent.all():
        raise DataError(
            f"{path}: column {target!r} (data.target) is entirely missing: every row's value is empty or NA. "
            "Fix: fill in the targets, or set data.target to the target column."
        )
    if absent.any():
        first = lines[int(np.argmax(absent))]
        warnings.warn(
            f"{path}: {int(absent.sum())} row(s) have no value in the target column {target!r} "
            f"({'first on line' if lines.unit == 'line' else 'first in row'} {first}); they are left out.",
            stacklevel=2,
        )
        keep = np.flatnonzero(~absent)
        target_values, lines = target_values.take(keep), lines.take(keep)
    groups = None
    if group_by is not None:
        group_values = ColumnValues.of(frame[group_by])
        if keep is not None:
            group_values = group_values.take(keep)
        gaps = np.flatnonzero(group_values.missing())
        if len(gaps):
            raise DataError(
                f"{path}: column {group_by!r} (data.group_by) is missing in {len(gaps)} row(s), first on line "
                f"{lines[int(gaps[0])]}. Fix: give every row a group."
            )
        groups = _sorted_codes(group_values)
    columns = {}
    for name in feature_cols:
        values = ColumnValues.of(frame[name])
        columns[name] = values.take(keep) if keep is not None else values
    return Table(path=path, columns=columns, target_name=target, target=target_values, lines=lines, groups=groups,
                 group_by=group_by, where="DataFrame" if frame_given else str(path))


def table_target(table: Table, task: str = "auto") -> tuple[np.ndarray, list[str], str]:
    """The target as class indices (classification) or float64 values (regression).

    Returns ``(y, classes, task)``; ``classes`` is empty for regression. ``task: auto``
    takes a numeric target with more than 20 distinct values (or with fractions) as a
    regression target, and says so. Integer classes are sorted numerically, others as text.
    """
    where = f"{table.path}: column {table.target_name!r} (data.target)"
    values = ColumnValues.of(table.target)
    numbers = values.numeric()
    if numbers is not None and np.isnan(numbers).any():
        numbers = None  # a target the reader left missing (dropped rows are gone): not a usable number
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
            i = values.first_not_number()
            raise DataError(
                f"{where} holds {values.cell(i)!r} on line {table.lines[i]}: a regression task needs a numeric "
                "target. Fix: set data.task: classification, or choose a numeric data.target."
            )
        if not np.all(np.isfinite(numbers)):
            i = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise DataError(f"{where} holds {values.cell(i)!r} on line {table.lines[i]}. Fix: give a finite number.")
        return numbers, [], "regression"
    y, classes = _labels(values, numbers)
    if len(classes) < 2:
        only = f" (every row is {classes[0]!r})" if classes else ""
        raise DataError(
            f"{where} has {len(classes)} distinct value(s){only}; a classifier needs at least 2 classes. "
            "Fix: check data.target names the label column."
        )
    return y, classes, "classification"


def _labels(values: ColumnValues, numbers: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names: integers sorted numerically, anything else as sorted text."""
    if numbers is not None and np.all(numbers == np.round(numbers)) and np.all(np.abs(numbers) < 2**53):
        unique, y = np.unique(numbers, return_inverse=True)
        return y.reshape(-1).astype(np.int64), [str(int(v)) for v in unique]
    codes, texts = values.codes()
    order = sorted(range(len(texts)), key=lambda i: texts[i])
    rank = np.empty(len(texts), dtype=np.int64)
    rank[order] = np.arange(len(texts))
    return rank[codes].astype(np.int64), [texts[i] for i in order]


def load_csv(
    path: str | Path,
    target: str | None,
    *,
    features: Sequence[str] | None = None,
    name: str = "csv",
    delimiter: str | None = None,
) -> ImageDataset:
    """A classification table encoded as (N, F) float32 features, for a quick look at a file.

    Numeric columns keep their values (unscaled); text columns are one-hot; missing cells
    are imputed with a missing-indicator feature. The encoder is fitted on EVERY row here,
    which is fine for looking at data but not for honest figures: training fits it on the
    training split only (:func:`deepworks.pipeline.prepare_data`).
    """
    table = load_table(path, target, features=features, delimiter=delimiter)
    y, classes, _ = table_target(table, "classification")
    # unscaled: numeric columns keep their values (scaling needs training-split statistics)
    encoder = TableEncoder.fit(table.columns, scaling="none", lines=table.lines, where=table.where)
    x = encoder.transform(table.columns, lines=table.lines, where=table.where)
    return ImageDataset(
        name, torch.from_numpy(x), torch.from_numpy(y), classes, source=str(table.path.resolve()),
        features=encoder.feature_names,
    )


def feature_matrix(columns: dict[str, Any], features: Sequence[str], lines: Sequence[int], where: str) -> np.ndarray:
    """The ``features`` columns' cells as float32 (N, F), for runs from before the table encoder
    (their cells are read as text, one at a time, as they always were); a cell that is not a
    finite number (empty, text, nan, inf) is an error naming ``where``, its line and column."""
    n = len(lines)
    x = np.empty((n, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        values = columns[name]
        cells = [values.cell(i) for i in range(n)] if isinstance(values, ColumnValues) else list(values)
        for i, cell in enumerate(cells):
            cell = "" if cell is None else str(cell).strip()
            value = _as_float_or_nan(cell)
            if not math.isfinite(value):
                raise DataError(
                    f"{where}: line {lines[i]}, column {name!r}: {cell!r} is not a finite number. "
                    "Fix: give every feature a numeric value."
                )
            x[i, j] = value
    return x


def _as_float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@DATASETS.register(
    "csv", description="a CSV file of numeric feature columns and a label column (data.path, data.target)"
)
def _load_csv(
    *, path: str | Path | None = None, target: str | None = None, features: list[str] | None = None,
    delimiter: str | None = None, **_: Any
) -> ImageDataset:
    if path is None:
        raise ConfigError("data.path: the csv dataset needs a path to a CSV file (data.path: file.csv).")
    return load_csv(path, target, features=features, delimiter=delimiter)
