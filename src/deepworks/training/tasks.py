"""What is being learned: the loss, the metrics, the monitored metric and what a prediction is.

The :class:`~deepworks.training.trainer.Trainer` knows nothing of classes or targets; it asks
its task. A task is chosen from the data, recorded in the run (``data.json`` -> ``task``)
and rebuilt from that record by ``evaluate`` and ``predict``. A new kind of problem
(forecasting, say) registers a :class:`Task` subclass in :data:`TASKS` instead of
branching inside the Trainer.

>>> task = Classification(["cat", "dog"])
>>> task.metrics, task.default_monitor
(('loss', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1'), 'val_accuracy')
>>> Regression(["price"]).default_monitor
'val_loss'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepworks.errors import ConfigError, DataError, ShapeError
from deepworks.evaluation.forecasting import ForecastAccumulator, forecast_report
from deepworks.evaluation.metrics import MetricAccumulator, classification_report
from deepworks.evaluation.regression import RegressionAccumulator, regression_report
from deepworks.registry import Registry

__all__ = ["TASKS", "Task", "Classification", "Regression", "Forecasting", "task_from_record", "resolve_task", "metric_mode"]

TASKS: Registry = Registry("task")

# metrics where lower is better; every other metric is better higher
_LOWER_IS_BETTER = ("loss", "mae", "rmse", "mse", "mape", "smape")


def metric_mode(name: str) -> str:
    """'min' for losses and errors (``val_loss``, ``train_mae``), 'max' for scores."""
    return "min" if name.rsplit("_", 1)[-1] in _LOWER_IS_BETTER or name.endswith("loss") else "max"


class Task:
    """The seam between a run's data and the training loop; subclasses fill in the parts."""

    name: str = ""
    metrics: tuple[str, ...] = ("loss",)  # logged per epoch for each split; "loss" first
    shown: tuple[str, ...] = ("loss",)  # those printed in the epoch line
    summary_keys: tuple[str, ...] = ("loss",)  # those kept in summary.json per split
    default_monitor: str = "val_loss"

    def output_size(self) -> int:
        """Outputs the model needs (classes, or targets)."""
        raise NotImplementedError

    def loss(self, config: Any = None, y: torch.Tensor | None = None) -> nn.Module:
        """The loss minimised in training, from the train config (``loss``, ``label_smoothing``,
        ``class_weights``) and the training targets ``y``."""
        raise NotImplementedError

    def eval_loss(self) -> nn.Module:
        """The loss reported for evaluation."""
        return self.loss()

    def _loss_name(self, config: Any, allowed: tuple[str, ...]) -> str:
        name = getattr(config, "loss", "auto") if config is not None else "auto"
        if name == "auto":
            return allowed[0]
        if name not in allowed:
            raise ConfigError(
                f"train.loss: {name!r} is not a loss for a {self.name} run. Choose one of: auto, {', '.join(allowed)}."
            )
        return name

    def targets(self, y: torch.Tensor, where: str) -> torch.Tensor:
        """Check and convert the targets of (x, y) data for this task."""
        raise NotImplementedError

    def check_output(self, out: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise a ShapeError if the model's output cannot be scored against ``y``."""
        raise NotImplementedError

    def accumulator(self, device: torch.device | str = "cpu") -> Any:
        raise NotImplementedError

    def report(self, acc: Any) -> dict[str, Any]:
        """The full report (per class or per target) from an accumulator."""
        raise NotImplementedError

    def compact(self, report: dict[str, Any]) -> dict[str, Any]:
        return {k: report[k] for k in (*self.summary_keys, "support") if k in report}

    def predict(self, outputs: torch.Tensor, top_k: int = 1) -> list[dict[str, Any]]:
        """One result per row of model outputs, in user terms (class names, target units)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What ``data.json`` keeps so :func:`task_from_record` rebuilds this task."""
        raise NotImplementedError

    def check_monitor(self, monitor: str, key: str) -> str:
        """``auto`` -> the default monitor; a metric of another task is a ConfigError."""
        if monitor == "auto":
            return self.default_monitor
        if monitor == "last":  # keep the final weights: nothing is compared
            return monitor
        split, _, metric = monitor.partition("_")
        if metric not in self.metrics:
            valid = ", ".join(f"{s}_{m}" for s in ("val", "train") for m in self.metrics)
            raise ConfigError(
                f"{key}: {monitor!r} is not a metric of a {self.name} run. Choose one of: {valid} (or auto)."
            )
        return monitor


@TASKS.register("classification", description="class labels: cross-entropy, accuracy, precision, recall, F1")
class Classification(Task):
    """Class labels 0..K-1; cross-entropy on logits (B, K); a confusion matrix per epoch.

    ``classes`` may be None for a Trainer given bare tensors: the number of classes is then
    read from the model's output on the first batch.
    """

    name = "classification"
    metrics = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
    shown = ("loss", "accuracy", "macro_f1")
    summary_keys = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")
    default_monitor = "val_accuracy"

    def __init__(self, classes: Sequence[str] | None = None, class_weights: Sequence[float] | None = None):
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.num_classes = len(self.classes) if self.classes is not None else None
        self.class_weights = [float(w) for w in class_weights] if class_weights is not None else None

    def output_size(self) -> int:
        if self.num_classes is None:
            raise ShapeError("classification: the number of classes is not known yet (no classes given).")
        return self.num_classes

    def loss(self, config: Any = None, y: torch.Tensor | None = None) -> nn.Module:
        self._loss_name(config, ("cross_entropy",))
        wanted = getattr(config, "class_weights", None) if config is not None else None
        if wanted is not None:
            self.class_weights = self._weights(wanted, y)
        weight = torch.tensor(self.class_weights, dtype=torch.float32) if self.class_weights else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=getattr(config, "label_smoothing", 0.0) or 0.0)

    def _weights(self, wanted: Any, y: torch.Tensor | None) -> list[float]:
        """``balanced``: n / (K * count_k) over the training labels (scikit-learn's rule);
        a mapping: label name -> weight, 1.0 for labels it leaves out."""
        names, k = self.names(), self.output_size()
        if wanted == "balanced":
            if y is None:
                raise ConfigError("train.class_weights: balanced needs the training labels (in-memory data).")
            counts = torch.bincount(y.detach().cpu().long(), minlength=k).double()
            if bool((counts == 0).any()):
                empty = [names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
                raise ConfigError(
                    f"train.class_weights: balanced, but class(es) {empty} have no training samples. "
                    "Fix: give weights by label, or remove those classes."
                )
            return (counts.sum() / (k * counts)).tolist()
        unknown = [label for label in wanted if str(label) not in names]
        if unknown:
            raise ConfigError(
                f"train.class_weights: unknown label(s) {unknown}. The classes are: {', '.join(names)}."
            )
        bad = {label: w for label, w in wanted.items() if not (float(w) > 0)}
        if bad:
            raise ConfigError(f"train.class_weights: weights must be positive numbers, got {bad}.")
        by_name = {str(label): float(w) for label, w in wanted.items()}
        return [by_name.get(name, 1.0) for name in names]

    def eval_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()  # unweighted, unsmoothed: comparable across runs

    def targets(self, y: torch.Tensor, where: str) -> torch.Tensor:
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
            raise DataError(
                f"{where}: labels must be a 1-D integer tensor of class indices, got dtype "
                f"{y.dtype} and shape {tuple(y.shape)}. Convert with y.long() (or train a regression task)."
            )
        return y.long()

    def check_output(self, out: torch.Tensor, y: torch.Tensor | None) -> None:
        if out.ndim != 2:
            raise ShapeError(f"model: expected logits shaped (batch, classes), got {tuple(out.shape)}.")
        k = int(out.shape[1])
        if self.num_classes is None:
            self.num_classes = k
        elif self.num_classes != k:
            raise ShapeError(f"model: it has {k} outputs but there are {self.num_classes} classes.")
        if y is not None and len(y):
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= k:
                raise ShapeError(
                    f"labels: they range over {low}..{high} but the model has {k} outputs "
                    f"(classes 0..{k - 1}). Give the model one output per class."
                )

    def names(self) -> list[str]:
        return self.classes or [str(i) for i in range(self.output_size())]

    def accumulator(self, device: torch.device | str = "cpu") -> MetricAccumulator:
        return MetricAccumulator(self.output_size(), device)

    def report(self, acc: MetricAccumulator) -> dict[str, Any]:
        report = classification_report(acc.confusion(), self.names(), loss=acc.compute()["loss"])
        return {"task": self.name, **report}

    def predict(self, outputs: torch.Tensor, top_k: int = 1) -> list[dict[str, Any]]:
        names = self.names()
        probs = torch.softmax(outputs.float(), dim=1)
        top = probs.topk(max(1, min(int(top_k), len(names))), dim=1)
        return [
            {
                "prediction": names[int(idx[0])],
                "top_k": [{"class": names[int(i)], "probability": round(float(p), 6)} for p, i in zip(ps, idx)],
            }
            for ps, idx in zip(top.values, top.indices)
        ]

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "classes": self.names(), "class_weights": self.class_weights}


