"""Image lists: a table (CSV or Parquet) with one row per image, a column naming the image
file (``data.image``; relative paths start at the table's folder, absolute paths are kept) and a
column of labels (``data.target``), the layout of most published image sets.

An image list is the same image data as a folder of class subfolders, read by the same code
(:func:`~deepworks.data.folders.plan_files` and :func:`~deepworks.data.folders.open_plan`): the
memory budget that picks in-memory or streaming, duplicate detection, ``data.on_bad_file`` for
missing and unreadable files. The samples are ordered as a folder orders them, classes by name and
the files of a class by path, so the table's row order changes nothing: a list of a folder's files
gives the folder's split and figures. ``data.group_by`` names another column; rows that share its
value stay in one split.

>>> import tempfile, pathlib
>>> from PIL import Image
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for i in range(4):
...     Image.new("L", (8, 8), 40 * i).save(root / f"{i}.png")
>>> _ = (root / "labels.csv").write_text("file,label\\n3.png,dog\\n0.png,cat\\n1.png,cat\\n2.png,dog\\n")
>>> listed = read_image_list(root / "labels.csv", "file", "label")
>>> listed.classes, [(f.name, label) for f, label in listed.files]
(['cat', 'dog'], [('0.png', 0), ('1.png', 0), ('2.png', 1), ('3.png', 1)])
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepworks.data.datasets import DATASETS
from deepworks.data.folders import FolderPlan, check_loading, open_plan, plan_files
from deepworks.data.images import IMAGE_EXTENSIONS, check_on_bad_file
from deepworks.errors import ConfigError, DataError, close_matches

__all__ = ["ImageList", "open_image_list", "plan_image_list", "read_image_list"]

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SHOWN_COLUMNS = 30


@dataclass
class ImageList:
    """The rows of an image list, in the order a folder of the same files would have them."""

    path: Path  # the table
    files: list[tuple[Path, int]]  # (image file, label), sorted by label, then path
    classes: list[str]  # the labels' names, sorted
    class_where: list[str]  # how messages name each class
    missing: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason) of files that do not exist
    groups: np.ndarray | None = None  # one data.group_by value per entry of files


def _read_table(path: Path) -> Any:
    """The table as a pandas DataFrame of strings (missing cells NaN); one-line errors."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: image list not found. data.path must be a CSV file with a column of image files "
                        "(data.image) and a column of labels (data.target).")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, but data.image says data.path is a table listing image files. Fix: "
                        "remove data.image to read the folder's class subfolders, or point data.path at the CSV file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                frame = pd.read_parquet(path)
            except ImportError:
                raise DataError(f"{path}: reading Parquet files needs pyarrow. Fix: pip install 'deepworks[parquet]' "
                                "(or save the list as CSV).") from None
            return frame
        frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
        if len(frame.columns) == 1:  # a file separated by something else than commas: read it again with that
            other = next((s for s in (";", "\t", "|") if s in str(frame.columns[0])), None)
            if other is not None:
                frame = pd.read_csv(path, dtype=str, sep=other, encoding="utf-8-sig")
        return frame
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header line and one row per image.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}). Fix: save the list as UTF-8.") from None
    except Exception as exc:  # pandas and pyarrow raise their own types for malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot be read as a table ({first}). Fix: check that it is a CSV file with a "
                        "header line.") from None


def _check_column(path: Path, columns: list[str], name: str, key: str) -> None:
    if name in columns:
        return
    hint = close_matches(name, columns, n=1)
    shown = ", ".join(repr(c) for c in columns[:_SHOWN_COLUMNS]) + (
        f", ... ({len(columns)} in all)" if len(columns) > _SHOWN_COLUMNS else "")
    raise DataError(
        f"{path}: no column {name!r} ({key}).{f' Did you mean {hint[0]!r}?' if hint else ''} Columns: {shown}. "
        f"Fix: set {key} to one of the columns."
    )


