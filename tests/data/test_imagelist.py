"""Image lists (data.path: a CSV of image files and labels, data.image): the same image data as a
folder of class subfolders. The oracle is the folder itself: a CSV that lists the folder's files, in
another row order, gives the same samples in the same splits and the same figures after training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import deepworks
from deepworks.cli import main
from deepworks.config import data_kind, load_config
from deepworks.data import load_dataset
from deepworks.data.folders import FolderStream
from deepworks.data.imagelist import read_image_list
from deepworks.errors import DataError
from deepworks.kinds import prepare_data

CLASSES, PER_CLASS, WRITERS = 5, 12, 6
BASE = {
    "seed": 3,
    "model": {"name": "cnn", "filters": [8], "hidden": [16]},
    "train": {"epochs": 1, "batch_size": 16, "progress": "none", "precision": "fp32", "num_workers": 0,
              "optimizer": {"name": "adamw", "lr": 0.01}},
    "report": False,
}


def digits_with_list(root: Path, *, absolute: int = 0) -> tuple[Path, Path, dict[str, str]]:
    """Digits as PNG files in one subfolder per class, and labels.csv beside them listing the same
    files in a shuffled row order (the first ``absolute`` rows by absolute path), with a ``writer``
    column (a group) and a numeric ``id`` column. Returns (folder, csv, writer of each file)."""
    digits = load_digits()
    folder = root / "images"
    rows, writer = [], {}
    for label in range(CLASSES):
        (folder / f"digit_{label}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(digits.target == label)[:PER_CLASS]):
            name = f"digit_{label}/{j:02d}.png"
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / name)
            writer[str(folder / name)] = f"w{(j + label) % WRITERS}"
            rows.append([name, f"digit_{label}", writer[str(folder / name)], str(len(rows))])
    random.Random(7).shuffle(rows)
    for row in rows[:absolute]:
        row[0] = str(folder / row[0])
    csv = folder / "labels.csv"
    csv.write_text("file,label,writer,id\n" + "".join(",".join(r) + "\n" for r in rows))
    return folder, csv, writer


def listed(csv: Path, **data) -> dict:
    return {**BASE, "data": {"path": str(csv), "image": "file", "target": "label", **data}}


def test_an_image_list_equals_the_folder_it_lists(tmp_path):
    folder, csv, _ = digits_with_list(tmp_path, absolute=10)
    by_folder = {**BASE, "data": {"path": str(folder)}}
    assert data_kind(load_config(listed(csv)).data) == "image"
    assert load_config(listed(csv)).model.name == "cnn"  # an image run's default model, not a table's MLP
    a, b = prepare_data(load_config(by_folder)), prepare_data(load_config(listed(csv)))
    assert a.classes == b.classes == [f"digit_{k}" for k in range(CLASSES)]
    for split in ("train", "val", "test"):  # the same images, labels and order in every split
        pa, pb = getattr(a, split), getattr(b, split)
        assert len(pa) > 0 and torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y)
    assert a.info["split_fingerprint"] == b.info["split_fingerprint"]

    run_a = deepworks.train(by_folder, run_dir=tmp_path / "a")
    run_b = deepworks.train(listed(csv), run_dir=tmp_path / "b")
    assert run_b.summary["test"] == run_a.summary["test"]
    assert run_b.summary["val"] == run_a.summary["val"]
    info = json.loads((run_b.dir / "data.json").read_text())
    assert info["kind"] == "image" and info["dataset"] == "image-list" and info["source"] == str(csv.resolve())
    files = sorted(folder.glob("digit_*/0*.png"))
    pa, pb = deepworks.predict(run_a.dir, files), deepworks.predict(run_b.dir, files)
    assert pa == pb and len(pa) == len(files)


def test_a_streamed_image_list_keeps_its_files_labels_and_groups(tmp_path):
    _, csv, writer = digits_with_list(tmp_path)
    ds = load_dataset(path=csv, image="file", target="label", group_by="writer", in_memory=False)
    assert isinstance(ds, FolderStream) and ds.name == "image-list"
    files = [str(p) for p in ds.files.paths]
    assert files == sorted(files, key=lambda f: (f.split("/")[-2], f))  # classes by name, then files by path
    assert [writer[f] for f in files] == list(ds.groups)
    assert [ds.classes[k] for k in ds.y.tolist()] == [Path(f).parent.name for f in files]


@pytest.mark.parametrize("group_by", ["writer", None])
def test_group_by_keeps_each_group_in_one_split(tmp_path, group_by):
    _, csv, writer = digits_with_list(tmp_path)
    data = prepare_data(load_config(listed(csv, group_by=group_by, in_memory=False)))
    groups = {}
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        groups[split] = {writer[str(part.source.paths[i])] for i in part.indices}
        assert groups[split]
    shared = groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"]
    disjoint = not shared
    assert disjoint == (group_by is not None)  # every writer in one split only with group_by; spread without


def test_semicolons_and_parquet_list_the_same_files(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    _, csv, _ = digits_with_list(tmp_path)
    expected = read_image_list(csv, "file", "label", group_by="writer")
    frame = pd.read_csv(csv, dtype=str)
    frame.to_csv(csv.with_name("semi.csv"), sep=";", index=False)
    frame.assign(id=frame["id"].astype(int)).to_parquet(csv.with_name("labels.parquet"))
    for other in ("semi.csv", "labels.parquet"):
        got = read_image_list(csv.with_name(other), "file", "label", group_by="writer")
        assert got.files == expected.files and got.classes == expected.classes
        assert list(got.groups) == list(expected.groups)
    with pytest.raises(DataError, match="column 'id' \\(data.image\\) holds numbers"):
        read_image_list(csv.with_name("labels.parquet"), "id", "label")


def test_missing_and_unreadable_files_are_listed_counted_and_skipped(tmp_path):
    folder, csv, _ = digits_with_list(tmp_path)
    (folder / "digit_1" / "00.png").write_bytes(b"not a png")
    lines = csv.read_text().splitlines()
    lines += [f"gone/{k}.png,digit_0,w0,{100 + k}" for k in range(11)]  # 11 files that do not exist
    csv.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(path=csv, image="file", target="label")
    message = " ".join(str(w.message) for w in caught)
    assert "skipped 12 unreadable image file(s)" in message and "(2 more)" in message, message
    assert "no such image file (row" in message and "gone/" in message
    assert len(ds.y) == CLASSES * PER_CLASS - 1
    with pytest.raises(DataError, match="12 image file\\(s\\) cannot be read"):
        load_dataset(path=csv, image="file", target="label", on_bad_file="error")


def refused(args, capsys, *needles):
    """Exit 2, no traceback, and every needle on one line of the message (a config error is the
    project's three lines: the file, the key's one-line message, the fix; a data error is one line)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 3 and lines[0].startswith("error:"), err
    assert any(all(needle in line for needle in needles) for line in lines), err
    return err


