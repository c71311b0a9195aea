"""Explicit L1/L2 penalties on weights, kept apart from an optimizer's decoupled weight decay.

Biases and the scale/shift of normalisation layers are not penalised: shrinking them
does not simplify the function the network computes, it only shifts it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["penalized_weights", "weight_penalty", "NORM_LAYERS"]

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weight matrices and kernels (ndim >= 2) of every layer that is not a normalisation layer."""
    weights = []
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            continue
        for name, p in module.named_parameters(recurse=False):
            if name != "bias" and p.ndim >= 2 and p.requires_grad:
                weights.append(p)
    return weights


def weight_penalty(weights: list[torch.Tensor], l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """``l1 * sum|w| + l2 / 2 * sum w^2`` over ``weights`` (the 1/2 makes its gradient ``l2 * w``)."""
    total = weights[0].new_zeros(()) if weights else torch.zeros(())
    for w in weights:
        if l1:
            total = total + l1 * w.abs().sum()
        if l2:
            total = total + 0.5 * l2 * w.pow(2).sum()
    return total
