"""data.subset: a class filter and fixed, nested per-class subsets of the training and validation splits."""

from __future__ import annotations

import copy
import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from typer.testing import CliRunner

import deepworks
from deepworks.cli import app
from deepworks.config import load_config
from deepworks.data.splits import apply_subset, subset_classes
from deepworks.errors import ConfigError, DataError
from deepworks.pipeline import check_same_data, prepare_data
from deepworks.runs import RunDir


def digits(subset=None, seed=0, **data):
    return load_config({"data": {"dataset": "digits", **({"subset": subset} if subset is not None else {}), **data},
                        "seed": seed})


def samples(part) -> list[tuple[bytes, int]]:
    """Each sample's pixels and label, in the split's order."""
    return [(x.numpy().tobytes(), int(y)) for x, y in zip(part.x, part.y)]


def test_exact_per_class_counts_and_the_test_split_only_filtered():
    data = prepare_data(digits({"classes": ["3", "5", "7"], "train_per_class": 20, "val_per_class": 5}))
    assert data.classes == ["3", "5", "7"]
    assert torch.bincount(data.train.y).tolist() == [20, 20, 20]
    assert torch.bincount(data.val.y).tolist() == [5, 5, 5]
    assert data.info["class_counts"]["train"] == [20, 20, 20]
    assert data.info["sizes"]["train"] == 60 and data.info["sizes"]["val"] == 15
    assert data.info["subset"] == {"classes": ["3", "5", "7"], "train_per_class": 20, "val_per_class": 5, "seed": 0}
    # the test split is the whole run's (data seed 0), of those classes only, in the same order, relabelled
    whole = prepare_data(digits())
    keep = torch.isin(whole.test.y, torch.tensor([3, 5, 7]))
    assert torch.equal(data.test.x, whole.test.x[keep])
    assert torch.equal(data.test.y, torch.tensor([-1, -1, -1, 0, -1, 1, -1, 2, -1, -1])[whole.test.y[keep]])
    # normalisation statistics from the kept training samples only
    assert data.info["mean"][0] == pytest.approx(float((data.train.x.double() / 16).mean()), rel=1e-6)


def test_the_same_training_samples_whatever_the_run_seed():
    subset = {"train_per_class": 10, "val_per_class": 3}
    first, second = prepare_data(digits(subset, seed=0)), prepare_data(digits(subset, seed=1))
    assert sorted(samples(first.train)) == sorted(samples(second.train))
    assert sorted(samples(first.val)) == sorted(samples(second.val))
    assert torch.equal(first.test.x, second.test.x)
    other = prepare_data(digits({**subset, "seed": 1}))  # the subset's own seed chooses other samples
    assert sorted(samples(other.train)) != sorted(samples(first.train))


def test_smaller_subsets_lie_inside_larger_ones():
    small = set(samples(prepare_data(digits({"train_per_class": 10, "val_per_class": 2})).train))
    large_data = prepare_data(digits({"train_per_class": 20, "val_per_class": 4}))
    large = set(samples(large_data.train))
    assert small < large
    assert torch.bincount(large_data.train.y).tolist() == [20] * 10


def test_classes_by_name_and_by_index_renumber_the_labels():
    by_name = prepare_data(digits({"classes": ["2", "8"]}))
    by_index = prepare_data(digits({"classes": [8, 2]}))  # indices; the dataset's order is kept
    for data in (by_name, by_index):
        assert data.classes == ["2", "8"]
        for part in (data.train, data.val, data.test):
            assert set(part.y.tolist()) == {0, 1}
        assert data.task.output_size() == 2
    assert torch.equal(by_name.train.x, by_index.train.x) and torch.equal(by_name.test.y, by_index.test.y)
    assert by_name.info["subset"]["classes"] == ["2", "8"]
    assert subset_classes(["cat", 0], ["bird", "cat", "dog"]) == [0, 1]


def test_official_test_labels_are_filtered_by_their_own_labels():
    idx = {"train": np.arange(6), "val": np.arange(6, 9), "test": np.arange(4)}
    sub = load_config({"data": {"dataset": "digits", "subset": {"classes": ["b", "c"]}}}).data.subset
    kept, names, remap = apply_subset(idx, np.array([0, 1, 2] * 3), sub, ["a", "b", "c"],
                                      test_labels=np.array([2, 0, 0, 1]))
    assert names == ["b", "c"] and kept["test"].tolist() == [0, 3] and remap[[2, 1]].tolist() == [1, 0]


