"""Regression metrics: MAE, RMSE and R², summed on the device while training.

The network learns a standardised target (``(y - mean) / std`` with training-split
statistics); :class:`RegressionAccumulator` un-scales predictions and targets before it sums
anything, so every figure it reports is in the target's own units. The sums are plain
tensors (no host sync per step) and are what a checkpoint stores, so a resumed epoch logs
the same numbers as an uninterrupted one.

R² is scikit-learn's ``r2_score``: ``1 - SS_res / SS_tot`` per target, averaged uniformly
over targets; a constant target (``SS_tot == 0``) scores 1.0 when predicted exactly and 0.0
otherwise, as scikit-learn does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["RegressionAccumulator", "regression_report", "render_regression_report"]

_STATE_KEYS = ("count", "loss_sum", "loss_count", "abs_err", "sq_err", "y_sum", "y_sq")


class RegressionAccumulator:
    """Running sums for MAE, RMSE and R² over ``num_targets`` targets, in the target's units.

    ``update`` takes the model's (B, T) outputs and the (B, T) standardised targets; ``mean``
    and ``std`` (one value per target) undo the standardisation.
    """

    def __init__(
        self,
        num_targets: int = 1,
        device: torch.device | str = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        if isinstance(num_targets, bool) or int(num_targets) != num_targets or num_targets < 1:
            raise ValueError(f"num_targets: expected a whole number >= 1, got {num_targets!r}.")
        self.num_targets = int(num_targets)
        self.device = torch.device(device)
        self._dtype = torch.float32 if self.device.type == "mps" else torch.float64
        t = self.num_targets
        self.mean = torch.as_tensor(list(mean) if mean is not None else [0.0] * t, dtype=self._dtype, device=self.device)
        self.std = torch.as_tensor(list(std) if std is not None else [1.0] * t, dtype=self._dtype, device=self.device)
        if self.mean.shape != (t,) or self.std.shape != (t,):
            raise ValueError(f"mean/std: expected {t} value(s) each, got {tuple(self.mean.shape)}/{tuple(self.std.shape)}.")
        self.reset()

    def reset(self) -> None:
        zeros = lambda: torch.zeros(self.num_targets, dtype=self._dtype, device=self.device)  # noqa: E731
        self._abs_err, self._sq_err, self._y_sum, self._y_sq = zeros(), zeros(), zeros(), zeros()
        self._loss_sum = torch.zeros((), dtype=self._dtype, device=self.device)
        self._count = 0
        self._loss_count = 0

    @property
    def count(self) -> int:
        return self._count

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor | float | None = None) -> None:
        """Add one batch: ``outputs`` and ``targets`` (B, T) standardised, ``loss`` the batch MEAN."""
        t = self.num_targets
        if outputs.ndim == 1:
            outputs = outputs[:, None]
        if targets.ndim == 1:
            targets = targets[:, None]
        if outputs.ndim != 2 or outputs.shape[1] != t:
            raise ValueError(f"outputs: expected shape (batch, {t}), got {tuple(outputs.shape)}.")
        if targets.shape != outputs.shape:
            raise ValueError(f"targets: expected shape {tuple(outputs.shape)} to match the outputs, got {tuple(targets.shape)}.")
        batch = int(outputs.shape[0])
        if batch == 0:
            return
        # (B, T) back to the target's units
        pred = outputs.detach().to(self.device, self._dtype) * self.std + self.mean
        true = targets.detach().to(self.device, self._dtype) * self.std + self.mean
        err = pred - true
        self._abs_err += err.abs().sum(dim=0)
        self._sq_err += err.square().sum(dim=0)
        self._y_sum += true.sum(dim=0)
        self._y_sq += true.square().sum(dim=0)
        if loss is not None:
            if not isinstance(loss, torch.Tensor):
                loss = torch.tensor(float(loss))
            self._loss_sum.add_(loss.detach().reshape(()).to(self.device, self._dtype) * batch)
            self._loss_count += batch
        self._count += batch

    def per_target(self) -> dict[str, np.ndarray]:
        """MAE, RMSE and R² of each target (arrays of length T)."""
        n = max(self._count, 1)
        abs_err, sq_err = self._abs_err.cpu().numpy(), self._sq_err.cpu().numpy()
        y_sum, y_sq = self._y_sum.cpu().numpy(), self._y_sq.cpu().numpy()
        ss_tot = np.maximum(y_sq - y_sum**2 / n, 0.0)  # sum (y - mean y)^2, float64
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(ss_tot > 0, 1.0 - sq_err / np.where(ss_tot > 0, ss_tot, 1.0), np.where(sq_err == 0, 1.0, 0.0))
        return {"mae": abs_err / n, "rmse": np.sqrt(sq_err / n), "r2": r2}

    def compute(self) -> dict[str, Any]:
        """Mean loss (on the standardised target), and MAE, RMSE, R² averaged over targets."""
        scores = self.per_target()
        loss = float(self._loss_sum.item()) / self._loss_count if self._loss_count else None
        return {
            "loss": loss,
            "mae": float(scores["mae"].mean()),
            "rmse": float(scores["rmse"].mean()),
            "r2": float(scores["r2"].mean()),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "count": torch.tensor(self._count, dtype=torch.int64),
            "loss_sum": self._loss_sum.detach().clone(),
            "loss_count": torch.tensor(self._loss_count, dtype=torch.int64),
            "abs_err": self._abs_err.detach().clone(),
            "sq_err": self._sq_err.detach().clone(),
            "y_sum": self._y_sum.detach().clone(),
            "y_sq": self._y_sq.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise KeyError(f"regression accumulator state lacks {missing}; it has {sorted(state)}.")
        as_vec = lambda v: torch.as_tensor(v).to(self.device, self._dtype).reshape(self.num_targets).clone()  # noqa: E731
        self._abs_err, self._sq_err = as_vec(state["abs_err"]), as_vec(state["sq_err"])
        self._y_sum, self._y_sq = as_vec(state["y_sum"]), as_vec(state["y_sq"])
        self._loss_sum = torch.as_tensor(state["loss_sum"]).to(self.device, self._dtype).reshape(()).clone()
        self._count, self._loss_count = int(state["count"]), int(state["loss_count"])


def regression_report(acc: RegressionAccumulator, targets: Sequence[str]) -> dict[str, Any]:
    """MAE, RMSE, R² (averaged over targets, and per target) and the loss, as plain JSON types."""
    names = [str(t) for t in targets]
    if len(names) != acc.num_targets:
        raise ValueError(f"targets: {len(names)} names given for {acc.num_targets} target(s).")
    overall, per = acc.compute(), acc.per_target()
    report: dict[str, Any] = {"task": "regression"}
    report.update({k: overall[k] for k in ("mae", "rmse", "r2")})
    if overall["loss"] is not None:
        report["loss"] = overall["loss"]
    report["support"] = acc.count
    report["per_target"] = [
        {"target": name, "mae": float(per["mae"][i]), "rmse": float(per["rmse"][i]), "r2": float(per["r2"][i])}
        for i, name in enumerate(names)
    ]
    return report


def render_regression_report(report: Mapping[str, Any], title: str = "") -> RenderableType:
    """A rich view of :func:`regression_report`."""
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    line = Text()
    for i, key in enumerate(("mae", "rmse", "r2", "loss")):
        if report.get(key) is None:
            continue
        if i:
            line.append("   ")
        line.append(f"{'R²' if key == 'r2' else key.upper() if key != 'loss' else 'loss'} ", style="dim")
        line.append(f"{float(report[key]):.4f}", style="bold")
    if report.get("support") is not None:
        line.append(f"   ({int(report['support'])} samples)", style="dim")
    parts.append(line)
    rows = report.get("per_target") or []
    if len(rows) > 1:
        table = Table(box=box.SIMPLE_HEAD, title="per target", title_justify="left")
        for header in ("target", "MAE", "RMSE", "R²"):
            table.add_column(header, justify="left" if header == "target" else "right")
        for row in rows:
            table.add_row(Text(str(row["target"])), f"{row['mae']:.4f}", f"{row['rmse']:.4f}", f"{row['r2']:.4f}")
        parts.append(table)
    return Group(*parts)
