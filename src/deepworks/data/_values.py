"""Integer codes for the distinct values of a column (labels, groups, CSV cells), with missing values marked.

>>> codes, uniques = factorize(np.array(["b", "a", "", "b", "NA"]))
>>> codes.tolist(), uniques
([1, 0, -1, 1, -1], ['a', 'b'])
>>> factorize([2.5, float("nan"), 1.0])[0].tolist()
[1, -1, 0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from deepworks.data.features import MISSING_VALUES

__all__ = ["as_numpy", "factorize"]


def as_numpy(values: Any) -> np.ndarray:
    """``values`` (array, tensor, list) as a numpy array, without copying where it can."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (str, bytes)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return text.strip().lower() in MISSING_VALUES
    return False


def factorize(values: Any) -> tuple[np.ndarray, list[Any]]:
    """Codes 0..m-1 (int64) for the m distinct values of a 1-D column (-1 where a value is missing), and those values.

    Missing means None, NaN, or a string that a CSV reader takes for "no value" (empty,
    "NA", "nan", "?", ... as in :data:`deepworks.data.tabular.MISSING_VALUES`). Numbers
    and strings get codes in sorted order; a column of mixed Python objects gets them in
    order of first appearance (any hashable values; equal numbers such as 1 and 1.0 are
    one value). The codes depend only on the values and their order, never on Python's
    per-process string hashing. Unhashable values (lists, dicts) raise ``TypeError``.
    """
    arr = as_numpy(values)
    if arr.ndim != 1:
        raise ValueError(f"factorize expects a 1-D column, got shape {arr.shape}")
    kind = arr.dtype.kind
    codes = np.full(len(arr), -1, dtype=np.int64)
    if kind in "biu":
        present = np.ones(len(arr), dtype=bool)
    elif kind in "fc":
        present = ~np.isnan(arr)
    elif kind in "US":
        text = np.char.lower(np.char.strip(arr.astype(str)))
        present = ~np.isin(text, sorted(MISSING_VALUES))
    else:  # object (or anything else): one value at a time
        index: dict[Any, int] = {}
        for i, value in enumerate(arr.tolist()):
            if _is_missing(value):
                continue
            codes[i] = index.setdefault(value, len(index))
        return codes, list(index)
    uniques, inverse = np.unique(arr[present], return_inverse=True)
    codes[present] = inverse.reshape(-1)
    return codes, uniques.tolist()
