"""Optimizers by name, each with its own parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field

from deepworks.registry import Registry

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS: Registry = Registry("optimizer")


class AdamWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class SGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)


@OPTIMIZERS.register("adamw", params=AdamWParams, description="Adam with decoupled weight decay")
def adamw(params: Iterable, **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, **kw)


@OPTIMIZERS.register("sgd", params=SGDParams, description="stochastic gradient descent with momentum")
def sgd(params: Iterable, **kw) -> torch.optim.Optimizer:
    if kw.get("nesterov") and not kw.get("momentum"):
        from deepworks.errors import ConfigError

        raise ConfigError("train.optimizer.nesterov: Nesterov momentum needs train.optimizer.momentum > 0.")
    return torch.optim.SGD(params, **kw)


def build_optimizer(name: str, params: Iterable, device: torch.device | str = "cpu", **kw) -> torch.optim.Optimizer:
    """The optimizer ``name`` with its validated params; fused kernels on CUDA where torch has them."""
    entry = OPTIMIZERS.entry(name, where="train.optimizer.name")
    if entry.params is not None:
        kw = entry.params.model_validate(kw).model_dump()
    if torch.device(device).type == "cuda" and name in FUSED:
        kw["fused"] = True  # one kernel for the whole update instead of one per tensor
    return entry.factory(params, **kw)


# optimizers whose torch implementation has a fused CUDA kernel
FUSED = {"adamw", "sgd"}
