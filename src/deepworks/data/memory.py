"""Data given in Python rather than as files: ``deepworks.train(source=...)``.

A source is a pandas DataFrame (a table, texts or a series, with ``target``/``text``/``time``
naming its columns as a config's data section does), numpy arrays or tensors ``(X, y)`` (images as
(N, C, H, W), (N, H, W) or (N, H, W, C); a 2-D ``X`` is a table of numeric columns ``x0``, ``x1``,
...), or a torch ``Dataset`` whose items are ``(input, label)`` pairs (tensors, arrays or PIL
images; read once, in order).

The run's config records the data's SHA-256 (``data.fingerprint``), never the data itself: while a
call that was given the data runs, :func:`provided` holds it under that digest, and the loaders
find it there (``data.dataset: arrays`` for images; ``dataframe`` for tables, texts and series,
through :func:`given_frame`). A later call on the run (``deepworks.resume``,
``deepworks.evaluate``, ``deepworks.export``) is given the data again and checks it is the same.

>>> import numpy as np
>>> src = as_source((np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1])))
>>> src.kind, tuple(src.images.x.shape), src.images.classes
('images', (4, 1, 8, 8), ['0', '1'])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepworks.config import MEMORY_DATASETS
from deepworks.data.containers import ImageDataset
from deepworks.data.datasets import DATASETS, _conform
from deepworks.data.images import ImageSpec, pixels_to_uint8
from deepworks.data.tabular import is_frame
from deepworks.errors import ConfigError, DataError

__all__ = ["Source", "as_source", "provided", "given", "given_frame", "MEMORY_DATASETS", "TABLE_TARGET"]

# the label column of a table made from arrays (X, y); the input columns are x0, x1, ...
TABLE_TARGET = "y"


@dataclass
class Source:
    """Data given in Python, in the form its loader takes: ``images`` (uint8 (N, C, H, W)) or ``frame``."""

    kind: str  # "images" or "frame"
    fingerprint: str
    images: ImageDataset | None = None
    frame: Any = None  # pandas.DataFrame
    target: str | None = None  # the frame's label column when the source named it (arrays, Dataset)

    @property
    def dataset(self) -> str:
        """The ``data.dataset`` name that loads this source."""
        return "arrays" if self.kind == "images" else "dataframe"

    def describe(self) -> str:
        if self.images is not None:
            return f"{len(self.images.y)} images {tuple(self.images.x.shape[1:])}"
        return f"a table of {len(self.frame)} rows and {len(self.frame.columns)} columns"


_GIVEN: dict[str, Source] = {}


@contextmanager
def provided(source: Source) -> Iterator[Source]:
    """Hold ``source`` under its fingerprint while the block runs (a config naming it can be loaded)."""
    before = _GIVEN.get(source.fingerprint)
    _GIVEN[source.fingerprint] = source
    try:
        yield source
    finally:
        if before is None:
            _GIVEN.pop(source.fingerprint, None)
        else:
            _GIVEN[source.fingerprint] = before


def given(fingerprint: str | None, what: str, call: str | None = None) -> Source:
    """The data a config's ``data.fingerprint`` names; a ConfigError saying how to give it when it
    was not: to ``deepworks.<call>(run, source=...)`` when the caller says which call it is, else to
    the calls that take it."""
    source = _GIVEN.get(fingerprint or "")
    if source is None:
        calls = [call] if call is not None else ["evaluate", "resume", "export"]
        raise ConfigError(
            f"{what} trained on data given in Python (deepworks.train(source=...), SHA-256 {str(fingerprint)[:12]}...), "
            f"which this call was not given. Fix: pass the same data again "
            f"({', '.join(f'deepworks.{c}(run, source=...)' for c in calls)}), or train from a file to use the run "
            "from the command line."
        )
    return source


def given_frame(data_config: Any) -> Any:
    """The pandas DataFrame a config's data section trains on when it was given in Python
    (``data.dataset: dataframe``, held under ``data.fingerprint``), else None (the data is a file,
    ``data.path``, or a built-in set). The table, text and series kinds read it where they would
    read the file."""
    if data_config.dataset != "dataframe":
        return None
    frame = given(data_config.fingerprint, "this run").frame
    if frame is None:
        raise ConfigError("data.dataset: dataframe holds a table, but the data given is images. "
                          "Fix: data.dataset: arrays.")
    return frame


# ----------------------------------------------------------------------------- sources


def _is_dataset(value: Any) -> bool:
    return isinstance(value, torch.utils.data.Dataset) and hasattr(value, "__len__") and hasattr(value, "__getitem__")


def as_source(value: Any, target: str | None = None) -> Source:
    """``value`` (a DataFrame, ``(X, y)`` or a torch ``Dataset``) as a :class:`Source`, checked and fingerprinted."""
    if is_frame(value):
        if len(value) == 0 or len(value.columns) == 0:
            raise DataError("source: the DataFrame is empty. Fix: give one row per sample and one column per input.")
        return Source("frame", _frame_digest(value), frame=value)
    if _is_dataset(value):
        if target is not None:
            raise ConfigError("target: a torch Dataset gives (input, label) pairs; remove target.")
        return _from_dataset(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if target is not None:
            raise ConfigError("target: arrays (X, y) carry their labels in y; remove target.")
        return _from_arrays(_array(value[0], "X"), _array(value[1], "y"), "source (X, y)")
    raise DataError(
        f"source: expected a pandas DataFrame, arrays (X, y) or a torch Dataset of (input, label) pairs, got "
        f"{type(value).__name__}. Fix: pass one of those (or a file path as data.path)."
    )


def _array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"source: {name} is not an array ({exc}). Fix: give a numpy array or a tensor.") from None


def _from_arrays(x: np.ndarray, y: np.ndarray, where: str) -> Source:
    if y.ndim != 1:
        raise DataError(f"{where}: y must hold one label per sample (shape (N,)), got shape {y.shape}.")
    if len(x) != len(y):
        raise DataError(
            f"{where}: X has {len(x)} samples but y has {len(y)} labels. Fix: give one label per sample, in the same order."
        )
    if len(y) == 0:
        raise DataError(f"{where}: no samples. Fix: give at least one sample per class.")
    if x.ndim == 2:
        return _table_from_arrays(x, y, where)
    images = _pixels(x, where)
    classes, labels = _classes(y, where)
    spec = ImageSpec(images.shape[1], (images.shape[2], images.shape[3]))
    ds = ImageDataset(
        "arrays", torch.from_numpy(images), torch.from_numpy(labels), classes, source="memory", spec=spec,
    )
    digest = _digest([np.ascontiguousarray(images), labels, np.array(classes, dtype=object).astype(str)])
    return Source("images", digest, images=ds)


def _table_from_arrays(x: np.ndarray, y: np.ndarray, where: str) -> Source:
    import pandas as pd

    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}: a 2-D X is a table of numbers, got dtype {x.dtype}. Fix: give numeric columns, "
                        "or a DataFrame for columns of text or categories.")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame[TABLE_TARGET] = y
    return Source("frame", _frame_digest(frame), frame=frame, target=TABLE_TARGET)


def _pixels(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 (N, C, H, W) pixels from (N, H, W), (N, C, H, W) or (N, H, W, C) values."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> first
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) with 1 or 3 channels, got shape "
            f"{tuple(x.shape)}. Fix: give 2-D X (N, F) for a table, or images in one of those shapes."
        )
    return np.ascontiguousarray(pixels_to_uint8(x, where))


def _classes(y: np.ndarray, where: str) -> tuple[list[str], np.ndarray]:
    """Class names and indices: integers sorted numerically, anything else as sorted strings."""
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DataError(f"{where}: image labels must be classes (integers or names), got fractional values.")
        y = y.astype(np.int64)
    if y.dtype.kind in "iub":
        values, labels = np.unique(y, return_inverse=True)
        return [str(v) for v in values.tolist()], labels.astype(np.int64)
    values, labels = np.unique(y.astype(str), return_inverse=True)
    return [str(v) for v in values.tolist()], labels.astype(np.int64)


def _from_dataset(dataset: Any) -> Source:
    """Read a torch Dataset of (input, label) pairs once, in order, into arrays."""
    from deepworks.data.images import pixels_from_pil

    n = len(dataset)
    if n == 0:
        raise DataError("source: the Dataset is empty. Fix: give a Dataset with at least one (input, label) item.")
    inputs, labels = [], []
    for i in range(n):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(
                f"source: item {i} of the {type(dataset).__name__} is {type(item).__name__}, not an (input, label) pair."
                " Fix: return (input, label) from __getitem__."
            )
        x, label = item
        if hasattr(x, "getpixel") and hasattr(x, "mode"):  # a PIL image
            x = pixels_from_pil(x).numpy()
        x = _array(x, f"item {i}'s input")
        if inputs and x.shape != inputs[0].shape:
            raise DataError(
                f"source: item {i}'s input has shape {x.shape} but item 0's {inputs[0].shape}. Fix: give inputs of one "
                "shape (resize images in the Dataset's transform)."
            )
        inputs.append(x)
        labels.append(label.item() if isinstance(label, torch.Tensor) else label)
    x_all, y_all = np.stack(inputs), np.asarray(labels)
    where = f"source ({type(dataset).__name__})"
    if x_all.ndim == 2:
        return _table_from_arrays(x_all, y_all, where)
    return _from_arrays(x_all, y_all, where)


def _digest(parts: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str((part.dtype.str, part.shape)).encode())
        h.update(part.tobytes() if part.dtype != object else "\x1f".join(map(str, part.ravel())).encode())
    return h.hexdigest()


def _frame_digest(frame: Any) -> str:
    """The SHA-256 of a DataFrame's column names, types and values (row order counts, the index does not)."""
    import pandas as pd

    h = hashlib.sha256()
    h.update("\x1f".join(f"{c}:{t}" for c, t in zip(map(str, frame.columns), map(str, frame.dtypes))).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- loader


@DATASETS.register("arrays", description="images given in Python: deepworks.train(source=(X, y)) or a torch Dataset")
def _load_arrays(
    *, fingerprint: str | None = None, image_size: tuple[int, int] | None = None, channels: int | None = None, **_: Any
) -> ImageDataset:
    ds = given(fingerprint, "this run").images
    if ds is None:
        raise ConfigError("data.dataset: arrays holds images, but the data given is a table. Fix: data.dataset: dataframe.")
    x, scale = _conform(ds.x, ds.scale, image_size, channels)
    if x is ds.x:
        return ds
    spec = ImageSpec(x.shape[1], (x.shape[2], x.shape[3]))
    return ImageDataset(ds.name, x, ds.y, ds.classes, source=ds.source, scale=scale, spec=spec)


@contextmanager
def given_again(config: Any, source: Any, what: str, call: str | None = None) -> Iterator[None]:
    """Run the block with the data a run trained on: ``source`` (checked against the run's
    ``data.fingerprint``) for a run trained on data given in Python, nothing for a run whose
    config names its data. A ConfigError when a source is missing (its fix names
    ``deepworks.<call>(run, source=...)``), needless or not the same."""
    d = config.data
    if d.dataset not in MEMORY_DATASETS:
        if source is not None:
            raise ConfigError(
                f"source=: {what} trained on the data its config names ({d.path or d.dataset}), not on data given in "
                "Python. Fix: remove source=."
            )
        yield
        return
    if source is None:
        given(d.fingerprint, what, call)  # already held (a call inside train), or the error saying how to give it
        yield
        return
    again = as_source(source)
    if again.fingerprint != d.fingerprint:
        raise DataError(
            f"source=: the data given ({again.describe()}, SHA-256 {again.fingerprint[:12]}...) differs from the data "
            f"{what} trained on (SHA-256 {str(d.fingerprint)[:12]}...). Fix: pass the same values in the same order."
        )
    with provided(again):
        yield
