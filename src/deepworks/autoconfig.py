"""Training without a config: the config that a folder of images or a table implies.

``deepworks train photos/`` and ``deepworks train table.csv --target y`` call
:func:`config_for_data`, which returns the few keys that say what the data is; every other key
takes the kind's default, as in any config::

    >>> config_for_data("photos/")                                       # doctest: +SKIP
    {'name': 'photos', 'data': {'path': 'photos'}}
    >>> config_for_data("houses.csv", target="price")                    # doctest: +SKIP
    {'name': 'houses', 'data': {'path': 'houses.csv', 'target': 'price', 'task': 'regression'}}

The rules, applied to the first rows of a table only:

- a folder is an image folder (one subfolder of images per class);
- a table with ``time`` is a forecast of ``target`` (``data.time``);
- a table with ``text`` is text classification; without it, a single text-like column besides
  the target (values of several words, mostly distinct) makes it one;
- a column whose values are image files that exist beside the table is an image list
  (``data.image``);
- otherwise a table: a numeric target with fractions or more than 20 distinct values is a
  regression, two distinct values or any non-numeric value are classes, and whole numbers in
  between are refused as ambiguous unless ``task`` settles it;
- without ``target``, the one column named label, target, class or y (any case).

What cannot be inferred is a one-line :class:`~deepworks.errors.ConfigError` or
:class:`~deepworks.errors.DataError` naming the option that settles it: the command-line option
(``--target COLUMN``, the keyword argument of the same name here), or the keyword argument itself
(``target=COLUMN``) where :func:`infer_data` is told so (``spelling="keywords"``, as
``deepworks.train(source=df, ...)`` does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepworks.config import TABLE_SUFFIXES, is_table_path
from deepworks.data.images import IMAGE_EXTENSIONS
from deepworks.data.tabular import REGRESSION_MIN_DISTINCT, peek_table
from deepworks.errors import ConfigError, DataError, close_matches

__all__ = ["config_for_data", "infer_data", "is_data_path", "TARGET_NAMES", "PEEK_ROWS"]

# a target column found by name when none is given (compared in lower case)
TARGET_NAMES = ("label", "target", "class", "y")
# the rows of a table the inference reads: enough to see its columns' types, cheap on any file
PEEK_ROWS = 1000
# a text-like column: values of at least this many words on average, and at least this share distinct
TEXT_MIN_WORDS = 4
TEXT_MIN_DISTINCT = 0.5
# image-list columns: how many of the first paths are checked on disk
IMAGE_CHECK = 20
# how the errors of infer_data name the options that settle them: the command line's or Python's
SPELLINGS = ("flags", "keywords")


def is_data_path(path: str | Path) -> bool:
    """Whether ``deepworks train PATH`` means data rather than a config: a folder or a table file
    (a ``.yaml``/``.yml`` file, or any other file, is a config as before)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return False
    return is_table_path(path) or path.is_dir() or (not path.exists() and path.suffix == "")


def config_for_data(
    source: str | Path | pd.DataFrame,
    target: str | None = None,
    text: str | None = None,
    time: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """The config (a mapping, before validation) for training on ``source``: a folder of class
    subfolders, a table file or a pandas DataFrame. ``target``, ``text`` and ``time`` name
    columns, ``task`` is ``classification`` or ``regression``; each is inferred when left out
    (see the module's rules) and refused with a one-line error when it cannot be.

    A file or folder gives ``name`` (from its name) and ``data.path``; a DataFrame gives the data
    keys only, since where its rows come from is up to the caller.
    """
    if task is not None and task not in ("classification", "regression"):
        raise ConfigError(f"--task: expected classification or regression, got {task!r}.")
    if isinstance(source, pd.DataFrame):
        return {"data": infer_data(source, "the DataFrame", Path.cwd(), target, text, time, task)}
    path = Path(source).expanduser()
    if path.is_dir():
        given = [f"--{flag}" for flag, value in (("target", target), ("text", text), ("time", time), ("task", task))
                 if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: {path} is a folder of images, whose classes are its subfolders; "
                f"remove {', '.join(given)} (they name the columns of a table file)."
            )
        return {"name": _run_name(path), "data": {"path": str(source)}}
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder. Fix: give a folder with one subfolder of images per class, a table "
            f"file ({', '.join(TABLE_SUFFIXES)}) or a config (.yaml)."
        )
    if not is_table_path(path):
        raise DataError(
            f"{path}: not a folder, a table ({', '.join(TABLE_SUFFIXES)}) or a config (.yaml). Fix: give one of these."
        )
    frame = peek_table(path, PEEK_ROWS)  # read by the rules training reads the whole file with
    _check_header(path, frame)
    data = infer_data(frame, str(path), path.parent, target, text, time, task)
    return {"name": _run_name(path), "data": {"path": str(source), **data}}