@pytest.mark.parametrize(
    "change, needles",
    [
        ({"image": "fle"}, ["labels.csv: no column 'fle' (data.image)", "Did you mean 'file'?",
                            "Columns: 'file', 'label', 'writer', 'id'"]),
        ({"target": "labl"}, ["no column 'labl' (data.target)", "Did you mean 'label'?"]),
        ({"group_by": "writr"}, ["no column 'writr' (data.group_by)"]),
        ({"image": "id"}, ["column 'id' (data.image) holds numbers", "not image file paths"]),
        ({"image": "writer"}, ["column 'writer' (data.image) does not hold image file paths"]),
        ({"path": "FOLDER"}, ["data.image ('file') names the column of image files in a table", "data.path"]),
        ({"text": "label"}, ["data.image ('file') makes this an image run, but data.text"]),
        ({"time": "id"}, ["data.image ('file') makes this an image run, but data.time"]),
        ({"image": None, "path": "FOLDER", "target": None, "group_by": "writer"},
         ["data.group_by ('writer') names a column", "only an image list"]),
        ({"on_bad_file": "error", "MISSING": True}, ["1 image file(s) cannot be read", "no such image file (row"]),
    ],
)
def test_bad_image_lists_are_refused_in_one_line(tmp_path, capsys, change, needles):
    folder, csv, _ = digits_with_list(tmp_path)
    if change.pop("MISSING", False):
        csv.write_text(csv.read_text() + "nowhere.png,digit_0,w0,999\n")
    config = listed(csv, **{k: (str(folder) if v == "FOLDER" else v) for k, v in change.items()})
    config["data"] = {k: v for k, v in config["data"].items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    refused(["train", path, "--run-dir", tmp_path / "r"], capsys, *needles)
    assert not (tmp_path / "r").exists()
