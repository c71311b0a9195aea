"""Training without a config: `deepworks train FOLDER` / `TABLE --target ...` infers the config,
prints it, saves it in the run directory, and that config.yaml repeats the run to the same
figures; what cannot be inferred is a one-line error naming the option that settles it.

In-process through ``deepworks.cli.main``, on tiny data, one epoch per run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from cli_in_process import refused as refused_in_process
from cli_in_process import run
from deepworks.autoconfig import config_for_data
from deepworks.config import DataConfig, load_config
from deepworks.errors import ConfigError, DataError

ONE_EPOCH = ["--set", "train.epochs=1", "--set", "train.progress=none", "--set", "report=false"]
SMALL_LSTM = ["--set", "model.hidden=16", "--set", "model.embedding=16"]  # the default's size is for real texts
WORDS = ["the", "film", "plot", "was", "quite", "acting", "and", "a", "story", "cast", "ending", "music"]


def refused(args, capsys, *needles):
    return refused_in_process(args, capsys, *needles, one_line=True)


# --------------------------------------------------------------------------- tiny data


def digit_images(root: Path, per_class: int = 12) -> list[tuple[str, str]]:
    """Digits 0-2 as 8x8 PNG files in ``root/class_k/``; returns (relative path, class) pairs."""
    digits = load_digits()
    files = []
    for label in range(3):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{j}.png")
            files.append((f"class_{label}/{j}.png", f"class_{label}"))
    return files


def numbers_csv(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] + x[:, 1] > 0).astype(int)}).to_csv(
        path, index=False)
    return path


def reviews_csv(path: Path, n: int = 120, extra_text: bool = False) -> Path:
    """Reviews of filler words and one of good/bad, which decides the label; a category column beside them."""
    rng = np.random.default_rng(0)
    rows = [["review", "label", "genre"] + (["summary"] if extra_text else [])]
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(4, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if i % 2 else "bad")
        row = [" ".join(words), "pos" if i % 2 else "neg", ["drama", "comedy"][i % 3 == 0]]
        rows.append(row + ([" ".join(rng.choice(WORDS, size=6))] if extra_text else []))
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def series_csv(path: Path, n: int = 120) -> Path:
    t = np.arange(n)
    days = np.datetime64("2024-01-01") + t
    values = np.round(10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / 7), 4)
    pd.DataFrame({"date": days.astype(str), "value": values}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- train, then retrain from config.yaml


def train_twice(tmp_path, capsys, data, *flags) -> tuple[dict, dict, dict]:
    """Train from ``data`` with ``flags``, then from the first run's config.yaml; returns the
    first run's inferred config (from its config.yaml) and both summaries."""
    first, again = tmp_path / "runs" / "first", tmp_path / "runs" / "again"
    code, out, err = run(["train", data, *flags, *ONE_EPOCH, "--run-dir", first], capsys)
    assert code == 0, out + err
    assert out.startswith("config (inferred from the data") and "  data: {path: " in out, out
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["report"] is False  # --set applies as with a config
    code, out, err = run(["train", first / "config.yaml", "--run-dir", again], capsys)
    assert code == 0, out + err
    assert "inferred" not in out  # a config is a config: nothing inferred
    summaries = [json.loads((d / "summary.json").read_text()) for d in (first, again)]
    assert summaries[0]["test"] == summaries[1]["test"]  # the saved config repeats the run
    return saved, summaries[0], summaries[1]


def test_train_an_image_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digit_images(tmp_path / "digits")
    saved, first, _ = train_twice(tmp_path, capsys, "digits")
    assert saved["name"] == "digits" and saved["data"]["path"] == "digits" and saved["model"]["name"] == "cnn"
    assert first["task"] == "classification"
    assert json.loads((tmp_path / "runs/first/data.json").read_text())["kind"] == "image"


def test_train_a_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    numbers_csv(tmp_path / "table.csv")
    saved, first, _ = train_twice(tmp_path, capsys, "table.csv", "--target", "y")
    assert saved["data"]["target"] == "y" and saved["data"]["task"] == "classification"
    assert saved["model"]["name"] == "mlp" and first["task"] == "classification"


def test_train_texts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews_csv(tmp_path / "reviews.csv")
    saved, first, _ = train_twice(tmp_path, capsys, "reviews.csv", "--text", "review", "--target", "label",
                                  *SMALL_LSTM, "--set", "data.max_length=16")
    assert saved["data"]["text"] == "review" and saved["data"]["target"] == "label"
    assert saved["model"]["name"] == "lstm" and saved["model"]["bidirectional"]  # the text kind's default model
    assert json.loads((tmp_path / "runs/first/data.json").read_text())["kind"] == "text"


def test_train_a_series(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    series_csv(tmp_path / "series.csv")
    saved, first, _ = train_twice(tmp_path, capsys, "series.csv", "--time", "date", "--target", "value",
                                  "--set", "model.hidden=16")
    assert saved["data"]["time"] == "date" and saved["data"]["target"] == "value"
    assert first["task"] == "forecasting" and saved["model"]["name"] == "lstm"


def test_cross_validation_from_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    numbers_csv(tmp_path / "table.csv")
    code, out, err = run(["train", "table.csv", "--cv", "2", *ONE_EPOCH, "--run-dir", tmp_path / "cv"], capsys)
    assert code == 0, out + err
    assert "2-fold cross-validation" in out
    saved = yaml.safe_load((tmp_path / "cv/config.yaml").read_text())
    assert saved["data"]["cv"] == 2 and saved["data"]["target"] == "y"


# --------------------------------------------------------------------------- the inference rules


@pytest.mark.parametrize("data, name", [({"path": "t.csv", "target": "y"}, "mlp"),
                                        ({"path": "t.csv", "text": "t", "target": "y"}, "lstm"),
                                        ({"path": "t.csv", "time": "t", "target": "y"}, "lstm")])
def test_model_keys_without_a_name_tune_the_default_model(data, name):
    # --set model.hidden=... on a config without a model section keeps the kind's model
    hidden = [8] if name == "mlp" else 8
    model = load_config({"data": data}, {"model.hidden": hidden}).model
    assert (model.name, model.params["hidden"]) == (name, hidden)


def test_the_target_is_found_by_its_name(tmp_path):
    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5], "Label": ["cat", "dog", "cat", "dog"]})
    frame.to_csv(tmp_path / "pets.csv", index=False)
    assert config_for_data(tmp_path / "pets.csv") == {
        "name": "pets", "data": {"path": str(tmp_path / "pets.csv"), "target": "Label", "task": "classification"}}
    # a DataFrame gives the same data keys, without a path
    assert config_for_data(frame) == {"data": {"target": "Label", "task": "classification"}}


