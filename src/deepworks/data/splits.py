"""Seeded train/val/test splits and k folds (stratified, shuffled or by group), and per-channel normalisation.

Stratified means every split holds each class in (almost exactly) the proportion of the
whole: for every class and split, the count is the floor or the ceiling of
``class_size * split_size / n``, so it is within one sample of the overall proportion.
Two chained ``train_test_split`` calls do not guarantee that (rounding in the first
split shifts the proportions the second one sees, by up to ~1.8 samples), so the
per-class counts are rounded jointly here and each class is then shuffled and sliced
with a seeded generator.

:func:`split_indices` makes the split over positions (stratified for class labels, a
plain seeded shuffle for regression targets, whole groups per split with ``groups``);
:func:`split_dataset` applies it to a dataset's tensors. :func:`kfold_indices` gives the
folds of k-fold cross-validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepworks.data._values import as_numpy, factorize
from deepworks.data.containers import ImageDataset
from deepworks.errors import ConfigError, DataError, close_matches

__all__ = [
    "apply_subset",
    "subset_classes",
    "dataset_split_indices",
    "take_splits",
    "Splits",
    "split_dataset",
    "split_indices",
    "kfold_indices",
    "stratified_counts",
    "channel_stats",
    "normalize",
    "STD_FLOOR",
]

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


def _class_codes(
    y: np.ndarray, classes: Sequence[str] | None, what: str, purpose: str
) -> tuple[np.ndarray, list[str]]:
    """Class indices 0..K-1 of the labels ``y`` and the class names (``classes``, else the labels as text)."""
    if y.dtype.kind in "fc":
        raise DataError(
            f"{what}: {purpose} needs class labels, got {y.dtype} targets (a regression target?). "
            "Fix: pass stratify=False for numeric targets."
        )
    if classes is not None:
        labels = y.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(
                f"{what}: class indices must lie in 0..{len(classes) - 1} ({len(classes)} classes), "
                f"got {int(labels.min())}..{int(labels.max())}. Fix: encode the labels as indices into the class list."
            )
        return labels, [str(c) for c in classes]
    try:
        labels, uniques = factorize(y)
    except TypeError:
        raise DataError(f"{what}: class labels must be numbers or strings, got {y.dtype} values.") from None
    if (labels < 0).any():
        raise DataError(
            f"{what}: {int((labels < 0).sum())} sample(s) have no class label (missing value, first at sample "
            f"{int(np.flatnonzero(labels < 0)[0])}). Fix: label them or drop them."
        )
    return labels, [str(u) for u in uniques]


def _group_codes(groups: object, n: int, what: str) -> tuple[np.ndarray, int]:
    """Group indices 0..G-1 of each sample, and G; missing group values are an error."""
    arr = as_numpy(groups)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"data.group_by: {what} has {n} sample(s) but the groups have shape {tuple(arr.shape)}; "
            "every sample needs exactly one group value. Fix: give one group per sample (a column of the data)."
        )
    try:
        codes, uniques = factorize(arr)
    except TypeError:
        raise DataError(
            f"data.group_by: group values must be strings or numbers, got unhashable {arr.dtype} values. "
            "Fix: group by a column of names or ids."
        ) from None
    missing = codes < 0
    if missing.any():
        raise DataError(
            f"data.group_by: {int(missing.sum())} sample(s) of {what} have no group (missing value, first at sample "
            f"{int(np.flatnonzero(missing)[0])}); without one they could land in any split, beside samples of "
            "their real group. Fix: fill in the group column (e.g. give each such sample an id of its own) "
            "or drop those samples."
        )
    return codes, len(uniques)


def _split_sizes(fractions: dict[str, float], n: int, what: str) -> dict[str, int]:
    """Sizes of "train" (the remainder) and the parts named in ``fractions`` (ceil of fraction * n)."""
    sizes = {name: _split_size(f, n) for name, f in fractions.items()}
    sizes = {"train": n - sum(sizes.values()), **sizes}
    if sizes["train"] < 1:
        settings = ", ".join(f"{k}_fraction={v}" for k, v in fractions.items())
        raise DataError(
            f"{what}: {n} sample(s) are too few for {'/'.join(sizes)} splits with {settings}: the training split "
            "would be empty. Fix: add samples or lower the fractions."
        )
    return sizes


def _group_indices(
    groups: np.ndarray, n_groups: int, labels: np.ndarray | None, sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Whole groups to each split, sizes (and class proportions, given ``labels``) close to ``sizes``.

    The mismatch to minimise is a chi-square-like sum over splits s and columns c of
    ``w_c * (count[s, c] - target[s, c])**2 / target[s, c]``, where column 0 counts the
    samples (target: the split size, weight: the number of classes, so the sizes weigh as
    much as all class proportions together) and column 1 + j counts class j (target: the
    split size times the class's share).
    """
    target_size = np.array(list(sizes.values()), dtype=np.float64)  # (S,)
    group_size = np.bincount(groups, minlength=n_groups).astype(np.float64)  # (G,)
    if labels is None:
        counts = group_size[:, None]  # (G, 1)
        target = target_size[:, None]  # (S, 1)
        weight = np.ones(1)
    else:
        present = np.unique(labels, return_inverse=True)[1].reshape(-1)  # drop classes with no sample
        k = int(present.max()) + 1
        per_class = np.bincount(groups * k + present, minlength=n_groups * k).reshape(n_groups, k)  # (G, K)
        counts = np.column_stack([group_size, per_class]).astype(np.float64)  # (G, 1 + K)
        share = per_class.sum(axis=0) / len(labels)  # (K,)
        target = target_size[:, None] * np.concatenate([[1.0], share])[None, :]  # (S, 1 + K)
        weight = np.concatenate([[float(k)], np.ones(k)])
    split_of = _place_groups(counts, target, weight[None, :] / target, rng)
    sample_split = split_of[groups]
    return {name: rng.permutation(np.flatnonzero(sample_split == s)).astype(np.int64) for s, name in enumerate(sizes)}


