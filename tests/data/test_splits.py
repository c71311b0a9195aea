"""Stratified seeded splits, checked against numpy counts, and per-channel statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepworks.data import ImageDataset, channel_stats, load_dataset, normalize, split_dataset
from deepworks.data.splits import STD_FLOOR, stratified_counts
from deepworks.errors import DataError


def toy(counts: list[int], seed: int = 0, test: int = 0) -> ImageDataset:
    """A dataset whose image i holds the value i, so splits can be traced back."""
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    n = len(y)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    classes = [f"c{i}" for i in range(len(counts))]
    if not test:
        return ImageDataset("toy", x, torch.from_numpy(y), classes)
    ty = torch.arange(test) % len(counts)
    return ImageDataset("toy", x, torch.from_numpy(y), classes, test_x=-torch.ones(test, 1, 1, 1), test_y=ty)


def assert_stratified(y: np.ndarray, parts: dict[str, np.ndarray], num_classes: int) -> None:
    """Each split's class counts are within one sample of the overall proportion times its size."""
    overall = np.bincount(y, minlength=num_classes) / len(y)
    for name, idx in parts.items():
        counts = np.bincount(y[idx], minlength=num_classes)
        assert np.all(np.abs(counts - overall * len(idx)) <= 1 + 1e-9), (name, counts, overall * len(idx))
        assert counts.min() >= 1, f"a class is missing from {name}"


def assert_partition(parts: dict[str, np.ndarray], n: int) -> None:
    joined = np.concatenate(list(parts.values()))
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))  # disjoint and complete


def test_digits_default_split():
    ds = load_dataset("digits")
    s = split_dataset(ds, seed=0)
    assert not s.official_test
    assert [len(s.indices[k]) for k in ("train", "val", "test")] == [1257, 270, 270]  # 70/15/15
    assert_partition(s.indices, len(ds.y))
    assert_stratified(ds.y.numpy(), s.indices, 10)
    for name, (x, y) in (("train", s.train), ("val", s.val), ("test", s.test)):
        idx = torch.from_numpy(s.indices[name])
        assert torch.equal(x, ds.x[idx]) and torch.equal(y, ds.y[idx])
    # shuffled: not in index order, not grouped by class
    assert not np.array_equal(s.indices["train"], np.sort(s.indices["train"]))


def test_seed_controls_the_split():
    ds = toy([30, 50, 20])
    a, b = split_dataset(ds, seed=3), split_dataset(ds, seed=3)
    c = split_dataset(ds, seed=4)
    assert all(np.array_equal(a.indices[k], b.indices[k]) for k in a.indices)
    assert not np.array_equal(np.sort(a.indices["test"]), np.sort(c.indices["test"]))


def test_official_test_is_kept_and_val_comes_from_train():
    ds = toy([50, 50, 50, 50], test=40)
    s = split_dataset(ds, val_fraction=0.2, test_fraction=0.9, seed=1)  # test_fraction ignored
    assert s.official_test
    assert s.test[0] is ds.test_x and s.test[1] is ds.test_y
    assert np.array_equal(s.indices["test"], np.arange(40))
    assert len(s.indices["val"]) == 40 and len(s.indices["train"]) == 160
    train_val = {"train": s.indices["train"], "val": s.indices["val"]}
    assert_partition(train_val, 200)
    assert_stratified(ds.y.numpy(), train_val, 4)
    assert torch.equal(s.val[0].flatten().long(), torch.from_numpy(s.indices["val"]))  # values are the indices


@pytest.mark.parametrize(
    "vf, tf, match",
    [(0.0, 0.2, "val_fraction"), (1.0, 0.2, "val_fraction"), (0.2, -0.1, "test_fraction"),
     (0.2, 1.5, "test_fraction"), (0.5, 0.5, "below 1"), (float("nan"), 0.2, "val_fraction")],
)
def test_fractions_out_of_range(vf, tf, match):
    with pytest.raises(DataError, match=match):
        split_dataset(toy([20, 20]), val_fraction=vf, test_fraction=tf)