def infer_data(
    frame: pd.DataFrame,
    where: str,
    root: Path,
    target: str | None = None,
    text: str | None = None,
    time: str | None = None,
    task: str | None = None,
    *,
    spelling: str = "flags",
) -> dict[str, Any]:
    """The ``data`` keys (all but ``path``) for a table whose first rows are ``frame``; ``where``
    names it in errors and image paths in it are relative to ``root``. ``spelling`` says how the
    errors name the options that settle them: ``flags`` (``--target COLUMN``, the command line) or
    ``keywords`` (``target=COLUMN``, a Python call such as ``deepworks.train(source=df, ...)``)."""
    if spelling not in SPELLINGS:
        raise ValueError(f"spelling: expected one of {', '.join(SPELLINGS)}, got {spelling!r}.")
    say = _Options(spelling == "keywords")
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    for flag, name in (("target", target), ("text", text), ("time", time)):
        if name is not None:
            _check_column(where, columns, name, flag, say)
    if time is not None:
        if text is not None:
            raise ConfigError(f"{say('text', text)} and {say('time', time)}: a run classifies texts or forecasts a "
                              "series, not both. Fix: remove one of the two.")
        if task is not None:
            raise ConfigError(f"{say('task', task)}: {say('time')} makes this a forecast of numbers. "
                              f"Fix: remove {say('task')}.")
        return {"time": time, "target": target or _series_target(frame, where, columns, time, say)}
    if text is None:
        image = _image_column(frame, where, root, columns, exclude=target)
        if image is not None:
            if task == "regression":
                raise ConfigError(f"{say('task', 'regression')}: {where} lists image files in column {image!r}; "
                                  f"image lists are classified. Fix: remove {say('task')}.")
            return {"image": image, "target": target or _named_target(where, columns, say, exclude=(image,))}
    target = target or _named_target(where, columns, say, exclude=(text,) if text else ())
    if text is None:
        texts = [c for c in columns if c != target and _text_like(frame[c])]
        if len(texts) > 1:
            raise ConfigError(
                f"{where}: columns {', '.join(map(repr, texts))} all look like text; a text run learns from one. "
                f"Fix: {say.placeholder('text')} (e.g. {say('text', texts[0])})."
            )
        text = texts[0] if texts else None
    if text is not None:
        if text == target:
            raise ConfigError(f"{say('text')} and {say('target')} both name {text!r}. Fix: the label is another column.")
        if task == "regression":
            raise ConfigError(f"{say('task', 'regression')}: texts are classified ({where}, text column {text!r}). "
                              f"Fix: remove {say('task')}.")
        return {"text": text, "target": target}
    return {"target": target, "task": task or _task(frame[target], where, target, say)}


class _Options:
    """An option of :func:`infer_data` as its caller spells it: ``--target``, ``--target species``
    and ``--target COLUMN`` on the command line; ``target=``, ``target='species'`` and
    ``target=COLUMN`` as a keyword argument in Python."""

    def __init__(self, keywords: bool) -> None:
        self.keywords = keywords

    def __call__(self, name: str, value: str | None = None) -> str:
        if value is None:
            return f"{name}=" if self.keywords else f"--{name}"
        return f"{name}={value!r}" if self.keywords else f"--{name} {value}"

    def placeholder(self, name: str) -> str:
        """The option with a placeholder for the column's name."""
        return f"{name}=COLUMN" if self.keywords else f"--{name} COLUMN"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _check_header(path: Path, frame: pd.DataFrame) -> None:
    """Refuse a file whose first row is data: every header cell a number, or a value of its own
    column (pandas numbers repeated names ``x.1``, ``x.2``)."""
    header = [str(c) for c in frame.columns]
    plain = [re.sub(r"\.\d+$", "", h) if not _is_number(h) else h for h in header]
    numbers = [h for h in plain if _is_number(h)]
    if not numbers:
        return
    for name, cell in zip(header, plain):
        if _is_number(cell):
            continue
        values = set(frame[name].dropna().astype(str).str.strip())
        if cell.strip() not in values:
            return
    shown = ", ".join(header[:5]) + (", ..." if len(header) > 5 else "")
    raise DataError(
        f"{path}: the first row ({shown}) looks like data, not column names: the file has no header row. "
        "Fix: add a first line naming the columns (e.g. x1,x2,label)."
    )


