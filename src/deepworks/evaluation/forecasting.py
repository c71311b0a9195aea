"""Forecast metrics: MAE, RMSE, MAPE (or sMAPE) and R², overall, per step ahead and per target.

A forecast is a row of ``horizon * targets`` values, step-major (all targets of step 1, then
step 2, ...), standardised with the training period's mean and std of each target.
:class:`ForecastAccumulator` un-scales before it sums anything, so the figures are in the
targets' units, and keeps one sum per (step, target) column, from which the overall figures
(every value of every step and target counts once) and the per-step and per-target ones come.

- MAPE: ``100 * mean(|y - ŷ| / |y|)``, percent; infinite when an actual value is 0, which is
  why a series with a zero in its training period is scored with sMAPE instead.
- sMAPE: ``100 * mean(2 |y - ŷ| / (|y| + |ŷ|))``, percent, 0 where both are 0.
- R²: scikit-learn's ``r2_score`` per column, averaged (as for regression).
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

from deepworks.evaluation.regression import RegressionAccumulator

__all__ = ["ForecastAccumulator", "forecast_report", "forecast_scores", "render_forecast_report", "PERCENT_ERRORS"]

PERCENT_ERRORS = ("mape", "smape")


class ForecastAccumulator(RegressionAccumulator):
    """Running sums per (step, target) column; ``percent`` is ``mape`` or ``smape``."""

    def __init__(
        self,
        horizon: int,
        targets: int,
        device: torch.device | str = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        percent: str = "mape",
    ):
        if percent not in PERCENT_ERRORS:
            raise ValueError(f"percent: expected mape or smape, got {percent!r}.")
        self.horizon, self.targets, self.percent = int(horizon), int(targets), percent
        super().__init__(self.horizon * self.targets, device, mean, std)

    def reset(self) -> None:
        super().reset()
        self._pct = torch.zeros(self.num_targets, dtype=self._dtype, device=self.device)

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor | float | None = None) -> None:
        super().update(outputs, targets, loss)
        if len(outputs) == 0:
            return
        pred = outputs.detach().to(self.device, self._dtype).reshape(len(outputs), -1) * self.std + self.mean
        true = targets.detach().to(self.device, self._dtype).reshape(len(targets), -1) * self.std + self.mean
        err = (pred - true).abs()
        if self.percent == "mape":
            self._pct += (err / true.abs()).sum(dim=0)  # inf where an actual value is 0
        else:
            denom = true.abs() + pred.abs()
            self._pct += torch.where(denom > 0, 2 * err / torch.where(denom > 0, denom, 1.0), 0.0).sum(dim=0)

    def columns(self) -> dict[str, np.ndarray]:
        """Per (step, target) column sums' figures, shaped (horizon, targets): mae, mse, pct, r2."""
        n = max(self._count, 1)
        scores = self.per_target()
        shape = (self.horizon, self.targets)
        return {
            "mae": scores["mae"].reshape(shape),
            "mse": (self._sq_err.cpu().numpy() / n).reshape(shape),
            "pct": (100 * self._pct.cpu().numpy() / n).reshape(shape),
            "r2": scores["r2"].reshape(shape),
        }

    def compute(self) -> dict[str, Any]:
        c = self.columns()
        loss = float(self._loss_sum.item()) / self._loss_count if self._loss_count else None
        return {
            "loss": loss,
            "mae": float(c["mae"].mean()),
            "rmse": float(np.sqrt(c["mse"].mean())),
            self.percent: float(c["pct"].mean()),
            "r2": float(c["r2"].mean()),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "pct": self._pct.detach().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self._pct = torch.as_tensor(state["pct"]).to(self.device, self._dtype).reshape(self.num_targets).clone()


def forecast_report(acc: ForecastAccumulator, targets: Sequence[str]) -> dict[str, Any]:
    """The overall figures, then ``per_step`` (step 1 .. horizon) and ``per_target``."""
    names = [str(t) for t in targets]
    overall, c = acc.compute(), acc.columns()
    report: dict[str, Any] = {"task": "forecasting"}
    report.update({k: overall[k] for k in ("mae", "rmse", acc.percent, "r2")})
    if overall["loss"] is not None:
        report["loss"] = overall["loss"]
    report["support"] = acc.count
    report["percent_error"] = acc.percent
    report["per_step"] = [
        {"step": h + 1, "mae": float(c["mae"][h].mean()), "rmse": float(np.sqrt(c["mse"][h].mean())),
         acc.percent: float(c["pct"][h].mean())}
        for h in range(acc.horizon)
    ]
    report["per_target"] = [
        {"target": name, "mae": float(c["mae"][:, j].mean()), "rmse": float(np.sqrt(c["mse"][:, j].mean())),
         acc.percent: float(c["pct"][:, j].mean()), "r2": float(c["r2"][:, j].mean())}
        for j, name in enumerate(names)
    ]
    return report


def forecast_scores(pred: np.ndarray, true: np.ndarray, horizon: int, targets: int, percent: str) -> dict[str, Any]:
    """MAE, RMSE and the percent error of forecasts ``pred`` against ``true`` (W, horizon * targets),
    both in the targets' units, with the same code as the network's figures."""
    acc = ForecastAccumulator(horizon, targets, percent=percent)
    acc.update(torch.from_numpy(np.asarray(pred, dtype=np.float64)), torch.from_numpy(np.asarray(true, dtype=np.float64)))
    scores = acc.compute()
    return {"mae": scores["mae"], "rmse": scores["rmse"], percent: scores[percent]}


def render_forecast_report(report: Mapping[str, Any], title: str = "") -> RenderableType:
    """A rich view of :func:`forecast_report`: the overall figures and the error per step ahead."""
    percent = report.get("percent_error", "mape")
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    line = Text()
    for key, label in (("mae", "MAE"), ("rmse", "RMSE"), (percent, f"{percent.upper()} %"), ("r2", "R²"), ("loss", "loss")):
        if report.get(key) is not None:
            line.append(f"{label} ", style="dim")
            line.append(f"{float(report[key]):.4f}   ", style="bold")
    if report.get("support") is not None:
        line.append(f"({int(report['support'])} windows)", style="dim")
    parts.append(line)
    table = Table(box=box.SIMPLE_HEAD, title="per step ahead", title_justify="left")
    for header in ("step", "MAE", "RMSE", f"{percent.upper()} %"):
        table.add_column(header, justify="right")
    for row in report.get("per_step") or []:
        table.add_row(str(row["step"]), f"{row['mae']:.4f}", f"{row['rmse']:.4f}", f"{row[percent]:.4f}")
    parts.append(table)
    return Group(*parts)