@TASKS.register("regression", description="numeric targets: MSE or Huber on the standardised target, MAE, RMSE, R²")
class Regression(Task):
    """Numeric targets (B, T); the model learns ``(y - mean) / std`` and predictions are un-scaled.

    ``mean``/``std`` are the training split's target statistics (one per target);
    ``loss`` is ``mse`` or ``huber``.
    """

    name = "regression"
    metrics = ("loss", "mae", "rmse", "r2")
    shown = ("loss", "mae", "r2")
    summary_keys = ("loss", "mae", "rmse", "r2")
    default_monitor = "val_loss"

    def __init__(
        self,
        targets: Sequence[str] = ("target",),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        loss: str = "mse",
    ):
        self.target_names = [str(t) for t in targets]
        t = len(self.target_names)
        self.mean = [float(v) for v in mean] if mean is not None else [0.0] * t
        self.std = [float(v) for v in std] if std is not None else [1.0] * t
        if loss not in ("mse", "huber"):
            raise ConfigError(f"train.loss: expected mse or huber for a regression run, got {loss!r}.")
        self.loss_name = loss

    def output_size(self) -> int:
        return len(self.target_names)

    def loss(self, config: Any = None, y: torch.Tensor | None = None) -> nn.Module:
        if config is not None and getattr(config, "class_weights", None) is not None:
            raise ConfigError("train.class_weights: class weights are for classification; this is a regression run.")
        if config is not None and getattr(config, "loss", "auto") != "auto":
            self.loss_name = self._loss_name(config, ("mse", "huber"))
        return nn.HuberLoss() if self.loss_name == "huber" else nn.MSELoss()

    def eval_loss(self) -> nn.Module:
        return nn.HuberLoss() if self.loss_name == "huber" else nn.MSELoss()

    def targets(self, y: torch.Tensor, where: str) -> torch.Tensor:
        if y.dtype == torch.bool or y.ndim not in (1, 2):
            raise DataError(
                f"{where}: regression targets must be numbers shaped (N,) or (N, targets), got dtype {y.dtype} "
                f"and shape {tuple(y.shape)}."
            )
        y = y.float()
        return y[:, None] if y.ndim == 1 else y  # (N,) -> (N, 1)

    def check_output(self, out: torch.Tensor, y: torch.Tensor | None) -> None:
        t = self.output_size()
        if out.ndim != 2 or out.shape[1] != t:
            raise ShapeError(
                f"model: a regression run with {t} target(s) needs outputs shaped (batch, {t}), got {tuple(out.shape)}."
            )

    def accumulator(self, device: torch.device | str = "cpu") -> RegressionAccumulator:
        return RegressionAccumulator(self.output_size(), device, self.mean, self.std)

    def report(self, acc: RegressionAccumulator) -> dict[str, Any]:
        return regression_report(acc, self.target_names)

    def unscale(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, T) standardised outputs -> the target's units, float64."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        return outputs.detach().to("cpu", torch.float64) * std + mean

    def predict(self, outputs: torch.Tensor, top_k: int = 1) -> list[dict[str, Any]]:
        values = self.unscale(outputs)
        if len(self.target_names) == 1:
            return [{"prediction": float(v[0])} for v in values]
        return [{"prediction": {n: float(x) for n, x in zip(self.target_names, v)}} for v in values]

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "targets": self.target_names, "mean": self.mean, "std": self.std, "loss": self.loss_name}


