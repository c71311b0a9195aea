"""Seeded, stratified train/val/test splits and per-channel (per-feature) normalisation.

Stratified means every split holds each class in (almost exactly) the proportion of the
whole: for every class and split, the count is the floor or the ceiling of
``class_size * split_size / n``, so it is within one sample of the overall proportion.
Two chained ``train_test_split`` calls do not guarantee that (rounding in the first
split shifts the proportions the second one sees, by up to ~1.8 samples), so the
per-class counts are rounded jointly here and each class is then shuffled and sliced
with a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepworks.data.datasets import ImageDataset
from deepworks.errors import DataError

__all__ = ["Splits", "split_dataset", "stratified_counts", "channel_stats", "normalize", "STD_FLOOR"]

STD_FLOOR = 1e-6  # a constant channel gets this std instead of 0, so normalising never divides by 0
# a feature of tabular data counts as constant when its std is within rounding of 0 (relative to its
# mean); it then gets std 1 (centred, not scaled), as scikit-learn's StandardScaler does
_CONSTANT_RTOL = 10 * float(np.finfo(np.float64).eps)


@dataclass
class Splits:
    """The three splits as (x, y) tensors and the indices they were taken at (for the run record)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    indices: dict[str, np.ndarray]  # into ds.x; "test" indexes ds.test_x when official_test
    official_test: bool


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"data.{name}: expected a number between 0 and 1, got {value!r}. Fix: e.g. {name}: 0.15.")
    if not 0 < value < 1:
        raise DataError(
            f"data.{name}: must be between 0 and 1 (exclusive), got {value}. Fix: e.g. {name}: 0.15."
        )
    return float(value)


def _split_size(fraction: float, n: int) -> int:
    # ceil, like scikit-learn's test_size; the epsilon keeps 0.15 * 100 (15.000000000000002) at 15
    return math.ceil(fraction * n - 1e-9)