@pytest.mark.parametrize(
    "subset, words",
    [
        ({"classes": ["3", "seven"]}, ["data.subset.classes", "'seven'", "Classes: '0', '1'"]),
        ({"classes": ["3", 3]}, ["data.subset.classes", "listed twice", "Fix"]),
        ({"classes": [2, 12]}, ["data.subset.classes", "12", "0..9", "Fix"]),
        ({"train_per_class": 500}, ["data.subset.train_per_class", "class '0'", "fewer than the 500", "Fix: lower"]),
        ({"val_per_class": 100}, ["data.subset.val_per_class", "in the val split", "raise data.val_fraction"]),
    ],
)
def test_data_errors_name_the_key_and_the_fix(subset, words):
    with pytest.raises((ConfigError, DataError)) as e:
        prepare_data(digits(subset))
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_class_names_get_suggestions():
    with pytest.raises(ConfigError) as e:
        subset_classes(["sandal", "Shirt"], ["T-shirt/top", "Trouser", "Sandal", "Shirt"])
    assert "data.subset.classes: unknown class 'sandal'. Did you mean 'Sandal'?" in str(e.value)
    assert subset_classes([1, "4"], ["2", "1", "3", "4"]) == [1, 3]  # index 1 is class '1': no doubt
    with pytest.raises(ConfigError) as e:  # 3 is class '4' by index and class '3' by name
        subset_classes([1, 3], ["2", "1", "3", "4"])
    assert "data.subset.classes: 3 is the index of class '4' but also the name of class '3'" in str(e.value)
    assert "Fix: write the class you mean by its name, quoted: '4' or '3'." in str(e.value)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"dataset": "digits", "subset": {"classes": [1]}}, ["data.subset.classes", "at least 2"]),
        ({"dataset": "digits", "subset": {"classes": [1, 1]}}, ["data.subset.classes", "twice"]),
        ({"dataset": "digits", "subset": {"train_per_class": 0}}, ["data.subset.train_per_class"]),
        ({"dataset": "digits", "subset": {"per_class": 3}}, ["data.subset.per_class", "train_per_class"]),
        ({"dataset": "co2", "subset": {"train_per_class": 3}}, ["data.subset", "forecasting", "Remove data.subset"]),
        ({"path": "t.csv", "task": "regression", "subset": {"classes": [0, 1]}}, ["data.subset", "regression"]),
    ],
)
def test_config_errors_name_the_key(data, words):
    with pytest.raises(ConfigError) as e:
        load_config({"data": data})
    assert all(w in str(e.value) for w in words), str(e.value)


def table_csv(path, n=40):
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["size", "colour", "kind", "weight"])
        for i in range(n * 3):
            kind = "abc"[i % 3]
            w.writerow([f"{rng.normal(i % 3, 0.3):.4f}", rng.choice(["red", "blue"]), kind, f"{rng.normal(50, 9):.3f}"])
    return path


def test_tables_keep_the_classes_and_counts(tmp_path):
    path = table_csv(tmp_path / "t.csv")
    cfg = load_config({"data": {"path": str(path), "target": "kind",
                                "subset": {"classes": ["a", "c"], "train_per_class": 7, "val_per_class": 2}}})
    data = prepare_data(cfg)
    assert data.classes == ["a", "c"] and data.info["classes"] == ["a", "c"]
    assert torch.bincount(data.train.y).tolist() == [7, 7] and torch.bincount(data.val.y).tolist() == [2, 2]
    assert set(data.test.y.tolist()) == {0, 1} and data.info["sizes"]["test"] == 12  # ceil(0.15 * 120) * 2 / 3
    with pytest.raises(ConfigError) as e:  # an automatically detected regression target
        prepare_data(load_config({"data": {"path": str(path), "target": "weight", "subset": {"train_per_class": 3}}}))
    assert "data.subset" in str(e.value) and "regression" in str(e.value) and "Fix" in str(e.value)


