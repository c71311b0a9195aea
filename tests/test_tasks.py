"""The task seam: the Trainer takes its loss, metrics and monitor from the task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from torch import nn

from deepworks import Trainer
from deepworks.errors import ConfigError, DataError, ShapeError
from deepworks.evaluation.regression import RegressionAccumulator
from deepworks.training.callbacks import better
from deepworks.training.tasks import Classification, Regression, metric_mode, task_from_record


def linear_problem(n=400, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    w = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0])[:f]
    y = x @ w + 0.1 * torch.randn(n, generator=g)
    return x, y


@pytest.mark.parametrize("targets", [1, 3])
def test_regression_accumulator_matches_sklearn(targets):
    rng = np.random.default_rng(0)
    true = rng.normal(5, 2, size=(103, targets))
    pred = true + rng.normal(0, 0.7, size=true.shape)
    mean, std = true.mean(0), true.std(0)
    acc = RegressionAccumulator(targets, mean=mean, std=std)
    z = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731  (standardised, as the model sees it)
    for s in range(0, 103, 10):  # batches of uneven size at the end
        acc.update(z(pred[s : s + 10]), z(true[s : s + 10]), loss=0.0)
    got = acc.compute()
    assert got["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-9)
    assert got["rmse"] == pytest.approx(np.mean(np.sqrt(((true - pred) ** 2).mean(0))), rel=1e-9)
    assert got["r2"] == pytest.approx(r2_score(true, pred), rel=1e-9)
    # the sums survive a state round trip
    again = RegressionAccumulator(targets, mean=mean, std=std)
    again.load_state_dict(acc.state_dict())
    assert again.compute() == got


def test_constant_target_r2_follows_sklearn():
    acc = RegressionAccumulator(1)
    acc.update(torch.ones(4, 1), torch.ones(4, 1))
    assert acc.compute()["r2"] == r2_score(np.ones(4), np.ones(4)) == 1.0
    acc.reset()
    acc.update(torch.zeros(4, 1), torch.ones(4, 1))
    assert acc.compute()["r2"] == r2_score(np.ones(4), np.zeros(4)) == 0.0


def test_trainer_learns_a_regression_and_reports_in_the_targets_units(tmp_path):
    x, y = linear_problem()
    mean, std = float(y[:300].mean()), float(y[:300].std())
    task = Regression(["y"], mean=[mean], std=[std])
    scale = lambda t: (t - mean) / std  # noqa: E731
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    trainer = Trainer(model, {"epochs": 40, "progress": "none", "batch_size": 32,
                              "optimizer": {"name": "adam", "lr": 0.05}}, task=task, run_dir=tmp_path / "r")
    history = trainer.fit((x[:300], scale(y[:300])), (x[300:], scale(y[300:])))
    assert trainer.config.monitor == "val_loss"  # auto for regression
    assert {"train_mae", "train_rmse", "train_r2", "val_mae", "val_rmse", "val_r2"} <= set(history[-1])
    report = trainer.evaluate((x[300:], scale(y[300:])))
    with torch.no_grad():
        pred = model(x[300:]).squeeze(1).double() * std + mean
    assert report["mae"] == pytest.approx(mean_absolute_error(y[300:].double(), pred), rel=1e-6)
    assert report["r2"] == pytest.approx(r2_score(y[300:].double(), pred), rel=1e-6)
    assert report["r2"] > 0.99
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["task"] == "regression" and set(summary["val"]) == {"loss", "mae", "rmse", "r2", "support"}


def test_regression_resume_is_bitwise(tmp_path):
    from deepworks import Callback
    from deepworks.runs import read_checkpoint

    x, y = linear_problem(n=200)
    cfg = {"epochs": 4, "progress": "none", "batch_size": 16, "checkpoint_every_steps": 3}  # 10 steps an epoch

    class Crash(Exception):
        pass

    class Steps(Callback):
        """Records the steps run; raises Crash after step ``crash_at``."""

        def __init__(self, crash_at=None):
            self.crash_at, self.steps = crash_at, []

        def on_batch_end(self, trainer, step):
            self.steps.append(step)
            if step == self.crash_at:
                raise Crash

    def model():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))

    straight = model()
    h1 = Trainer(straight, cfg, task="regression", run_dir=tmp_path / "a").fit((x[:150], y[:150]), (x[150:], y[150:]))

    resumed, first = model(), Steps(crash_at=17)
    with pytest.raises(Crash):
        Trainer(resumed, cfg, task="regression", run_dir=tmp_path / "b", callbacks=[first]).fit(
            (x[:150], y[:150]), (x[150:], y[150:]))
    assert first.steps == list(range(1, 18))  # the crash happened, mid-epoch 2
    _, state = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 5, 15)  # the last save before it
    second = Steps()
    trainer = Trainer(resumed, cfg, task="regression", run_dir=tmp_path / "b", callbacks=[second])
    h2 = trainer.fit((x[:150], y[:150]), (x[150:], y[150:]), resume=True)
    assert second.steps == list(range(16, 41))  # from the checkpoint on, not from the start

    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in h1] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in h2
    ]


def test_monitor_of_another_task_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.monitor: 'val_accuracy' is not a metric of a regression run.*val_r2"):
        Trainer(nn.Linear(2, 1), {"monitor": "val_accuracy"}, task="regression")
    with pytest.raises(ConfigError, match=r"train\.early_stopping\.monitor: 'val_mae'.*classification"):
        Trainer(nn.Linear(2, 2), {"early_stopping": {"monitor": "val_mae"}})


def test_metric_directions():
    assert [metric_mode(m) for m in ("val_loss", "train_mae", "val_rmse", "val_r2", "val_accuracy", "val_macro_f1")] == [
        "min", "min", "min", "max", "max", "max"
    ]
    assert better("val_mae", "auto", 0.5, 0.6) and not better("val_mae", "auto", 0.7, 0.6)


def test_targets_are_checked_for_the_task():
    with pytest.raises(DataError, match="integer tensor of class indices"):
        Trainer(nn.Linear(2, 2), {"progress": "none", "epochs": 1}).fit((torch.randn(8, 2), torch.randn(8)))
    with pytest.raises(ShapeError, match=r"regression run with 1 target\(s\) needs outputs shaped \(batch, 1\)"):
        Trainer(nn.Linear(2, 3), {"progress": "none", "epochs": 1}, task="regression").fit(
            (torch.randn(8, 2), torch.randn(8))
        )


def test_task_records_round_trip():
    for task in (Classification(["a", "b"], class_weights=[1.0, 2.0]), Regression(["p", "q"], [1, 2], [3, 4], "huber")):
        again = task_from_record(json.loads(json.dumps(task.record())))
        assert type(again) is type(task) and again.record() == task.record()
    assert task_from_record(None, ["x", "y"]).names() == ["x", "y"]  # runs from before tasks were recorded


def test_regression_predictions_are_unscaled():
    task = Regression(["price"], mean=[100.0], std=[10.0])
    assert task.predict(torch.tensor([[0.0], [1.5]])) == [{"prediction": 100.0}, {"prediction": 115.0}]
