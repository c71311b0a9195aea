"""Class imbalance: loss weights, a balanced sampler, the warning and per-class figures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

import deepworks
from deepworks import Trainer
from deepworks.data.loaders import TensorData, balanced_weights, iterate_batches
from deepworks.errors import ConfigError


def imbalanced(n_major=300, n_minor=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(n_major, dtype=torch.long), torch.ones(n_minor, dtype=torch.long)])
    x = torch.randn(len(y), 3, generator=g) + y[:, None] * 1.5
    return x, y


def test_balanced_class_weights_equal_sklearns():
    x, y = imbalanced()
    trainer = Trainer(nn.Linear(3, 2), {"epochs": 1, "progress": "none", "class_weights": "balanced"})
    trainer.fit((x, y))
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=y.numpy())
    np.testing.assert_allclose(trainer.loss_fn.weight.numpy(), expected, rtol=1e-6)


def test_class_weights_by_label_and_unknown_labels():
    x, y = imbalanced()
    trainer = Trainer(nn.Linear(3, 2), {"epochs": 1, "progress": "none", "class_weights": {"yes": 5.0}},
                      classes=["no", "yes"])
    trainer.fit((x, y))
    assert trainer.loss_fn.weight.tolist() == [1.0, 5.0]
    with pytest.raises(ConfigError, match=r"unknown label\(s\) \['maybe'\].*no, yes"):
        Trainer(nn.Linear(3, 2), {"epochs": 1, "progress": "none", "class_weights": {"maybe": 2.0}},
                classes=["no", "yes"]).fit((x, y))


def test_balanced_weights_name_a_class_without_training_samples():
    x, y = imbalanced()  # classes 0 and 1 only
    trainer = Trainer(nn.Linear(3, 3), {"epochs": 1, "progress": "none", "class_weights": "balanced"},
                      classes=["no", "yes", "maybe"])
    with pytest.raises(ConfigError, match=r"class\(es\) \['maybe'\] have no training samples"):
        trainer.fit((x, y))


def test_balanced_sampler_draws_classes_equally_and_replays_per_epoch():
    x, y = imbalanced()
    data = TensorData(x, y, balanced_weights(y))
    drawn = torch.cat([yb for _, yb in iterate_batches(data, 64, shuffle=True, seed=3, epoch=1)])
    assert len(drawn) == len(y)
    share = drawn.float().mean().item()
    assert 0.4 < share < 0.6  # without the sampler: 20 / 320 = 0.06
    again = torch.cat([yb for _, yb in iterate_batches(data, 64, shuffle=True, seed=3, epoch=1)])
    assert torch.equal(drawn, again)  # a function of (seed, epoch): resume replays it
    # evaluation is never resampled
    assert torch.equal(torch.cat([yb for _, yb in iterate_batches(data, 64, shuffle=False)]), y)


def test_pipeline_warns_and_balances_an_imbalanced_table(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "rare.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "label"])
        for i in range(440):
            label = "rare" if i % 22 == 0 else "common"
            w.writerow([rng.normal() + (2 if label == "rare" else 0), rng.normal(), label])
    with pytest.warns(UserWarning, match=r"imbalanced: the largest class has \d+ samples, 'rare' only \d+"):
        run = deepworks.train({"data": {"path": str(path), "target": "label", "sampler": "balanced"},
                               "train": {"epochs": 3, "progress": "none", "class_weights": "balanced"}},
                              run_dir=tmp_path / "run")
    report = json.loads((run.dir / "test_report.json").read_text())
    assert [row["class"] for row in report["per_class"]] == ["common", "rare"]
    assert all({"precision", "recall", "f1", "support"} <= set(row) for row in report["per_class"])