def test_the_task_follows_the_target(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=50), "price": rng.normal(size=50) * 100, "binary": [0, 1] * 25,
                          "grade": rng.integers(1, 6, 50)})
    assert config_for_data(frame, target="price")["data"]["task"] == "regression"  # fractions
    assert config_for_data(frame, target="binary")["data"]["task"] == "classification"  # two values
    with pytest.raises(ConfigError, match=r"'grade' holds 5 distinct whole numbers .*--task classification or --task"):
        config_for_data(frame, target="grade")
    assert config_for_data(frame, target="grade", task="regression")["data"]["task"] == "regression"


def test_a_text_column_is_found(tmp_path):
    reviews_csv(tmp_path / "reviews.csv")
    data = config_for_data(tmp_path / "reviews.csv")["data"]
    assert (data["text"], data["target"]) == ("review", "label")  # genre repeats: a category, not text
    load_config({"data": data})  # a valid config as it stands


def test_the_image_column_of_a_list(tmp_path):
    files = digit_images(tmp_path / "images")
    pd.DataFrame({"file": [f"images/{f}" for f, _ in files], "label": [c for _, c in files]}).to_csv(
        tmp_path / "labels.csv", index=False)
    data = config_for_data(tmp_path / "labels.csv")["data"]
    assert data == {"path": str(tmp_path / "labels.csv"), "image": "file", "target": "label"}
    if "image" not in DataConfig.model_fields:
        pytest.skip("data.image (image lists) is not a config key yet")
    load_config({"data": data})


def test_a_file_without_a_header_is_told_from_numbered_columns(tmp_path):
    (tmp_path / "numbers.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    with pytest.raises(DataError, match=r"numbers.csv: the first row \(1, 2, 3\) looks like data.*no header row"):
        config_for_data(tmp_path / "numbers.csv")
    (tmp_path / "years.csv").write_text("2019,2020,label\n1.5,2.5,a\n3.5,4.5,b\n")  # names that are numbers
    assert config_for_data(tmp_path / "years.csv")["data"]["target"] == "label"


@pytest.mark.parametrize("frame, flags, needles", [
    ({"x": [1, 2], "score": [0, 1]}, {}, ["which column is the target?", "'x', 'score'", "--target COLUMN"]),
    ({"x": [1, 2], "label": [0, 1], "class": [1, 0]}, {}, ["'label', 'class' could each be", "--target"]),
    ({"x": [1, 2], "y": [0, 1]}, {"target": "Y"}, ["no column 'Y' (--target)", "Did you mean 'y'?"]),
    ({"a": ["one two three four five", "six seven eight nine ten"], "b": ["the cat sat on a mat", "a dog ran in the park"],
      "y": [0, 1]}, {}, ["'a', 'b' all look like text", "--text COLUMN"]),
    ({"t": [1, 2], "y": [1.0, 2.0]}, {"time": "t", "task": "regression"}, ["--task regression", "remove --task"]),
])
def test_what_cannot_be_inferred_is_refused(frame, flags, needles):
    with pytest.raises((ConfigError, DataError)) as caught:
        config_for_data(pd.DataFrame(frame), **flags)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# --------------------------------------------------------------------------- the command line's refusals


def test_refusals_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=40), "y": rng.integers(0, 5, 40)}).to_csv("ambiguous.csv", index=False)
    pd.DataFrame({"x": rng.normal(size=40), "score": rng.integers(0, 2, 40)}).to_csv("unnamed.csv", index=False)
    Path("noheader.csv").write_text("5.1,3.5,setosa\n4.9,3.0,setosa\n6.3,3.3,virginica\n")
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    refused(["train", "ambiguous.csv"], capsys, "ambiguous.csv", "--task classification or --task regression")
    refused(["train", "unnamed.csv"], capsys, "which column is the target?", "'x', 'score'", "--target")
    refused(["train", "noheader.csv"], capsys, "noheader.csv", "no header row", "add a first line naming the columns")
    refused(["train", "photos", "--target", "y"], capsys, "--target", "folder of images")
    refused(["train", "nothing-here"], capsys, "nothing-here: no such file or folder")
    refused(["train", "unnamed.csv", "--task", "ranking"], capsys, "--task", "classification or regression")
    refused(["train", "--target", "y"], capsys, "--target", "give the file")
    refused(["train", "--resume", "photos", "--time", "t"], capsys, "--resume RUN_DIR takes no --time")
    (tmp_path / "run.yaml").write_text("data: {path: unnamed.csv, target: score}\n")
    before = sorted(tmp_path.rglob("*"))
    refused(["train", "run.yaml", "--target", "x"], capsys, "run.yaml is a config", "--set data.target=COLUMN")
    assert sorted(tmp_path.rglob("*")) == before  # refused before anything is written