def _strings(values: Any) -> list[str | None]:
    """A column's cells as stripped strings, None where missing (a float label 1.0 of a typed table stays "1.0")."""
    import pandas as pd

    out: list[str | None] = []
    for v in values.tolist():
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            out.append(None)
        else:
            text = str(v).strip()
            out.append(text or None)
    return out


def read_image_list(
    path: str | os.PathLike[str], image: str, target: str | None, *, group_by: str | None = None,
    on_bad_file: str = "warn",
) -> ImageList:
    """Read an image list: the image files and labels of its rows (files that do not exist are
    in :attr:`ImageList.missing`, for the caller to report as ``data.on_bad_file`` says), sorted
    as a folder sorts them, and each row's group with ``group_by``. Opens no image."""
    check_on_bad_file(on_bad_file)
    path = Path(path)
    if target is None:
        raise ConfigError(f"data.target: an image list ({path}) needs the column of labels. Fix: set data.target.")
    frame = _read_table(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    _check_column(path, columns, image, "data.image")
    _check_column(path, columns, target, "data.target")
    if image == target:
        raise DataError(f"{path}: data.image and data.target are both {image!r}; the labels need a column of their "
                        "own. Fix: set data.target to the label column.")
    if group_by is not None:
        _check_column(path, columns, group_by, "data.group_by")
        if group_by == target:
            raise DataError(f"{path}: data.group_by is the target column {target!r}. Fix: group by another column.")
    names, labels = _strings(frame[image]), _strings(frame[target])
    given = [n for n in names if n is not None]
    if not given:
        raise DataError(f"{path}: column {image!r} (data.image) is empty: no row names an image file. Fix: set "
                        "data.image to the column of file names.")
    if all(_NUMBER.fullmatch(n) for n in given):
        raise DataError(
            f"{path}: column {image!r} (data.image) holds numbers (e.g. {given[0]!r}), not image file paths. Fix: set "
            f"data.image to the column of file names (columns: {', '.join(repr(c) for c in columns[:_SHOWN_COLUMNS])})."
        )
    base = path.parent

    def located(name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else base / p

    if not any(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n in given) and not any(
        located(n).is_file() for n in given[:20]
    ):
        raise DataError(
            f"{path}: column {image!r} (data.image) does not hold image file paths (e.g. {given[0][:60]!r}: no image "
            f"suffix, no such file). Fix: set data.image to the column of file names, relative to {base} or absolute."
        )
    keep = [i for i in range(len(frame)) if labels[i] is not None and names[i] is not None]
    for what, column, cells in (("no label", target, labels), ("no file name", image, names)):
        empty = [i for i in range(len(frame)) if cells[i] is None]
        if not empty:
            continue
        message = f"{path}: {len(empty)} row(s) have {what} in column {column!r} (first: row {empty[0] + 1})"
        if what == "no file name" and on_bad_file == "error":
            raise DataError(f"{message}. Fix: fill them in or remove those rows, or set data.on_bad_file: warn to "
                            "skip them.")
        warnings.warn(f"{message}; they are left out.", stacklevel=2)
    if not keep:
        raise DataError(f"{path}: no row has both an image file (column {image!r}) and a label (column {target!r}).")
    groups: list[str | None] | None = None
    if group_by is not None:
        cells = _strings(frame[group_by])
        gaps = [i for i in keep if cells[i] is None]
        if gaps:
            raise DataError(f"{path}: column {group_by!r} (data.group_by) is missing in {len(gaps)} row(s), first "
                            f"row {gaps[0] + 1}. Fix: give every row a group.")
        groups = cells
    classes = sorted({labels[i] for i in keep})  # type: ignore[type-var]
    if len(classes) < 2:
        raise DataError(f"{path}: column {target!r} (data.target) has one label ({classes[0]!r}); a classifier needs "
                        "at least 2. Fix: set data.target to the label column.")
    code = {name: k for k, name in enumerate(classes)}
    seen: dict[Path, int] = {}
    rows: list[tuple[int, Path, int]] = []
    for i in keep:
        file, label = located(names[i]), code[labels[i]]  # type: ignore[index,arg-type]
        if seen.setdefault(file, i) != i and labels[seen[file]] != labels[i]:
            raise DataError(
                f"{path}: {names[i]!r} is listed with two labels ({labels[seen[file]]!r} on row {seen[file] + 1}, "
                f"{labels[i]!r} on row {i + 1}); an image has one label here. Fix: keep one of the rows."
            )
        rows.append((label, file, i))
    rows.sort(key=lambda r: (r[0], r[1]))  # as a folder: classes by name, then files by path (stable on ties)
    files: list[tuple[Path, int]] = []
    missing: list[tuple[Path, str]] = []
    listed: list[int] = []
    for label, file, i in rows:
        if file.exists():
            files.append((file, label))
            listed.append(i)
        else:
            missing.append((file, f"no such image file (row {i + 1}, {image} {names[i]!r}; relative paths start at "
                                  f"the list's folder {base})"))
    where = [f"{path}: class {name!r} (column {target!r})" for name in classes]
    group_values = None if groups is None else np.array([groups[i] for i in listed], dtype=object)
    return ImageList(path, files, classes, where, missing, group_values)


def plan_image_list(
    path: str | os.PathLike[str], *, image: str, target: str | None, group_by: str | None = None,
    image_size: tuple[int, int] | None = None, channels: int | None = None, resize: str = "auto",
    on_bad_file: str = "warn",
) -> FolderPlan:
    """Read an image list and every listed file's header (no pixels): the files, classes, groups
    and training size, as :func:`~deepworks.data.folders.plan_folder` gives them for a folder."""
    listed = read_image_list(path, image, target, group_by=group_by, on_bad_file=on_bad_file)
    if not listed.files:
        first = listed.missing[0]
        raise DataError(f"{listed.path}: none of its {len(listed.missing)} image file(s) exist (first: {first[0]}, "
                        f"{first[1]}). Fix: set data.image to the column of file names, relative to "
                        f"{listed.path.parent} or absolute.")
    return plan_files(
        listed.path, listed.files, listed.classes, listed.class_where, bad=listed.missing, groups=listed.groups,
        image_size=image_size, channels=channels, resize=resize,
    )


def open_image_list(
    path: str | os.PathLike[str], *, image: str, target: str | None, group_by: str | None = None,
    image_size: tuple[int, int] | None = None, channels: int | None = None, resize: str = "auto",
    on_bad_file: str = "warn", in_memory: bool | str = "auto", memory_budget: int | str | None = None,
    workers: int | None = None,
) -> Any:
    """Read an image list and load its images as an image folder is loaded
    (:func:`~deepworks.data.folders.open_folder`): an ``ImageDataset`` in memory or a
    ``FolderStream`` from disk, with ``groups`` set when ``group_by`` names a column."""
    check_loading(in_memory, memory_budget)
    plan = plan_image_list(path, image=image, target=target, group_by=group_by, image_size=image_size,
                           channels=channels, resize=resize, on_bad_file=on_bad_file)
    return open_plan(plan, on_bad_file=on_bad_file, in_memory=in_memory, memory_budget=memory_budget,
                     workers=workers, name="image-list")


@DATASETS.register("image-list", description="images listed in a table: data.path, data.image (files), data.target")
def _load_image_list(
    *, path: str | Path | None = None, image: str | None = None, target: str | None = None,
    group_by: str | None = None, image_size: tuple[int, int] | None = None, channels: int | None = None,
    on_bad_file: str = "warn", resize: str = "auto", in_memory: bool | str = "auto",
    memory_budget: int | str | None = None, **_: Any,
) -> Any:
    if path is None or image is None:
        raise ConfigError("data.image: an image list needs data.path (the table) and data.image (its column of "
                          "image files).")
    return open_image_list(
        path, image=image, target=target, group_by=group_by, image_size=image_size, channels=channels,
        resize=resize, on_bad_file=on_bad_file, in_memory=in_memory, memory_budget=memory_budget,
    )
