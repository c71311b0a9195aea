"""One training step and one evaluation step: the whole of the learning, on one screen."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepworks.runtime import Precision

__all__ = ["train_step", "eval_step", "FlipAverage", "with_tta"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FP32 = Precision("fp32", "cpu", channels_last=False)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
    *,
    penalty: Callable[[], torch.Tensor] | None = None,
    clip_grad_norm: float | None = None,
    inspect_grads: Callable[[], None] | None = None,
    zero_grad: bool = True,
    update: bool = True,
    weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, update. Returns the (detached) data loss and logits.

    ``penalty`` adds an explicit regulariser (L1/L2) to the loss that is differentiated;
    ``inspect_grads`` sees the raw gradients before ``clip_grad_norm`` rescales them.
    Gradient accumulation over micro-batches: the first has ``zero_grad``, the last ``update``
    (only then are gradients inspected, clipped and stepped), and each adds the gradient of its
    objective times ``weight`` (its share of the step's samples), so the sum is the gradient of
    the mean over all of them.
    """
    if isinstance(optimizer, torch.optim.LBFGS):  # re-evaluates the loss during its line search
        return _closure_step(model, x, y, optimizer, loss_fn, precision, penalty, clip_grad_norm, inspect_grads)
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    loss, logits, objective = _forward(model, x, y, loss_fn, precision, penalty)
    if weight != 1.0:
        objective = objective * weight
    if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
        scaler.scale(objective).backward()
    else:
        objective.backward()
    if not update:
        return loss.detach(), logits.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # true gradients for inspection and clipping
    if inspect_grads is not None:
        inspect_grads()
    _clip(optimizer, clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), logits.detach()


def _forward(model, x, y, loss_fn, precision, penalty):
    """Logits, the data loss (mean over the batch, in fp32) and the objective (loss + penalty)."""
    with precision.autocast():
        logits = model(precision.memory_format(x))  # (B, K)
    loss = loss_fn(logits.float(), y)
    return loss, logits, (loss + penalty() if penalty is not None else loss)


def _clip(optimizer: torch.optim.Optimizer, clip_grad_norm: float | None) -> None:
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for group in optimizer.param_groups for p in group["params"]], clip_grad_norm
        )


def eval_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, precision: Precision = FP32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and loss in inference mode (no autograd record at all; the caller puts the model in
    eval mode)."""
    with torch.inference_mode(), precision.autocast():  # a context, not a decorator: mutmut skips decorated functions
        logits = model(precision.memory_format(x)).float()
        return loss_fn(logits, y), logits


def _closure_step(model, x, y, optimizer, loss_fn, precision, penalty, clip_grad_norm, inspect_grads):
    """One step of an optimizer that evaluates the objective itself (L-BFGS): it calls the
    closure once per function evaluation of its line search. Returns the data loss and logits
    at the point the step started from, like a gradient step."""
    first: list[tuple[torch.Tensor, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss, logits, objective = _forward(model, x, y, loss_fn, precision, penalty)
        objective.backward()
        if not first:
            first.append((loss.detach(), logits.detach()))
            if inspect_grads is not None:
                inspect_grads()
        _clip(optimizer, clip_grad_norm)
        return objective

    optimizer.step(closure)
    return first[0]


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of a model's outputs on images (N, C, H, W) and on their
    mirror images (flipped left to right)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(-1))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` wrapped for ``train.tta`` (``hflip``: :class:`FlipAverage`), or itself for ``none``."""
    return FlipAverage(model) if tta == "hflip" else model
