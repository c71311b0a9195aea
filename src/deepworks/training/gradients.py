"""Backward propagation made visible: per-layer gradient norms, vanishing/exploding flags,
and the layer where a non-finite value first appears."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# What counts as vanishing or exploding is the evaluate layer's (a finished run's diagnosis judges the
# same records by it); the Monitor below flags with it while training, and these names stay here too.
from deepworks.evaluation.gradient_flow import EXPLODING, VANISHING, flag_norms

__all__ = ["GradientMonitor", "flag_norms", "gradient_reach", "first_nonfinite_layer", "VANISHING", "EXPLODING", "REACH"]

REACH = 1e-3  # a time step whose input gradient is under this fraction of the peak step's gets no signal


def _layer_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the module that owns them, in forward order of registration."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = name.rsplit(".", 1)[0] if "." in name else name
            groups.setdefault(owner, []).append(p)
    return groups


def gradient_reach(time_steps: list[float], threshold: float = REACH) -> dict[str, Any] | None:
    """How far back in a sequence the loss's gradient still reaches: ``steps`` is the number of
    time steps, counted back from the last one, before the gradient norm w.r.t. the input first
    falls under ``threshold`` times its peak (``length`` when it never does).

    >>> gradient_reach([1.0, 0.1, 0.01, 0.0005, 0.002])
    {'steps': 3, 'threshold': 0.001, 'length': 5}
    """
    if not time_steps:
        return None
    finite = [v for v in time_steps if math.isfinite(v)]
    floor = threshold * max(finite, default=0.0)
    steps = next((k for k, v in enumerate(time_steps) if not (math.isfinite(v) and v >= floor)), len(time_steps))
    return {"steps": steps, "threshold": threshold, "length": len(time_steps)}


class GradientMonitor:
    """Records the gradient norm of every layer every ``every`` steps and flags the extremes."""

    def __init__(self, model: nn.Module, every: int, vanishing: float = VANISHING, exploding: float = EXPLODING):
        self.every, self.vanishing_at, self.exploding_at = every, vanishing, exploding
        self.groups = _layer_params(model)
        self.vanishing: dict[str, int] = {}  # layer -> first step it was flagged
        self.exploding: dict[str, int] = {}
        self.records = 0
        self.last: dict[str, float] = {}
        self.last_time_steps: list[float] | None = None  # sequence models: input gradient norm per step back

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def record(self, step: int, time_steps: list[float] | None = None) -> tuple[dict[str, float], list[str]]:
        """Norms by layer (after backward, before clipping) and the layers newly flagged.
        ``time_steps``: a sequence model's input gradient norms by steps back, kept for :meth:`reach`."""
        norms = {}
        for layer, params in self.groups.items():
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            norms[layer] = float(torch.stack(grads).norm()) if grads else 0.0
        news = []
        vanishing, exploding = flag_norms(norms, self.vanishing_at, self.exploding_at)
        for layer in exploding:
            if layer not in self.exploding:
                self.exploding[layer] = step
                news.append(f"exploding gradient in layer {layer!r} at step {step}: norm {norms[layer]:.3g}")
        for layer in vanishing:
            if layer not in self.vanishing:
                self.vanishing[layer] = step
                news.append(
                    f"vanishing gradient in layer {layer!r} at step {step}: norm {norms[layer]:.3g}, "
                    f"under {self.vanishing_at:g} of the largest layer's"
                )
        self.records += 1
        self.last = norms
        if time_steps is not None:
            self.last_time_steps = list(time_steps)
        return norms, news

    def reach(self) -> dict[str, Any] | None:
        """:func:`gradient_reach` of the latest recorded step's input gradients (the trained
        model's, not an average over training); None for models without time steps."""
        return gradient_reach(self.last_time_steps) if self.last_time_steps else None

    def summary(self) -> dict[str, Any]:
        return {
            "every_steps": self.every,
            "records": self.records,
            "vanishing_below_fraction_of_largest": self.vanishing_at,
            "exploding_above": self.exploding_at,
            "vanishing": self.vanishing,
            "exploding": self.exploding,
            "last_norms": self.last,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"vanishing": self.vanishing, "exploding": self.exploding, "records": self.records, "last": self.last,
                "last_time_steps": self.last_time_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vanishing, self.exploding = dict(state["vanishing"]), dict(state["exploding"])
        self.records, self.last = int(state["records"]), dict(state["last"])
        self.last_time_steps = state.get("last_time_steps")


@torch.no_grad()
def first_nonfinite_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Where a NaN/inf first shows: a layer with non-finite weights, else the first layer whose
    output on ``x`` is non-finite, else the input itself."""
    if not torch.isfinite(x).all():
        return "the input batch itself contains NaN or inf values"
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"layer {name.rsplit('.', 1)[0]!r} has non-finite weights ({name})"
    found: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:  # leaves only

            def hook(mod, inp, out, name=name):
                if not found and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                    found.append(f"layer {name!r} ({type(mod).__name__}) outputs non-finite values")

            hooks.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else "no layer outputs non-finite values on this batch (the loss overflowed)"
