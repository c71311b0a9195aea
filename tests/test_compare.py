"""deepworks compare: the config keys that differ, the summaries' figures, a self-contained page, and
runs with missing or damaged files."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import deepworks
from deepworks.cli import main
from deepworks.errors import CheckpointError, ConfigError


def tiny(lr: float, dropout: float) -> dict:
    return {"data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [16], "dropout": dropout},
            "train": {"epochs": 2, "batch_size": 64, "progress": "none", "optimizer": {"name": "adamw", "lr": lr}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = deepworks.train(tiny(0.003, 0.1), run_dir=root / "slow").dir
    b = deepworks.train(tiny(0.01, 0.3), run_dir=root / "fast").dir
    return a, b


def copy_run(run, to):
    shutil.copytree(run, to)
    return to


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_differing_keys_and_figures(runs, tmp_path):
    a, b = runs
    result = deepworks.compare([a, b], out=tmp_path / "page.html")
    assert result["config"] == {"model.dropout": [0.1, 0.3], "train.optimizer.lr": [0.003, 0.01]}
    assert [r["name"] for r in result["runs"]] == ["slow", "fast"]
    assert result["notes"] == []
    for i, run in enumerate((a, b)):
        s = summary(run)
        assert result["metrics"]["val_accuracy"][i] == s["val"]["accuracy"]
        assert result["metrics"]["test_accuracy"][i] == s["test"]["accuracy"]
        for key in ("best_epoch", "epochs_run", "wall_seconds"):
            assert result["metrics"][key][i] == s[key]
    assert set(result["metrics"]) == {"val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "wall_seconds"}
    assert result["html"] == str(tmp_path / "page.html")


def test_the_page_is_self_contained(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = deepworks.compare(runs)  # default: runs/compare/compare.html, beside the runs
    page = (tmp_path / "runs" / "compare" / "compare.html").read_text()
    assert result["html"] == str(Path("runs", "compare", "compare.html"))
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # the losses, and the monitored metric
    assert all(base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b", page) and "@import" not in page and "url(" not in page
    for text in ("slow", "fast", "train.optimizer.lr", "model.dropout", "val_accuracy"):
        assert text in page


def test_name_and_seed_count_as_differences(runs, tmp_path):
    a, _ = runs
    c = copy_run(a, tmp_path / "other")
    config = yaml.safe_load((c / "config.yaml").read_text())
    config.update(name="other", seed=7)
    (c / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = deepworks.compare([a, c], out=tmp_path)
    assert result["config"] == {"name": ["run", "other"], "seed": [0, 7]}
    assert (tmp_path / "compare.html").exists()  # a directory gets compare.html inside


def test_truncated_and_missing_files_leave_notes(runs, tmp_path, capsys):
    a, b = runs
    cut = copy_run(b, tmp_path / "cut")
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text[: len(text) - 40])  # the last line cut off mid-JSON
    bare = copy_run(a, tmp_path / "bare")
    (bare / "metrics.jsonl").unlink()
    (bare / "summary.json").unlink()

    result = deepworks.compare([a, cut, bare], out=tmp_path / "c.html")
    assert [r["epochs_logged"] for r in result["runs"]] == [2, 1, 0]
    notes = result["notes"]
    assert any(str(cut / "metrics.jsonl") in n and "line 2 of 2" in n and "epoch 1" in n for n in notes), notes
    assert any(str(bare / "metrics.jsonl") in n and "missing" in n for n in notes), notes
    assert any(str(bare / "summary.json") in n and "missing" in n for n in notes), notes
    assert result["metrics"]["val_accuracy"][2] is None and result["metrics"]["epochs_run"][1] == 2
    assert "metrics.jsonl" in (tmp_path / "c.html").read_text()

    code = main(["compare", str(a), str(cut), "--out", str(tmp_path / "d.html")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note:" in captured.out and str(cut / "metrics.jsonl") in captured.out
    assert "train.optimizer.lr" in captured.out and (tmp_path / "d.html").exists()


def test_regression_runs_show_r2_and_mae(runs, tmp_path):
    a, _ = runs
    reg = copy_run(a, tmp_path / "reg")
    s = summary(reg)
    s.update(task="regression", monitor="val_loss", val={"r2": 0.8, "mae": 1.5, "loss": 3.0},
             test={"r2": 0.7, "mae": 1.7, "loss": 3.5})
    (reg / "summary.json").write_text(json.dumps(s))
    result = deepworks.compare([a, reg], out=tmp_path / "c.html")
    m = result["metrics"]
    assert m["val_r2"] == [None, 0.8] and m["test_mae"] == [None, 1.7]
    assert m["val_accuracy"][1] is None and m["val_accuracy"][0] == summary(a)["val"]["accuracy"]


def test_errors(runs, tmp_path, monkeypatch):
    a, _ = runs
    monkeypatch.chdir(tmp_path)  # where the default page (runs/compare/compare.html) would go
    with pytest.raises(CheckpointError, match="no config.yaml"):
        deepworks.compare([a, tmp_path])
    with pytest.raises(CheckpointError, match="no such run directory"):
        deepworks.compare([a, tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="at least two"):
        deepworks.compare([a])
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_cli_exits_2_naming_a_path_that_is_not_a_run(runs, tmp_path):
    a, _ = runs
    page = tmp_path / "page.html"
    proc = subprocess.run([sys.executable, "-m", "deepworks", "compare", str(a), str(tmp_path), "--out", str(page)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "config.yaml" in lines[0], proc.stderr
    assert not page.exists()