_SWAP_LIMIT = 3000  # groups up to which swaps of two groups are searched too ((G/2)**2 pairs per step)


def _place_groups(counts: np.ndarray, target: np.ndarray, inv: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The split of each group (G,) for per-group counts (G, C), minimising sum(inv * (load - target)**2).

    A seeded greedy pass first: groups in random order, each to the split where it
    raises the mismatch least. Then local search: the best single move of a group to
    another split (never emptying a split) or, with up to ``_SWAP_LIMIT`` groups, the best
    exchange of two groups between two splits, as long as it lowers the mismatch.
    Putting counts u into split s changes the mismatch by ``sum_c inv[s, c] * (u_c**2 +
    2 * u_c * (load - target)[s, c])``; everything below is that formula, vectorised.
    """
    n_groups, n_splits = len(counts), len(target)
    load = np.zeros_like(target)  # (S, C) what each split holds so far
    split_of = np.empty(n_groups, dtype=np.int64)
    for g in rng.permutation(n_groups):
        v = counts[g]
        s = int(np.argmin((inv * (v * v + 2 * v * (load - target))).sum(axis=1)))
        load[s] += v
        split_of[g] = s

    squares = counts * counts  # (G, C)
    square = squares @ inv.T  # (G, S): the u**2 part of putting each group into each split
    rows = np.arange(n_groups)
    # each step lowers the mismatch, so the search ends; the cap bounds the time on huge inputs
    for _ in range(1000):
        excess = load - target  # (S, C)
        mismatch = float((inv * excess * excess).sum())
        linear = counts @ (inv * excess).T  # (G, S)
        leave = square[rows, split_of] - 2 * linear[rows, split_of]  # (G,) taking g out of its split
        change = leave[:, None] + square + 2 * linear  # (G, S) ... and putting it into s
        change[rows, split_of] = np.inf
        members = np.bincount(split_of, minlength=n_splits)
        change[members[split_of] < 2] = np.inf  # the only group of a split stays
        empty = np.flatnonzero(members == 0)
        if len(empty):  # fill an empty split first, with the group that costs least there
            g, s = int(np.argmin(change[:, empty[0]])), int(empty[0])
            load[split_of[g]] -= counts[g]
            load[s] += counts[g]
            split_of[g] = s
            continue
        g, s = np.unravel_index(int(np.argmin(change)), change.shape)
        best, swap = float(change[g, s]), None
        if n_groups <= _SWAP_LIMIT:
            for a in range(n_splits):
                for b in range(a + 1, n_splits):
                    in_a, in_b = np.flatnonzero(split_of == a), np.flatnonzero(split_of == b)
                    # g of a and h of b trade places: a gets u = v_h - v_g, b gets -u
                    w = inv[a] + inv[b]  # (C,)
                    m = inv[a] * excess[a] - inv[b] * excess[b]  # (C,)
                    quad, lin = squares @ w, counts @ m  # (G,), (G,)
                    pair = (
                        quad[in_a, None] + quad[None, in_b] - 2 * (counts[in_a] * w) @ counts[in_b].T
                        + 2 * (lin[None, in_b] - lin[in_a, None])
                    )  # (|a|, |b|)
                    i, j = np.unravel_index(int(np.argmin(pair)), pair.shape)
                    if pair[i, j] < best:
                        best, swap = float(pair[i, j]), (int(in_a[i]), int(in_b[j]))
        if not best < -1e-9 * (1.0 + mismatch):
            break
        if swap is None:
            load[split_of[g]] -= counts[g]
            load[s] += counts[g]
            split_of[g] = s
        else:
            g, h = swap
            a, b = split_of[g], split_of[h]
            load[a] += counts[h] - counts[g]
            load[b] += counts[g] - counts[h]
            split_of[g], split_of[h] = b, a
    return split_of


def split_indices(
    y: np.ndarray,
    *,
    stratify: bool = True,
    groups: np.ndarray | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    has_test: bool = False,
    seed: int = 0,
    what: str = "dataset",
    classes: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded train/val/test positions 0..len(y)-1: {"train": ..., "val": ..., "test": ...} (int64, shuffled).

    The val and test splits get ``ceil(fraction * n)`` samples, train the rest.
    ``has_test=True`` (the data has an official test split) makes train and val only;
    "test" is then empty and ``test_fraction`` is ignored.

    - ``stratify=True``: ``y`` holds class labels (integers or strings; with ``classes``,
      indices into that list, whose names the errors then use). Every split holds each
      class within one sample of its overall proportion (see the module docstring).
    - ``stratify=False``: ``y`` may be anything (e.g. float regression targets); a seeded
      shuffle is cut into the three sizes.
    - ``groups`` (one hashable value per sample, e.g. the strings of the CSV column named by
      ``data.group_by``): samples that share a group always land in the same split. Whole
      groups are assigned so that the split sizes, and with ``stratify`` the class
      proportions, come close to the targets (a seeded greedy placement, then moves of
      single groups that bring them closer; the sizes weigh as much as all class
      proportions together). With large groups the sizes can only be approximate; a
      class may then be missing from a split. Every split gets at least one group.

    >>> y = np.array([0] * 8 + [1] * 12)
    >>> {k: len(v) for k, v in split_indices(y, val_fraction=0.2, test_fraction=0.2).items()}
    {'train': 12, 'val': 4, 'test': 4}
    >>> parts = split_indices(y, groups=np.repeat(list("abcdefghij"), 2), seed=1)
    >>> sorted(np.concatenate(list(parts.values())).tolist()) == list(range(20))
    True
    """
    vf = _check_fraction("val_fraction", val_fraction)
    fractions = {"val": vf}
    if not has_test:
        tf = _check_fraction("test_fraction", test_fraction)
        if vf + tf >= 1:
            raise DataError(
                f"data.val_fraction ({vf}) + data.test_fraction ({tf}) = {vf + tf:g} leaves no training data; "
                "their sum must be below 1. Fix: e.g. 0.15 each."
            )
        fractions["test"] = tf
    y_arr = as_numpy(y)
    if y_arr.ndim != 1:
        raise DataError(f"{what}: expected one target per sample (a 1-D array), got shape {tuple(y_arr.shape)}.")
    n = len(y_arr)
    labels, names = _class_codes(y_arr, classes, what, "a stratified split") if stratify else (None, [])
    if groups is not None:
        codes, n_groups = _group_codes(groups, n, what)
        sizes = _split_sizes(fractions, n, what)
        if n_groups < len(sizes):
            raise DataError(
                f"data.group_by: {what} has {n_groups} distinct group(s), too few to give each of the "
                f"{'/'.join(sizes)} splits whole groups of its own (at least {len(sizes)} are needed). "
                "Fix: group by a column with more distinct values, or leave data.group_by unset."
            )
        idx = _group_indices(codes, n_groups, labels, sizes, np.random.default_rng(seed))
    elif labels is not None:
        idx = _stratified_indices(labels, names, fractions, seed, what)
    else:
        sizes = _split_sizes(fractions, n, what)
        order = np.random.default_rng(seed).permutation(n).astype(np.int64)
        bounds = np.cumsum(list(sizes.values()))[:-1]
        idx = dict(zip(sizes, np.split(order, bounds)))
    if has_test:
        idx["test"] = np.empty(0, dtype=np.int64)
    return idx


def kfold_indices(
    y: np.ndarray,
    k: int,
    *,
    stratify: bool = True,
    groups: np.ndarray | None = None,
    seed: int = 0,
    what: str = "dataset",
    classes: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` seeded (train positions, val positions) pairs over 0..len(y)-1 for k-fold cross-validation.

    The val parts are disjoint and cover every sample once. Without ``groups``:
    scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)`` for class labels
    (each class's count in a val fold is within one of its count / k), ``KFold`` likewise
    with ``stratify=False`` (e.g. float regression targets). With ``groups`` a group's
    samples are all in one val fold: ``StratifiedGroupKFold(shuffle=True)`` for class
    labels; ``GroupKFold`` otherwise, which deals out the largest groups first to the
    lightest fold, so fold sizes stay even; the groups are renamed in a seeded order, so
    the seed settles ties between equal-size groups. (scikit-learn >= 1.6's
    ``GroupKFold(shuffle=True)`` instead deals equal numbers of groups, whatever their
    sizes, which can make very uneven folds.) ``classes`` as in :func:`split_indices`.

    >>> folds = kfold_indices(np.array([0, 1] * 10), 5)
    >>> [len(val) for _, val in folds]
    [4, 4, 4, 4, 4]
    """
    # imported here: scikit-learn takes about a second to import, and most runs never cross-validate
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise DataError(f"data.cv (--cv): expected a whole number of folds, at least 2, got {k!r}. Fix: e.g. --cv 5.")
    k = int(k)
    y_arr = as_numpy(y)
    if y_arr.ndim != 1:
        raise DataError(f"{what}: expected one target per sample (a 1-D array), got shape {tuple(y_arr.shape)}.")
    n = len(y_arr)
    if k > n:
        raise DataError(
            f"data.cv (--cv): {what} has {n} sample(s), too few for {k} folds (every fold validates on at least one). "
            + (f"Fix: --cv {n} or fewer." if n >= 2 else "Fix: add samples.")
        )
    labels, names = _class_codes(y_arr, classes, what, "stratified folds") if stratify else (None, [])
    placeholder = np.zeros((n, 1))  # scikit-learn's splitters only count the rows of X
    if groups is not None:
        codes, n_groups = _group_codes(groups, n, what)
        if k > n_groups:
            raise DataError(
                f"data.cv (--cv): {what} has {n_groups} distinct group(s) (data.group_by), too few for {k} folds: "
                "each group goes to one fold whole. Fix: "
                + (f"--cv {n_groups} or fewer, or " if n_groups >= 2 else "")
                + "group by a column with more distinct values, or leave data.group_by unset."
            )
        if labels is not None:
            # a class found in fewer than k groups cannot appear in every val fold
            pairs = np.unique(labels * n_groups + codes)
            spread = np.bincount(pairs // n_groups, minlength=len(names))
            present = np.flatnonzero(spread)
            weakest = int(present[np.argmin(spread[present])])
            if spread[weakest] < k:
                raise _fold_class_error(what, names[weakest], int(spread[weakest]), k, "group(s) (data.group_by)")
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = splitter.split(placeholder, labels, codes)
        else:
            renamed = np.random.default_rng(seed).permutation(n_groups)[codes]
            folds = GroupKFold(n_splits=k).split(placeholder, groups=renamed)
    elif labels is not None:
        counts = np.bincount(labels, minlength=len(names))
        present = np.flatnonzero(counts)
        weakest = int(present[np.argmin(counts[present])])
        if counts[weakest] < k:
            raise _fold_class_error(what, names[weakest], int(counts[weakest]), k, "sample(s)")
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder, labels)
    else:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder)
    return [(train.astype(np.int64), val.astype(np.int64)) for train, val in folds]


def _fold_class_error(what: str, name: str, count: int, k: int, unit: str) -> DataError:
    fix = f"--cv {count} or fewer, add" if count >= 2 else "add"
    return DataError(
        f"data.cv (--cv): class {name!r} of {what} has {count} {unit}, fewer than the {k} folds, so some validation "
        f"fold would have none of it. Fix: {fix} samples of {name!r}, or remove that class."
    )


def subset_classes(items: Sequence[str | int] | None, class_names: Sequence[str]) -> list[int]:
    """The indices, in the dataset's order, of the classes ``data.subset.classes`` names (class
    names as the dataset lists them, or integer indices); all classes when ``items`` is None.

    >>> subset_classes(["cat", 0], ["bird", "cat", "dog"])
    [0, 1]
    """
    names = [str(c) for c in class_names]
    if items is None:
        return list(range(len(names)))
    shown = ", ".join(map(repr, names)) if len(names) <= 30 else ", ".join(map(repr, names[:30])) + ", ..."
    found: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer, str)):
            raise ConfigError(
                f"data.subset.classes: expected class names or indices, got {item!r}. Classes: {shown}."
            )
        if isinstance(item, str):
            if item not in names:
                hint = close_matches(item, names)
                guess = f" Did you mean {' or '.join(map(repr, hint))}?" if hint else ""
                raise ConfigError(f"data.subset.classes: unknown class {item!r}.{guess} Classes: {shown}.")
            found.append(names.index(item))
            continue
        index = int(item)
        if not 0 <= index < len(names):
            raise ConfigError(
                f"data.subset.classes: class index {index} is out of range; the data has {len(names)} classes "
                f"(indices 0..{len(names) - 1}): {shown}. Fix: name the class, or give an index in range."
            )
        if str(index) in names and names.index(str(index)) != index:
            raise ConfigError(
                f"data.subset.classes: {index} is the index of class {names[index]!r} but also the name of class "
                f"{str(index)!r} (index {names.index(str(index))}). Fix: write the class you mean by its name, "
                f"quoted: '{names[index]}' or '{index}'."
            )
        found.append(index)
    repeated = [names[i] for n, i in enumerate(found) if i in found[:n]]
    if repeated:
        raise ConfigError(
            f"data.subset.classes: class {repeated[0]!r} is listed twice (by name and by index?). Fix: name each "
            "class once."
        )
    if len(found) < 2:
        raise ConfigError("data.subset.classes: a classifier needs at least 2 classes. Fix: name 2 or more.")
    return sorted(found)


def apply_subset(
    idx: dict[str, np.ndarray],
    labels: np.ndarray,
    subset: Any,
    class_names: Sequence[str],
    *,
    test_labels: np.ndarray | None = None,
    where: str = "dataset",
) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """``data.subset`` applied to split positions ``idx`` ({"train", "val", "test"}) of samples with
    class ``labels`` (indices into ``class_names``; ``test_labels`` when "test" indexes an official
    test split of its own).

    Returns the kept positions, the kept class names (in the dataset's order) and ``remap``
    (one entry per class: its new label 0..k-1, or -1 for a class left out), so that
    ``remap[labels[rows]]`` are the new labels. Every split keeps only the kept classes; "train"
    keeps ``train_per_class`` samples of each and "val" ``val_per_class``: the first of each
    class in one permutation of all positions seeded by ``subset.seed``. So 10 per class lie
    inside 20 per class, and, the splits being drawn with ``subset.seed`` too, a subset does not
    depend on the run's seed. "test" is never subsampled. ``subset`` None changes nothing.

    >>> from types import SimpleNamespace
    >>> sub = SimpleNamespace(classes=["b", "c"], train_per_class=2, val_per_class=None, seed=0)
    >>> y = np.array([0, 1, 2] * 6)
    >>> idx = {"train": np.arange(12), "val": np.arange(12, 15), "test": np.arange(15, 18)}
    >>> kept, names, remap = apply_subset(idx, y, sub, ["a", "b", "c"])
    >>> names, remap.tolist(), np.bincount(remap[y[kept["train"]]]).tolist(), remap[y[kept["test"]]].tolist()
    (['b', 'c'], [-1, 0, 1], [2, 2], [0, 1])
    """
    names = [str(c) for c in class_names]
    labels = np.asarray(labels, dtype=np.int64)
    if subset is None:
        return dict(idx), names, np.arange(len(names), dtype=np.int64)
    kept = subset_classes(subset.classes, names)
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    test_y = labels if test_labels is None else np.asarray(test_labels, dtype=np.int64)
    out = {}
    for name, rows in idx.items():
        rows = np.asarray(rows, dtype=np.int64)
        out[name] = rows[remap[(test_y if name == "test" else labels)[rows]] >= 0]
    # one seeded order of all positions: each split keeps the first samples of each class in it
    priority = np.random.default_rng(subset.seed).permutation(len(labels))
    for name, per_class in (("train", subset.train_per_class), ("val", subset.val_per_class)):
        if per_class is None or name not in out:
            continue
        rows = out[name]
        if name == "val" and len(idx[name]) == 0:  # the final model of a cross-validation: no validation
            continue
        chosen = []
        for c in kept:
            members = rows[labels[rows] == c]
            if len(members) < per_class:
                key = f"data.subset.{name}_per_class"
                fixes = [f"lower {key} to {len(members)} or less" if len(members) else
                         f"remove {names[c]!r} from data.subset.classes"]
                fixes.append("lower data.val_fraction (the training split then holds more)" if name == "train"
                             else "raise data.val_fraction")
                raise DataError(
                    f"{key}: class {names[c]!r} of {where} has {len(members)} sample(s) in the {name} split, fewer "
                    f"than the {per_class} asked for. Fix: {', '.join(fixes)}, or add samples of that class."
                )
            chosen.append(members[np.argsort(priority[members], kind="stable")[:per_class]])
        # shuffled across classes (seeded like the rest), so no split is ordered by class
        out[name] = np.random.default_rng(subset.seed).permutation(np.concatenate(chosen)).astype(np.int64)
    return out, [names[c] for c in kept], remap


def dataset_split_indices(
    ds: ImageDataset, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """The positions :func:`split_dataset` takes, without copying any sample.

    "train" and "val" index ``ds.x``; "test" indexes ``ds.test_x`` when the dataset has an
    official test split (then it is all of it), else ``ds.x``.
    """
    y = ds.y.detach().cpu().numpy().astype(np.int64)
    official = ds.test_x is not None and ds.test_y is not None
    idx = split_indices(
        y,
        classes=ds.classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        has_test=official,
        seed=seed,
        what=f"dataset {ds.name!r}",
    )
    if official:
        assert ds.test_y is not None
        idx["test"] = np.arange(len(ds.test_y), dtype=np.int64)
    return {"train": idx["train"], "val": idx["val"], "test": idx["test"]}


def take_splits(ds: ImageDataset, idx: dict[str, np.ndarray]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) tensors at the positions ``idx`` (as :func:`dataset_split_indices` gives them)."""
    official = ds.test_x is not None and ds.test_y is not None
    out = {}
    for name in ("train", "val", "test"):
        t = torch.from_numpy(idx[name])
        if name == "test" and official:
            whole = len(t) == len(ds.test_y) and bool(torch.equal(t, torch.arange(len(t))))
            out[name] = (ds.test_x, ds.test_y) if whole else (ds.test_x[t], ds.test_y[t])  # no copy when whole
        else:
            out[name] = (ds.x[t], ds.y[t])
    return out


def split_dataset(
    ds: ImageDataset, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Seeded, stratified train/val/test split of ``ds`` (default 70/15/15).

    A dataset with an official test split keeps it as the test split and carves the
    validation split (``val_fraction`` of ``ds.x``) out of its training data;
    ``test_fraction`` is then ignored.
    """
    idx = dataset_split_indices(ds, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    parts = take_splits(ds, idx)
    return Splits(
        train=parts["train"], val=parts["val"], test=parts["test"], indices=idx,
        official_test=ds.test_x is not None and ds.test_y is not None,
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
