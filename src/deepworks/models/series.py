"""Forecasting wrappers: a model of windows (B, L, C) -> forecasts (B, H * T), wrapped.

The data side of series (reading, the time grid, periods, windows, scaling) is
:mod:`deepworks.data.series`; what runs inside the model lives here, with the other modules.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChangeFromLast"]


class ChangeFromLast(nn.Module):
    """Wraps a forecasting model so it sees each window relative to its last value and predicts
    the change from it (the last-value normalisation of NLinear, Zeng et al. 2023): a trending
    series then looks the same at every level, so the test period's values need not lie in the
    training period's range.

    Input and output stay the pipeline's: standardised windows (B, L, C) in, standardised
    forecasts (B, H * T) out. Inside, the T target columns of the window minus their last value,
    times ``gain`` (level std / one-step-change std: changes in units of a typical step) go to
    ``model``; its output / gain + the last value is the forecast.
    """

    def __init__(self, model: nn.Module, targets: int, horizon: int, gain: list[float]):
        super().__init__()
        self.model, self.targets, self.horizon = model, int(targets), int(horizon)
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.targets
        last = x[:, -1, :t]  # (B, T)
        relative = (x[:, :, :t] - last[:, None, :]) * self.gain  # (B, L, T)
        out = self.model(torch.cat([relative, x[:, :, t:]], dim=2))  # (B, H * T)
        return out / self.gain.repeat(self.horizon) + last.repeat(1, self.horizon)

    # train.log_gradients: the wrapped sequence model's per-step input gradients (of the relative window)
    @property
    def track_input_grads(self) -> bool:
        return bool(getattr(self.model, "track_input_grads", False))

    @track_input_grads.setter
    def track_input_grads(self, value: bool) -> None:
        if hasattr(self.model, "input_grad_norms"):
            self.model.track_input_grads = value

    def input_grad_norms(self, scale: float = 1.0) -> list[float] | None:
        inner = getattr(self.model, "input_grad_norms", None)
        return inner(scale) if inner is not None else None
