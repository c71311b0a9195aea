"""The Python API end to end: deepworks.train / evaluate / predict / resume on digits and image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import deepworks
from deepworks.errors import DataError

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
    report = deepworks.evaluate(run.dir, split="test")
    assert report["accuracy"] == pytest.approx(run.summary["test"]["accuracy"])


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


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    run = deepworks.train({"data": {"dataset": "digits"}, **FAST}, run_dir=tmp_path / "r", train__epochs=1)
    before = (run.dir / "summary.json").read_text()
    again = deepworks.resume(run.dir)
    assert (run.dir / "summary.json").read_text() == before
    assert again.summary["test"] == run.summary["test"]