def test_class_too_small_names_the_class():
    ds = toy([40, 2, 40])
    with pytest.raises(DataError) as err:
        split_dataset(ds)
    message = str(err.value)
    assert "class 'c1' has 2 sample(s)" in message and "at least" in message and "add samples" in message.lower()


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(20, 150), min_size=2, max_size=6),
    small=st.one_of(st.none(), st.integers(1, 20)),  # sometimes one class too small to stratify
    vf=st.floats(0.05, 0.4),
    tf=st.floats(0.05, 0.4),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_properties(counts, small, vf, tf, seed):
    if small is not None:
        counts = [small, *counts[1:]]
    ds = toy(counts, seed=seed)
    y = ds.y.numpy()
    n = len(y)
    try:
        s = split_dataset(ds, val_fraction=vf, test_fraction=tf, seed=seed)
    except DataError as err:
        smallest = min(counts)
        assert f"has {smallest} sample(s)" in str(err)
        # only refused when some split would expect fewer than one sample of that class
        assert smallest * min(vf, tf, 1 - vf - tf) < 1 + 2 * smallest / n
        return
    assert_partition(s.indices, n)
    assert_stratified(y, s.indices, len(counts))
    assert abs(len(s.indices["val"]) - vf * n) < 1 and abs(len(s.indices["test"]) - tf * n) < 1


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 200), min_size=1, max_size=12),
    cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_stratified_counts_round_jointly(counts, cuts, seed):
    n = sum(counts)
    edges = sorted({0, n, *(int(c * n) for c in cuts)})
    sizes = np.diff(edges) if n else np.zeros(1, dtype=int)
    table = stratified_counts(np.array(counts), sizes, np.random.default_rng(seed))
    assert np.array_equal(table.sum(axis=1), counts) and np.array_equal(table.sum(axis=0), sizes)
    if n:
        target = np.outer(counts, sizes) / n
        assert np.all((table == np.floor(target)) | (table == np.ceil(target)))


# ----------------------------------------------------------------------------- statistics


def test_channel_stats_match_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(37, 3, 5, 6, generator=g) * torch.tensor([1.0, 0.2, 0.0]).view(1, 3, 1, 1)
    x[:, 2] = 0.25  # a constant channel
    mean, std = channel_stats(x)
    arr = x.numpy().astype(np.float64)
    assert np.allclose(mean, arr.mean(axis=(0, 2, 3)), atol=1e-7)
    assert np.allclose(std[:2], arr.std(axis=(0, 2, 3))[:2], atol=1e-7)
    assert std[2] == STD_FLOOR


def test_channel_stats_chunked_large_input():
    x = torch.rand(3000, 2, 28, 28, generator=torch.Generator().manual_seed(1))  # several chunks
    mean, std = channel_stats(x)
    arr = x.numpy().astype(np.float64)
    assert np.allclose(mean, arr.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(std, arr.std(axis=(0, 2, 3)), atol=1e-9)


def test_normalize_with_train_statistics():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(300, 3, 4, 4, generator=g) * torch.tensor([0.5, 1.0, 0.1]).view(1, 3, 1, 1) + 0.2
    y = torch.arange(300) % 3
    s = split_dataset(ImageDataset("rgb", x, y, ["a", "b", "c"]), seed=0)
    train_x = s.train[0]
    before = train_x.clone()
    mean, std = channel_stats(train_x)
    z = normalize(train_x, mean, std)
    assert torch.equal(train_x, before) and z.data_ptr() != train_x.data_ptr()
    per_channel = z.transpose(0, 1).reshape(3, -1).double()  # (N, C, H, W) -> (C, N*H*W)
    assert torch.allclose(per_channel.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(per_channel.std(dim=1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-4)
    one = normalize(train_x[0], mean, std)  # a single (C, H, W) image, as predict passes it
    assert torch.allclose(one, z[0])


def test_normalize_constant_channel_and_mismatch():
    x = torch.full((4, 1, 2, 2), 0.5)
    mean, std = channel_stats(x)
    assert torch.equal(normalize(x, mean, std), torch.zeros_like(x))  # no division by zero
    with pytest.raises(DataError, match="channel"):
        normalize(torch.zeros(2, 3, 2, 2), [0.0], [1.0])
    with pytest.raises(DataError, match="N, C, H, W"):
        channel_stats(torch.zeros(5, 5, 5))


def test_official_test_split_of_fashion_sizes():
    """The full path on a real dataset with an official test split: val carved from the 60k."""
    try:
        ds = load_dataset("fashion-mnist")
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not available: {err}")
    s = split_dataset(ds, val_fraction=0.15, seed=0)
    assert s.official_test and len(s.indices["test"]) == 10000
    assert len(s.indices["val"]) == 9000 and len(s.indices["train"]) == 51000
    assert np.array_equal(np.bincount(s.val[1].numpy()), [900] * 10)
    assert math.isclose(float(s.test[0].mean()), float(ds.test_x.mean()))