def stratified_counts(class_counts: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Per-class per-split counts (K, S) with the given row sums (class sizes) and column sums (split sizes).

    Each entry is the floor or the ceiling of ``class_count * size / n`` (a "controlled
    rounding", which always exists). Floors first; the leftover units are placed with
    augmenting paths, rows in a seeded order, so ties do not always favour class 0.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    n = int(counts.sum())
    if int(sizes_arr.sum()) != n:
        raise ValueError(f"split sizes {list(sizes_arr)} do not add up to {n}")
    if n == 0:
        return np.zeros((len(counts), len(sizes_arr)), dtype=np.int64)
    exact = counts[:, None] * sizes_arr[None, :]  # (K, S): target * n, in exact integers
    base = exact // n
    allowed = exact % n != 0  # only cells with a fractional target may be rounded up
    frac = (exact % n) / n
    row_left = counts - base.sum(axis=1)  # (K,) units each class still has to place
    col_left = sizes_arr - base.sum(axis=0)  # (S,) units each split still takes
    up = np.zeros_like(allowed)  # cells rounded up
    # prefer the cells with the largest fractional part, ties broken at random
    col_order = np.lexsort((rng.random(frac.shape), -frac), axis=1)

    def augment(row: int, seen_rows: set[int], seen_cols: set[int]) -> bool:
        """Find room for one more unit of ``row``, moving other rows between splits if needed."""
        seen_rows.add(row)
        for col in col_order[row]:
            if not allowed[row, col] or up[row, col] or col in seen_cols:
                continue
            seen_cols.add(col)
            if col_left[col] > 0:
                up[row, col] = True
                col_left[col] -= 1
                return True
            for other in np.flatnonzero(up[:, col]):
                if other not in seen_rows and augment(int(other), seen_rows, seen_cols):
                    up[other, col], up[row, col] = False, True  # other moved to another split
                    return True
        return False

    for row in rng.permutation(len(counts)):
        for _ in range(int(row_left[row])):
            if not augment(int(row), set(), set()):  # cannot happen: a fractional solution exists
                raise AssertionError("stratified rounding failed")
    return base + up


def _stratified_indices(
    y: np.ndarray, classes: list[str], fractions: dict[str, float], seed: int, what: str
) -> dict[str, np.ndarray]:
    """Split positions 0..len(y)-1 into "train" (the remainder) and the parts named in ``fractions``."""
    n = len(y)
    names = ["train", *fractions]
    sizes = {name: _split_size(f, n) for name, f in fractions.items()}
    sizes["train"] = n - sum(sizes.values())
    class_counts = np.bincount(y, minlength=len(classes))
    smallest_split = min(sizes.values())
    weakest = int(np.argmin(class_counts))
    if smallest_split <= 0 or class_counts[weakest] * smallest_split < n:
        # some class would expect < 1 sample in some split: it cannot be stratified
        need = math.ceil(n / smallest_split) if smallest_split > 0 else n
        settings = ", ".join(f"{k}_fraction={v}" for k, v in fractions.items())
        raise DataError(
            f"{what}: class {classes[weakest]!r} has {int(class_counts[weakest])} sample(s), too few to stratify "
            f"into {'/'.join(names)} splits of {'/'.join(str(sizes[k]) for k in names)} samples with {settings}: "
            f"each class needs at least {need} so that every split gets one. Fix: add samples of "
            f"{classes[weakest]!r}, remove that class, or raise the smallest split's fraction."
        )
    rng = np.random.default_rng(seed)
    table = stratified_counts(class_counts, [sizes[k] for k in names], rng)  # (K, S)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for label in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y == label))
        bounds = np.cumsum(table[label])[:-1]
        for k, chunk in zip(names, np.split(members, bounds)):
            parts[k].append(chunk)
    # shuffle across classes so no split is ordered by class
    return {k: rng.permutation(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def split_dataset(
    ds: ImageDataset, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Seeded, stratified train/val/test split of ``ds`` (default 70/15/15).

    A dataset with an official test split keeps it as the test split and carves the
    validation split (``val_fraction`` of ``ds.x``) out of its training data;
    ``test_fraction`` is then ignored.
    """
    y = ds.y.detach().cpu().numpy().astype(np.int64)
    what = f"dataset {ds.name!r}"
    official = ds.test_x is not None and ds.test_y is not None
    vf = _check_fraction("val_fraction", val_fraction)
    if official:
        idx = _stratified_indices(y, ds.classes, {"val": vf}, seed, what)
        assert ds.test_x is not None and ds.test_y is not None
        idx["test"] = np.arange(len(ds.test_y), dtype=np.int64)
        test = (ds.test_x, ds.test_y)
    else:
        tf = _check_fraction("test_fraction", test_fraction)
        if vf + tf >= 1:
            raise DataError(
                f"data.val_fraction ({vf}) + data.test_fraction ({tf}) = {vf + tf:g} leaves no training data; "
                "their sum must be below 1. Fix: e.g. 0.15 each."
            )
        idx = _stratified_indices(y, ds.classes, {"val": vf, "test": tf}, seed, what)
        t = torch.from_numpy(idx["test"])
        test = (ds.x[t], ds.y[t])
    tr, va = torch.from_numpy(idx["train"]), torch.from_numpy(idx["val"])
    return Splits(
        train=(ds.x[tr], ds.y[tr]),
        val=(ds.x[va], ds.y[va]),
        test=test,
        indices={"train": idx["train"], "val": idx["val"], "test": idx["test"]},
        official_test=official,
    )


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, H, W), or per-feature mean and std of features (N, F).

    Images: statistics over (N, H, W), std at least ``STD_FLOOR``. Features: statistics
    over N, like scikit-learn's ``StandardScaler`` (population std; a constant feature
    gets std 1, so it is centred, not blown up). Accumulates in float64 over chunks, so
    60,000 images neither lose precision nor need a float64 copy of the whole set.
    """
    if x.ndim not in (2, 4) or len(x) == 0:
        raise DataError(
            f"channel statistics need images (N, C, H, W) or features (N, F) with N > 0, got shape {tuple(x.shape)}."
        )
    tabular = x.ndim == 2
    dims = (0,) if tabular else (0, 2, 3)
    c = x.shape[1]
    count = x.shape[0] if tabular else x.shape[0] * x.shape[2] * x.shape[3]
    chunk = max(1, (1 << 22) // max(1, x[0].numel()))  # ~4M values (32 MiB float64) at a time
    total = torch.zeros(c, dtype=torch.float64, device=x.device)
    for s in range(0, len(x), chunk):
        total += x[s : s + chunk].double().sum(dim=dims)  # (n, C, H, W) -> (C,); (n, F) -> (F,)
    mean = total / count
    # second pass around the mean: no cancellation as with E[x^2] - E[x]^2
    sq = torch.zeros(c, dtype=torch.float64, device=x.device)
    centre = mean.view(1, c) if tabular else mean.view(1, c, 1, 1)
    for s in range(0, len(x), chunk):
        sq += (x[s : s + chunk].double() - centre).pow(2).sum(dim=dims)
    std = (sq / count).sqrt()
    if tabular:
        constant = std <= _CONSTANT_RTOL * mean.abs().clamp(min=1.0)
        std = torch.where(constant, torch.ones_like(std), std)
    else:
        std = std.clamp(min=STD_FLOOR)
    return [float(v) for v in mean.cpu()], [float(v) for v in std.cpu()]


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of images (N, C, H, W) or one image (C, H, W), or per
    feature of features (N, F) or one feature vector (F,); a new tensor."""
    if x.ndim not in (1, 2, 3, 4):
        raise DataError(
            f"normalize expects images (N, C, H, W) or (C, H, W), or features (N, F) or (F,), "
            f"got shape {tuple(x.shape)}."
        )
    tabular = x.ndim <= 2
    c = x.shape[-1] if tabular else x.shape[-3]
    what = "feature(s)" if tabular else "channel(s)"
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    m = torch.as_tensor(mean, dtype=dtype, device=x.device).flatten()
    s = torch.as_tensor(std, dtype=dtype, device=x.device).flatten()
    if len(m) != c or len(s) != c:
        raise DataError(
            f"normalize: the data has {c} {what} but mean/std have {len(m)}/{len(s)} values; "
            f"they must match (statistics from data with a different number of {what}?)."
        )
    if bool((s <= 0).any()):
        raise DataError(f"normalize: std must be positive, got {s.tolist()}.")
    # images: (C,) -> (C, 1, 1), which broadcasts over (N, C, H, W) and (C, H, W);
    # features: (F,) broadcasts over (N, F) and (F,)
    shape = (c,) if tabular else (c, 1, 1)
    return (x.to(dtype) - m.view(shape)) / s.view(shape)