def test_texts_keep_the_classes_and_counts(tmp_path):
    path = tmp_path / "texts.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "mood"])
        for i in range(90):
            mood = ["happy", "sad", "calm"][i % 3]
            w.writerow([f"a {mood} day number {i} with {mood} words", mood])
    cfg = load_config({"data": {"path": str(path), "text": "review", "target": "mood",
                                "subset": {"classes": ["sad", "calm"], "train_per_class": 6, "val_per_class": 2}}})
    data = prepare_data(cfg)
    assert data.classes == data.info["classes"] == ["calm", "sad"]  # the dataset's (sorted) order
    assert torch.bincount(data.train.y).tolist() == [6, 6] and torch.bincount(data.val.y).tolist() == [2, 2]
    assert len(data.raw["train"]) == 12 and not any("happy" in t for part in data.raw.values() for t in part)
    assert data.info["subset"]["train_per_class"] == 6


def test_streamed_image_folders_relabel(tmp_path):
    bunch = load_digits()
    for label in range(3):
        folder = tmp_path / "images" / f"class_{label}"
        folder.mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(bunch.target == label)[:30]):
            Image.fromarray((bunch.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{j}.png")
    cfg = load_config({"data": {"path": str(tmp_path / "images"), "in_memory": False,
                                "subset": {"classes": ["class_1", "class_2"], "train_per_class": 8}}})
    data = prepare_data(cfg)
    assert data.classes == ["class_1", "class_2"]
    assert torch.bincount(data.train.y).tolist() == [8, 8]
    batches = list(data.train.stream(torch.arange(len(data.train)), 4, device=torch.device("cpu"), num_workers=0))
    assert torch.equal(torch.cat([y for _, y in batches]), data.train.y)
    assert set(data.test.y.tolist()) <= {0, 1}


def test_a_changed_subset_changes_the_split_fingerprint(tmp_path):
    first = prepare_data(digits({"train_per_class": 10}))
    run = RunDir(tmp_path / "r").create()
    run.write_json(run.data, first.info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_same_data(run, prepare_data(digits({"train_per_class": 10}, seed=3)))  # same data: no warning
    with pytest.warns(UserWarning, match="the data has changed"):
        check_same_data(run, prepare_data(digits({"train_per_class": 20})))


def test_set_reaches_into_the_subset_section_and_inspect_sees_the_classes(tmp_path):
    cfg = load_config({"data": {"dataset": "digits"}}, ["data.subset.train_per_class=100", "data.subset.seed=4"])
    assert cfg.data.subset.train_per_class == 100 and cfg.data.subset.seed == 4
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: digits}\nmodel: {name: softmax}\n")
    result = CliRunner().invoke(app, ["inspect", str(path), "--set", "data.subset.classes=[0,1,2]", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num_classes"] == 3


def test_train_and_predict_know_only_the_kept_classes(tmp_path):
    run = deepworks.train(
        {"data": {"dataset": "digits", "subset": {"classes": [0, 1, 2], "train_per_class": 20, "val_per_class": 5}},
         "model": {"name": "cnn", "filters": [8]}, "train": {"epochs": 1, "progress": "none", "precision": "fp32"},
         "report": False},
        run_dir=tmp_path / "r",
    )
    info = json.loads((run.dir / "data.json").read_text())
    assert run.classes == info["classes"] == ["0", "1", "2"]
    assert info["sizes"]["train"] == 60 and info["sizes"]["val"] == 15
    assert info["subset"] == {"classes": ["0", "1", "2"], "train_per_class": 20, "val_per_class": 5, "seed": 0}
    # the test figures: every test image of digits 0-2 in the split without a subset (the test
    # split is filtered, never subsampled), fed to the weights of model.safetensors with the
    # run's own normalisation by hand, scored by scikit-learn
    full = prepare_data(load_config({"data": {"dataset": "digits"}}))
    rows = full.test.y < 3
    model = copy.deepcopy(run.model)
    model.load_state_dict(load_file(run.dir / "model.safetensors"))
    mean, std = (torch.tensor(info[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        logits = model.eval()((full.test.x[rows].float() * info["pixels"]["scale"] - mean) / std)
    assert run.summary["test"]["support"] == int(rows.sum()) == 80
    assert run.summary["test"]["accuracy"] == pytest.approx(
        accuracy_score(full.test.y[rows].numpy(), logits.argmax(1).numpy()), abs=1e-12)
    image = tmp_path / "nine.png"
    nine = load_digits().images[load_digits().target == 9][0]
    Image.fromarray((nine * 255 / 16).astype(np.uint8), mode="L").save(image)
    (pred,) = deepworks.predict(run.dir, [image], top_k=3)
    assert pred["prediction"] in {"0", "1", "2"}
    assert {p["class"] for p in pred["top_k"]} <= {"0", "1", "2"}
