"""The command line for the building blocks: inspect, a tabular CSV run, schedules and gradient logging."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sklearn.datasets import make_classification

from cli_in_process import refused, run as in_process
from deepworks import create_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, check=0):
    proc = subprocess.run([sys.executable, "-m", "deepworks", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check is not None:
        assert proc.returncode == check, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def ok(args, capsys):
    """Standard output of a command run in this process (tests/cli_in_process.py) that must succeed."""
    code, out, err = in_process(args, capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    return out


def forward_shapes(model, shape):
    """Each leaf layer's output shape, by running the Sequential layer by layer."""
    x, shapes = torch.zeros(2, *shape), []
    model.eval()
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            shapes.append(list(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("model", [
    {"filters": [8, 16], "padding": "same"},
    {"filters": [8, 16], "padding": "valid", "pool": "avg"},
    {"blocks": [{"filters": 8, "stride": 2, "pool": "none"}, {"filters": 16, "kernel_size": 5, "padding": 1}]},
])
def test_inspect_json_shapes_match_a_real_forward_pass(tmp_path, model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "fashion-mnist"}, "model": {"name": "cnn", **model}}))
    report = json.loads(cli("inspect", cfg, "--json").stdout)
    net = create_model("cnn", input_shape=(1, 28, 28), num_classes=10, **model)
    assert [row["output_shape"] for row in report["layers"]] == forward_shapes(net, (1, 28, 28))
    assert report["total_params"] == sum(p.numel() for p in net.parameters())
    text = cli("inspect", cfg).stdout
    assert "Conv2d" in text


def test_inspect_refuses_shapes_that_cannot_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {dataset: digits}\nmodel: {name: cnn, filters: [8, 8, 8, 8]}\n")
    proc = cli("inspect", cfg, check=2)
    assert "block 3" in proc.stderr and "Traceback" not in proc.stderr


def test_tabular_csv_train_inspect_predict(tmp_path, capsys):
    # the CLI in this process (cli_in_process): what it prints and its exit status are what is checked
    x, y = make_classification(n_samples=300, n_features=5, n_informative=4, n_redundant=0, n_classes=3, class_sep=2.0,
                               random_state=0)
    data = tmp_path / "table.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "d", "e", "species"])
        for row, label in zip(x, y):
            w.writerow([*map(float, row), ["setosa", "versicolor", "virginica"][label]])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": str(data), "target": "species"},
        "model": {"name": "softmax"},
        "train": {"epochs": 40, "progress": "log", "l2": 0.001, "schedule": {"name": "cosine"}, "warmup_steps": 5,
                  "optimizer": {"name": "adam", "lr": 0.05}, "log_gradients": 4},
    }))
    report = json.loads(ok(["inspect", cfg, "--json"], capsys))
    assert report["input_shape"] == [5] and report["total_params"] == 5 * 3 + 3
    run = tmp_path / "run"
    ok(["train", cfg, "--run-dir", run], capsys)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.7
    assert (run / "gradients.jsonl").exists()
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < lrs[1]  # the cosine schedule lowered the learning rate
    rows = tmp_path / "rows.csv"
    with rows.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["e", "d", "c", "b", "a"])  # any column order, no label needed
        for row in x[:20]:
            w.writerow(list(map(float, row[::-1])))
    preds = json.loads(ok(["predict", run, rows, "--json"], capsys))
    assert len(preds) == 20 and preds[0]["line"] == 2
    names = ["setosa", "versicolor", "virginica"]
    assert sum(p["prediction"] == names[t] for p, t in zip(preds, y[:20])) >= 14
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    refused(["predict", run, bad], capsys, "'c'")


def test_cnn_on_tabular_data_is_a_clear_error(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": str(data), "target": "label"}, "model": {"name": "cnn"}}))
    proc = cli("train", cfg, "--run-dir", tmp_path / "r", check=2)
    assert "image input" in proc.stderr and "softmax" in proc.stderr
