"""The Python API end to end: deepworks.train / evaluate / predict / resume on digits and image folders."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

import deepworks
from deepworks.errors import DataError
from deepworks.pipeline import prepare_data

FAST = {"model": {"name": "cnn", "filters": [16, 32]},
        "train": {"epochs": 12, "progress": "none", "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.003}}}


def digit_folder(root, per_class=30, size=16):
    """Digits saved as PNG/JPEG files, one subfolder per class, upscaled to ``size`` pixels."""
    digits = load_digits()
    for label in range(3):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        idx = np.flatnonzero(digits.target == label)[:per_class]
        for j, i in enumerate(idx):
            img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").resize((size, size))
            img.save(folder / (f"{j}.png" if j % 3 else f"{j}.jpg"))
    return root


def test_train_with_keyword_overrides(tmp_path):
    run = deepworks.train({"data": {"dataset": "digits"}, **FAST}, run_dir=tmp_path / "r", train__epochs=4,
                          model={"hidden": [32]})
    assert len(run.history) == 4 and run.config.train.epochs == 4
    assert run.config.model.params["hidden"] == [32]
    assert set(run.summary) >= {"train", "val", "test", "epochs_run", "wall_seconds", "versions"}
    assert run.summary["test"]["accuracy"] > 0.9
    again = deepworks.load_run(run.dir)
    assert again.classes == [str(i) for i in range(10)]


def test_evaluate_equals_a_forward_pass_of_the_saved_weights(tmp_path):
    """The oracle: the weights of model.safetensors (read with safetensors) in a fresh network,
    fed each split's stored pixels normalised by hand from data.json ((v * scale - mean) / std),
    the logits averaged with the mirror images' (train.tta: hflip), scored by scikit-learn. fp32:
    on a CPU with bf16 a conv model is evaluated under bf16 autocast, which moves near ties."""
    config = {"data": {"dataset": "digits"}, "model": FAST["model"],
              "train": {**FAST["train"], "epochs": 2, "tta": "hflip", "precision": "fp32"}, "report": False}
    run = deepworks.train(config, run_dir=tmp_path / "r")
    model = copy.deepcopy(run.model)
    model.load_state_dict(load_file(run.dir / "model.safetensors"))
    model.eval()
    info = json.loads((run.dir / "data.json").read_text())
    mean, std = (torch.tensor(info[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    torch.manual_seed(run.config.seed)
    data = prepare_data(run.config)
    flips_matter = False
    for split in ("val", "test"):
        part = getattr(data, split)
        x = (part.x.float() * info["pixels"]["scale"] - mean) / std
        with torch.no_grad():
            plain = model(x)
            logits = (plain + model(x.flip(-1))) / 2
        y, pred = part.y.numpy(), logits.argmax(1).numpy()
        flips_matter |= bool((plain.argmax(1).numpy() != pred).any())
        report = deepworks.evaluate(run.dir, split=split)
        assert report["split"] == split
        assert report["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(10), zero_division=0)
        assert report["macro_f1"] == pytest.approx(f1.mean(), abs=1e-12)
        assert report["macro_precision"] == pytest.approx(precision.mean(), abs=1e-12)
        assert report["macro_recall"] == pytest.approx(recall.mean(), abs=1e-12)
        assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=range(10)).tolist()
        assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, part.y)), rel=1e-5)
    assert flips_matter  # the mirror images change some predictions, so a dropped TTA would show


def test_image_folder_with_bad_files_is_reported_and_skipped(tmp_path):
    root = digit_folder(tmp_path / "images")
    (root / "class_0" / "empty.png").write_bytes(b"")
    (root / "class_1" / "broken.jpg").write_bytes(b"not really a jpeg")
    with pytest.warns(UserWarning) as caught:
        run = deepworks.train({"data": {"path": str(root)}, **FAST}, run_dir=tmp_path / "r")
    text = " ".join(str(w.message) for w in caught)
    assert "empty.png" in text and "broken.jpg" in text
    info = json.loads((run.dir / "data.json").read_text())
    assert info["classes"] == ["class_0", "class_1", "class_2"]
    assert info["input_shape"] == [1, 16, 16]
    assert sum(info["sizes"].values()) == 90  # the two bad files were skipped
    assert run.summary["test"]["accuracy"] >= 0.9
    preds = deepworks.predict(run.dir, [root / "class_2" / "1.png", root / "class_0" / "0.jpg"], top_k=2)
    assert [p["prediction"] for p in preds] == ["class_2", "class_0"]

    with pytest.raises(DataError) as e:
        deepworks.train({"data": {"path": str(root), "on_bad_file": "error"}, **FAST}, run_dir=tmp_path / "r2")
    assert "empty.png" in str(e.value) and "broken.jpg" in str(e.value)


def test_resume_of_a_finished_run_changes_nothing(digits_cnn_copy):
    """On this test's copy of the session's digits CNN run (tests/conftest.py): early stopping
    ended it after epoch 2 of 3, so resuming must not train the third either."""
    run = deepworks.load_run(digits_cnn_copy)
    before = (run.dir / "summary.json").read_text()
    again = deepworks.resume(run.dir)
    assert (run.dir / "summary.json").read_text() == before
    assert again.summary["test"] == run.summary["test"]