@TASKS.register(
    "forecasting", description="the next horizon steps of a series: MSE on the standardised targets, MAE, RMSE, MAPE"
)
class Forecasting(Regression):
    """The next ``horizon`` values of ``targets`` from a window of the past: outputs (B, horizon *
    targets), step-major, standardised with the training period's ``mean``/``std`` per target.

    ``percent`` is the percent error reported: ``mape``, or ``smape`` when the training period
    holds a zero (MAPE divides by the actual value). Metrics are in the targets' units.
    """

    name = "forecasting"
    default_monitor = "val_loss"

    def __init__(
        self,
        targets: Sequence[str] = ("target",),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        horizon: int = 1,
        percent: str = "mape",
        loss: str = "mse",
    ):
        super().__init__(targets, mean, std, loss)
        if percent not in ("mape", "smape"):
            raise ConfigError(f"forecasting: percent error must be mape or smape, got {percent!r}.")
        self.horizon, self.percent = int(horizon), percent
        self.metrics = ("loss", "mae", "rmse", percent, "r2")
        self.shown = ("loss", "mae", percent)
        self.summary_keys = ("loss", "mae", "rmse", percent, "r2")

    def output_size(self) -> int:
        return self.horizon * len(self.target_names)

    def check_output(self, out: torch.Tensor, y: torch.Tensor | None) -> None:
        h, t = self.horizon, len(self.target_names)
        if out.ndim != 2 or out.shape[1] != h * t:
            raise ShapeError(
                f"model: a forecast of {h} step(s) of {t} target(s) needs outputs shaped (batch, {h * t}), "
                f"got {tuple(out.shape)}."
            )

    def _columns(self) -> tuple[list[float], list[float]]:
        """Mean and std of each output column (step-major: the targets' statistics, per step)."""
        return self.mean * self.horizon, self.std * self.horizon

    def accumulator(self, device: torch.device | str = "cpu") -> ForecastAccumulator:
        mean, std = self._columns()
        return ForecastAccumulator(self.horizon, len(self.target_names), device, mean, std, self.percent)

    def report(self, acc: ForecastAccumulator) -> dict[str, Any]:
        return forecast_report(acc, self.target_names)

    def unscale(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, horizon * targets) standardised -> the targets' units, float64."""
        mean, std = self._columns()
        return outputs.detach().to("cpu", torch.float64) * torch.tensor(std, dtype=torch.float64) + torch.tensor(
            mean, dtype=torch.float64
        )

    def predict(self, outputs: torch.Tensor, top_k: int = 1) -> list[dict[str, Any]]:
        """One forecast per row: ``{"forecast": [{target: value, ...} per step]}``."""
        values = self.unscale(outputs).reshape(len(outputs), self.horizon, len(self.target_names))
        return [
            {"forecast": [{n: float(v) for n, v in zip(self.target_names, step)} for step in row]} for row in values
        ]

    def record(self) -> dict[str, Any]:
        return {**super().record(), "horizon": self.horizon, "percent": self.percent}


def task_from_record(record: dict[str, Any] | None, classes: Sequence[str] | None = None) -> Task:
    """Rebuild the task a run recorded (runs from before tasks were recorded are classification)."""
    if not record:
        return Classification(classes)
    name = record.get("name", "classification")
    params = {k: v for k, v in record.items() if k != "name"}
    return TASKS.get(name, where="data.json task")(**params)


def resolve_task(task: Task | str | None, classes: Sequence[str] | None) -> Task:
    """A :class:`Task` from a Task, a registered name, or None (classification)."""
    if isinstance(task, Task):
        return task
    if task is None or task == "classification":
        return Classification(classes)
    return TASKS.get(task, where="task")()
