"""One training step and one evaluation step: the whole of the learning, on one screen."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepworks.runtime import Precision

__all__ = ["train_step", "eval_step"]

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, update. Returns the (detached) batch loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = model(precision.memory_format(x))  # (B, K)
    loss = loss_fn(logits.float(), y)  # mean over the batch, in fp32
    if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


@torch.no_grad()
def eval_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, precision: Precision = FP32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and loss without gradients (the caller puts the model in eval mode)."""
    with precision.autocast():
        logits = model(precision.memory_format(x))
    logits = logits.float()
    return loss_fn(logits, y), logits
