"""One training step and one evaluation step: the whole of the learning, on one screen."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["train_step", "eval_step"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, loss_fn: Loss
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, update. Returns the (detached) batch loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)  # (B, K)
    loss = loss_fn(logits, y)  # mean over the batch
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


@torch.no_grad()
def eval_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and loss without gradients (the caller puts the model in eval mode)."""
    logits = model(x)
    return loss_fn(logits, y), logits
