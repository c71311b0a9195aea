"""train.tensorboard: the event files hold metrics.jsonl's numbers and weight/gradient histograms."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from sklearn.datasets import load_digits

import deepworks
from deepworks import Trainer
from deepworks.config import load_config
from deepworks.errors import ConfigError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = {"data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [16], "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 64, "progress": "none", "optimizer": {"name": "adamw", "lr": 0.01},
                  "tensorboard": True, "tensorboard_every": 5}}


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def metric_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def numeric(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_scalars_equal_the_metrics_log_and_histograms_exist(tmp_path):
    run = deepworks.train(TINY, run_dir=tmp_path / "r")
    acc = events(run.dir / "tensorboard")
    lines = metric_lines(run.dir)
    assert len(lines) == 3
    keys = set(numeric(lines[0]))
    assert {"train_loss", "val_loss", "val_accuracy", "lr", "epoch"} <= keys
    assert keys == set(acc.Tags()["scalars"])
    for key in keys:
        logged = acc.Scalars(key)
        assert [e.value for e in logged] == pytest.approx([line[key] for line in lines], rel=1e-6), key
    steps = [e.step for e in acc.Scalars("epoch")]
    per_epoch = steps[0]
    assert steps == [per_epoch, 2 * per_epoch, 3 * per_epoch]  # the global step that ends each epoch

    # every 5 steps, the weights and the gradients of each parameter
    weight = next((n, p) for n, p in run.model.named_parameters() if n.endswith("weight") and p.ndim == 2)
    name, param = weight
    histograms = set(acc.Tags()["histograms"])
    assert {f"weights/{name}", f"gradients/{name}"} <= histograms
    assert {f"weights/{n}" for n, _ in run.model.named_parameters()} <= histograms
    grads = acc.Histograms(f"gradients/{name}")
    assert [h.step for h in grads] == list(range(5, 3 * per_epoch + 1, 5))
    assert all(h.histogram_value.num == param.numel() for h in grads)
    assert all(h.histogram_value.max > h.histogram_value.min for h in grads)  # real gradients, not zeros


def digits_tensors():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return (x[:600], y[:600]), (x[600:800], y[600:800])


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def test_a_resumed_run_appends_and_hides_what_came_after_the_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    train, val = digits_tensors()
    config = {"progress": "none", "batch_size": 100, "precision": "fp32", "tensorboard": True, "tensorboard_every": 4}
    Trainer(mlp(), {**config, "epochs": 2}, run_dir=tmp_path).fit(train, val)
    # a run killed after it logged a step its checkpoint (epoch 2, step 12) does not cover
    with SummaryWriter(str(tmp_path / "tensorboard")) as stale:
        stale.add_scalar("train_loss", 123.0, 13)
        stale.add_histogram("weights/0.weight", torch.ones(3), 16)
    trainer = Trainer(mlp(), {**config, "epochs": 3}, run_dir=tmp_path)
    trainer.fit(train, val, resume=True)

    acc = events(tmp_path / "tensorboard")
    lines = metric_lines(tmp_path)
    logged = acc.Scalars("train_loss")
    assert [e.step for e in logged] == [6, 12, 18]
    assert [e.value for e in logged] == pytest.approx([line["train_loss"] for line in lines], rel=1e-6)
    hist = acc.Histograms("weights/0.weight")
    assert [h.step for h in hist] == [4, 8, 12, 16]
    assert hist[-1].histogram_value.num == 16 * 64  # the resumed run's step 16, not the stale one


def test_a_missing_tensorboard_package_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as e:
        deepworks.train(TINY, run_dir=tmp_path / "r")
    assert "train.tensorboard" in str(e.value) and "pip install deepworks[tensorboard]" in str(e.value)
    assert not (tmp_path / "r").exists()

    train, val = digits_tensors()
    with pytest.raises(ConfigError, match="pip install deepworks"):
        Trainer(mlp(), {"epochs": 1, "progress": "none", "tensorboard": True}, run_dir=tmp_path / "t").fit(train, val)
    assert not (tmp_path / "t" / "metrics.jsonl").exists()


def test_config_keys(tmp_path):
    cfg = load_config({"data": {"dataset": "digits"}})
    assert cfg.train.tensorboard is False and cfg.train.tensorboard_every == 100
    with pytest.raises(ConfigError, match="train.tensorboard_every"):
        load_config({"data": {"dataset": "digits"}, "train": {"tensorboard_every": 0}})
    train, val = digits_tensors()
    with pytest.raises(ConfigError, match="run_dir"):  # nowhere to write
        Trainer(mlp(), {"epochs": 1, "progress": "none", "tensorboard": True}).fit(train, val)
