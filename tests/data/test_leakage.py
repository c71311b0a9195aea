"""Duplicate samples within and across splits (planted, exact counts) and columns that give the target away."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepworks.data import apply_policy, find_duplicates, one_to_one_columns, sample_hashes
from deepworks.errors import DataError

# Which unique sample each row of each split is. Planted:
#   train: 0 three times, 1 twice                   -> within train 3
#   val:   20 twice; 2, 3 from train; 7 (triple)    -> within val 1, train-val 3
#   test:  28 twice; 4, 5, 6 from train; 21 from val; 7 (in train, val and test)
#                                                   -> within test 1, train-test 4, val-test 2
TRAIN = [*range(20), 0, 0, 1]
VAL = [*range(20, 28), 2, 3, 20, 7]
TEST = [*range(28, 36), 4, 5, 6, 21, 7, 28]
EXPECTED = {
    "within": {"train": 3, "val": 1, "test": 1},
    "across": {"train-val": 3, "train-test": 4, "val-test": 2},
    "leaked": {"val": 3, "test": 5},
}
DROP = {"val": [8, 9, 11], "test": [8, 9, 10, 11, 12]}  # positions within each split's index array


def planted(base: np.ndarray | torch.Tensor, seed: int = 0):
    """The samples of TRAIN/VAL/TEST taken from ``base`` (one unique sample per id), rows shuffled."""
    ids = np.array(TRAIN + VAL + TEST)
    order = np.random.default_rng(seed).permutation(len(ids))  # row r of x is sample ids[order[r]]
    x = base[torch.from_numpy(ids[order])] if isinstance(base, torch.Tensor) else base[ids[order]]
    where = np.argsort(order)  # where[j]: the row holding the j-th listed sample
    a, b = len(TRAIN), len(TRAIN) + len(VAL)
    return x, {"train": where[:a], "val": where[a:b], "test": where[b:]}


@pytest.mark.parametrize(
    "base",
    [
        torch.rand(36, 3, 5, 5, generator=torch.Generator().manual_seed(0)),  # images (N, C, H, W)
        (torch.rand(36, 1, 6, 6, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8),
        np.random.default_rng(2).normal(size=(36, 7)),  # rows (N, F), float64
        torch.randn(36, 7, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16),
    ],
    ids=["float-images", "uint8-images", "numpy-rows", "bfloat16-rows"],
)
def test_planted_duplicates_are_counted_exactly(base):
    x, splits = planted(base)
    hashes = sample_hashes(x)
    assert hashes.shape == (len(x),)
    report = find_duplicates(hashes, splits)
    assert report.to_dict() == EXPECTED
    assert {k: v.tolist() for k, v in report.drop.items()} == DROP
    # the positions to drop are the samples seen in an earlier split, by an independent check
    assert [i for i, s in enumerate(VAL) if s in TRAIN] == DROP["val"]
    assert [i for i, s in enumerate(TEST) if s in TRAIN or s in VAL] == DROP["test"]
    kept = apply_policy(report, splits, "drop")
    assert [len(kept[k]) for k in ("train", "val", "test")] == [len(TRAIN), len(VAL) - 3, len(TEST) - 5]
    after = find_duplicates(hashes, kept)
    assert after.across == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert after.within == {"train": 3, "val": 1, "test": 1}  # copies inside a split stay


def test_hashes_see_exact_bytes_dtype_and_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 2, 4, 4, generator=g)
    h = sample_hashes(x)
    assert len(set(h.tolist())) == 10 and all(len(d) == 32 for d in h)
    assert np.array_equal(sample_hashes(x.numpy()), h)  # tensor or array: same digests
    assert np.array_equal(sample_hashes(x.permute(0, 2, 3, 1).permute(0, 3, 1, 2)), h)  # non-contiguous view
    assert np.array_equal(sample_hashes(x.numpy().astype(">f4")), h)  # big-endian array: same values
    assert not np.any(sample_hashes(x.reshape(10, 32)) == h)  # same bytes, other shape
    assert not np.any(sample_hashes(x.double()) == h)  # same values, other dtype
    nudged = x.clone()
    nudged[3, 1, 2, 2] = torch.nextafter(nudged[3, 1, 2, 2], torch.tensor(2.0))  # one ulp
    changed = sample_hashes(nudged) != h
    assert changed.tolist() == [i == 3 for i in range(10)]
    zeros = sample_hashes(torch.tensor([[0.0], [-0.0], [0.0]]))
    assert zeros[0] == zeros[2] != zeros[1]  # exact bytes: -0.0 is not 0.0
    assert sample_hashes(torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(DataError, match="first axis"):
        sample_hashes(np.array([None, 1], dtype=object))


def test_hashes_of_70000_images():
    x = torch.rand(70_000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x[69_999] = x[12]
    h = sample_hashes(x)
    report = find_duplicates(h, {"train": np.arange(60_000), "test": np.arange(60_000, 70_000)})
    assert report.to_dict() == {
        "within": {"train": 0, "test": 0},
        "across": {"train-test": 1},
        "leaked": {"test": 1},
    }
    assert report.drop["test"].tolist() == [9_999]


def test_copies_in_val_of_one_train_sample_and_an_empty_test_split():
    h = np.array(["a", "b", "c", "a", "a", "d"])
    report = find_duplicates(h, {"test": np.array([], dtype=np.int64), "val": [3, 4, 5], "train": [0, 1, 2]})
    assert list(report.within) == ["train", "val", "test"]  # train, val, test order whatever the order given
    assert report.to_dict("keep") == {
        "within": {"train": 0, "val": 1, "test": 0},
        "across": {"train-val": 2, "train-test": 0, "val-test": 0},
        "leaked": {"val": 2, "test": 0},
        "policy": "keep",
        "dropped": {"val": 0, "test": 0},
    }
    assert report.to_dict("drop")["dropped"] == {"val": 2, "test": 0}
    json.dumps(report.to_dict("drop"))  # JSON-ready: plain ints and strings


def test_policies():
    x, splits = planted(torch.rand(36, 4, generator=torch.Generator().manual_seed(5)))
    report = find_duplicates(sample_hashes(x), splits)
    kept = apply_policy(report, splits, "keep")
    assert all(np.array_equal(kept[k], splits[k]) for k in splits) and kept is not splits
    with pytest.raises(DataError) as err:
        apply_policy(report, splits, "error", what="dataset 'shapes'")
    message = str(err.value)
    assert message.startswith("dataset 'shapes': 3 of 12 val sample(s) and 5 of 14 test sample(s)")
    assert "train-val: 3, train-test: 4, val-test: 2" in message
    assert "data.on_duplicates: drop" in message and "data.on_duplicates: keep" in message
    dropped = apply_policy(report, splits, "drop")
    assert np.array_equal(dropped["val"], np.delete(splits["val"], DROP["val"]))
    assert np.array_equal(dropped["train"], splits["train"])
    with pytest.raises(DataError, match=r"data.on_duplicates: expected one of 'drop', 'keep', 'error', got 'skip'"):
        apply_policy(report, splits, "skip")

    clean = {"train": np.arange(20), "val": np.arange(20, 28)}
    no_dupes = find_duplicates(sample_hashes(x), clean)
    assert all(np.array_equal(apply_policy(no_dupes, clean, "error")[k], clean[k]) for k in clean)

    same = {"train": np.arange(5), "val": np.arange(5)}
    with pytest.raises(DataError, match="would leave no val data"):
        apply_policy(find_duplicates(sample_hashes(x), same), same, "drop")
    with pytest.raises(ValueError, match="report counted"):
        apply_policy(report, {**splits, "val": splits["val"][:3]}, "drop")


# ----------------------------------------------------------------------------- target in disguise


def test_one_to_one_columns():
    rng = np.random.default_rng(0)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], size=300)
    code = {"Adelie": 10.0, "Chinstrap": 20.0, "Gentoo": 30.0}
    noisy = np.where(rng.random(300) < 0.8, species, rng.choice(["Adelie", "Chinstrap", "Gentoo"], size=300))
    with_gaps = species.astype(object)
    with_gaps[::7] = None
    with_gaps[3::7] = ""
    recoded_with_nan = np.array([code[s] for s in species])
    recoded_with_nan[::5] = np.nan
    columns = {
        "bill_length": rng.normal(45, 5, 300),  # informative or not, many distinct values
        "label_copy": species.copy(),  # the target under another name
        "noisy_species": noisy,  # informative but wrong on ~13% of the rows
        "island": np.full(300, "Biscoe"),  # constant
        "species_code": np.array([code[s] for s in species]),  # numeric recoding of the target
        "species_code_gaps": recoded_with_nan,  # ... with missing values
        "label_gaps": with_gaps,  # a copy with None and empty cells
        "row_id": np.arange(300),  # one value per row
    }
    assert one_to_one_columns(columns, species) == ["label_copy", "species_code", "species_code_gaps", "label_gaps"]
    y = np.searchsorted(["Adelie", "Chinstrap", "Gentoo"], species)  # class indices as the target
    assert one_to_one_columns(columns, y) == ["label_copy", "species_code", "species_code_gaps", "label_gaps"]


def test_one_to_one_with_a_numeric_target():
    rng = np.random.default_rng(1)
    rating = rng.integers(1, 6, 200).astype(np.float64)  # a numeric target with repeating values
    price = rng.normal(size=200)  # a continuous target: every value distinct
    columns = {"rating_x2": rating * 2, "rating_text": rating.astype(int).astype(str), "other": rng.normal(size=200)}
    assert one_to_one_columns(columns, rating) == ["rating_x2", "rating_text"]
    # distinct floats against distinct floats match one to one trivially: not evidence, not flagged
    assert one_to_one_columns({"price_copy": price.copy(), "other": rng.normal(size=200)}, price) == []
    # nor are two columns that only repeat together because some rows are duplicated
    rows = np.concatenate([np.arange(150), np.arange(50)])
    assert one_to_one_columns({"feature": rng.normal(size=150)[rows]}, rng.normal(size=150)[rows]) == []
    with pytest.raises(DataError, match="column 'short': expected one value per row"):
        one_to_one_columns({"short": rating[:10]}, rating)
    with pytest.raises(DataError, match="one target value per row"):
        one_to_one_columns({"rating_x2": rating * 2}, rating.reshape(100, 2))