# --------------------------------------------------------------------------- columns


def _check_column(where: str, columns: Sequence[str], name: str, flag: str, say: _Options) -> None:
    if name not in columns:
        hint = close_matches(name, columns, n=1)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        raise DataError(f"{where}: no column {name!r} ({say(flag)}).{did} Columns: {_listed(columns)}. "
                        f"Fix: {say(flag)} one of the columns.")


def _listed(columns: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _named_target(where: str, columns: Sequence[str], say: _Options, exclude: Sequence[str] = ()) -> str:
    found = [c for c in columns if c.strip().lower() in TARGET_NAMES and c not in exclude]
    if len(found) == 1:
        return found[0]
    why = (f"columns {', '.join(map(repr, found))} could each be the target" if found
           else f"no column is named {', '.join(TARGET_NAMES[:-1])} or {TARGET_NAMES[-1]}")
    raise ConfigError(f"{where}: which column is the target? {why}. Columns: {_listed(columns)}. "
                      f"Fix: {say.placeholder('target')}.")


def _series_target(frame: pd.DataFrame, where: str, columns: Sequence[str], time: str, say: _Options) -> str:
    """The column to forecast when none is named: one named like a target, else the one numeric column."""
    named = [c for c in columns if c.strip().lower() in TARGET_NAMES and c != time]
    if len(named) == 1:
        return named[0]
    numeric = [c for c in columns if c != time and _numeric(frame[c])]
    if len(numeric) == 1 and not named:
        return numeric[0]
    raise ConfigError(f"{where}: which column is forecast? Columns: {_listed(columns)}. "
                      f"Fix: {say.placeholder('target')}.")


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _text_like(column: pd.Series) -> bool:
    """Free text: values of several words on average, mostly distinct (not a category, not a number)."""
    if _numeric(column) or pd.api.types.is_bool_dtype(column):
        return False
    values = column.dropna().astype(str)
    if values.empty:
        return False
    words = values.str.split().str.len().mean()
    return bool(words >= TEXT_MIN_WORDS and values.nunique() / len(values) >= TEXT_MIN_DISTINCT)


def _image_column(frame: pd.DataFrame, where: str, root: Path, columns: Sequence[str],
                  exclude: str | None) -> str | None:
    """The column whose values are all image file names (an image list), checked on disk."""
    found = []
    for name in columns:
        column = frame[name]
        if name == exclude or _numeric(column) or pd.api.types.is_bool_dtype(column):
            continue
        values = column.dropna().astype(str).str.strip()
        if not values.empty and all(Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values):
            found.append(name)
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(f"{where}: columns {', '.join(map(repr, found))} all list image files. Fix: write a config "
                          f"naming one of them (data.image: {found[0]}).")
    name = found[0]
    first = [str(v).strip() for v in frame[name].dropna().head(IMAGE_CHECK)]
    if not any((root / v).is_file() for v in first):
        raise DataError(
            f"{where}: column {name!r} lists image files, but none of the first {len(first)} exists relative to "
            f"{root} (e.g. {first[0]!r}). Fix: the paths in the column are relative to the table's folder."
        )
    return name


def _task(column: pd.Series, where: str, name: str, say: _Options) -> str:
    """classification or regression for a table's target, refusing whole numbers that could be either."""
    values = column.dropna()
    if not _numeric(values):
        return "classification"
    numbers = values.to_numpy(dtype=float)
    distinct = len(set(numbers.tolist()))
    if distinct > REGRESSION_MIN_DISTINCT or not (numbers == numbers.round()).all():
        return "regression"
    if distinct <= 2:
        return "classification"
    shown = ", ".join(f"{v:g}" for v in sorted(set(numbers.tolist()))[:6]) + (", ..." if distinct > 6 else "")
    raise ConfigError(
        f"{where}: the target {name!r} holds {distinct} distinct whole numbers ({shown}): classes or quantities? "
        f"Fix: {say('task', 'classification')} or {say('task', 'regression')}."
    )


def _run_name(path: Path) -> str:
    """A run name from a file or folder name (letters, digits, '.', '_', '-'; at most 64)."""
    stem = path.resolve().name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return name or "run"
