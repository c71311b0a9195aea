"""Optimizers by name, each with its own parameters.

Every optimizer is the ``torch.optim`` one; the registered pydantic model of its parameters
holds the defaults and ranges, so a config block such as
``optimizer: {name: sgd, lr: 0.1, nesterov: true}`` is checked key by key before training.

>>> import torch
>>> opt = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], lr=0.01)
>>> type(opt).__name__, opt.defaults["lr"]
('Adam', 0.01)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from deepworks.registry import Registry

__all__ = ["OPTIMIZERS", "FUSED", "FULL_BATCH", "build_optimizer"]

OPTIMIZERS: Registry = Registry("optimizer")

Beta = Annotated[float, Field(ge=0, lt=1)]
# a learning rate, or auto: found by a range test before training (deepworks.training.lr_finder)
LR = Annotated[float, Field(gt=0)] | Literal["auto"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SGDParams(_Params):
    lr: LR = Field(0.01, description="learning rate, or auto (a range test picks it)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0 and dampening 0)")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient")
    dampening: float = Field(0.0, ge=0, le=1, description="dampening of the momentum")


class AdamParams(_Params):
    lr: LR = Field(1e-3, description="learning rate, or auto (a range test picks it)")
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient (coupled, as in Adam)")
    amsgrad: bool = False


class AdamWParams(_Params):
    lr: LR = Field(1e-3, description="learning rate, or auto (a range test picks it)")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay")
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    amsgrad: bool = False


class RMSpropParams(_Params):
    lr: LR = Field(1e-3, description="learning rate, or auto (a range test picks it)")
    alpha: float = Field(0.99, ge=0, lt=1, description="smoothing constant of the squared-gradient average")
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    centered: bool = Field(False, description="normalise by the estimated gradient variance")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient")


class LBFGSParams(_Params):
    lr: float = Field(1.0, gt=0, description="step length before the line search (1 is L-BFGS' natural step)")
    max_iter: int = Field(20, ge=1, description="L-BFGS iterations per epoch (each epoch is one full-batch step)")
    history_size: int = Field(100, ge=1, description="curvature pairs kept")
    tolerance_grad: float = Field(1e-7, ge=0, description="stop when the largest gradient entry is below this")
    tolerance_change: float = Field(1e-9, ge=0, description="stop when the loss or step changes less than this")
    line_search_fn: Literal["strong_wolfe"] | None = Field("strong_wolfe", description="strong_wolfe or null")


@OPTIMIZERS.register("sgd", params=SGDParams, description="stochastic gradient descent with momentum")
def sgd(params: Iterable, **kw) -> torch.optim.Optimizer:
    if kw.get("nesterov"):
        from deepworks.errors import ConfigError

        if not kw.get("momentum"):
            raise ConfigError("train.optimizer.nesterov: Nesterov momentum needs train.optimizer.momentum > 0.")
        if kw.get("dampening"):
            raise ConfigError(
                "train.optimizer.dampening: Nesterov momentum needs train.optimizer.dampening: 0 "
                f"(given: {kw['dampening']})."
            )
    return torch.optim.SGD(params, **kw)


@OPTIMIZERS.register("adam", params=AdamParams, description="Adam (weight_decay is a coupled L2 penalty)")
def adam(params: Iterable, **kw) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, **kw)


@OPTIMIZERS.register("adamw", params=AdamWParams, description="Adam with decoupled weight decay")
def adamw(params: Iterable, **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, **kw)


@OPTIMIZERS.register("rmsprop", params=RMSpropParams, description="RMSprop")
def rmsprop(params: Iterable, **kw) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, **kw)


@OPTIMIZERS.register(
    "lbfgs", params=LBFGSParams,
    description="L-BFGS with a strong-Wolfe line search on the full batch: for softmax and other small convex problems",
)
def lbfgs(params: Iterable, **kw) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(params, **kw)


FULL_BATCH = {"lbfgs"}  # optimizers that take the whole training set as one batch (a closure per step)


def build_optimizer(name: str, params: Iterable, device: torch.device | str = "cpu", **kw) -> torch.optim.Optimizer:
    """The optimizer ``name`` with its validated params; fused kernels on CUDA where torch has them,
    and elsewhere the multi-tensor (foreach) update, which torch uses by default only on CUDA."""
    entry = OPTIMIZERS.entry(name, where="train.optimizer.name")
    if entry.params is not None:
        kw = entry.params.model_validate(kw).model_dump()
    if torch.device(device).type == "cuda" and name in FUSED:
        kw["fused"] = True  # one kernel for the whole update instead of one per tensor
    elif name in FOREACH:
        kw["foreach"] = True  # one op per step for all tensors instead of a Python loop over them
    return entry.factory(params, **kw)


# optimizers whose torch implementation has a fused CUDA kernel
FUSED = {"adamw", "adam", "sgd"}
# optimizers whose torch implementation has a multi-tensor (foreach) update
FOREACH = {"adamw", "adam", "sgd", "rmsprop"}
