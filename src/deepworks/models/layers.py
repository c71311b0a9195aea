"""Activations by name, and the shape arithmetic of convolution and pooling."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from deepworks.errors import ShapeError, UnknownNameError
from deepworks.registry import Registry

__all__ = ["ACTIVATIONS", "ActivationName", "make_activation", "conv_output_size", "same_padding"]

ACTIVATIONS: Registry[Callable[..., nn.Module]] = Registry("activation")


class _LeakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    negative_slope: float = Field(0.01, ge=0, description="slope for x < 0")


class _ELUParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0, description="value approached for large negative x is -alpha")


class _PReLUParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init: float = Field(0.25, description="initial value of the learned slope")


ACTIVATIONS.register("relu", description="max(0, x)")(nn.ReLU)
ACTIVATIONS.register("leaky_relu", params=_LeakyParams, description="x if x > 0 else negative_slope * x")(
    lambda negative_slope=0.01: nn.LeakyReLU(negative_slope)
)
ACTIVATIONS.register("prelu", params=_PReLUParams, description="leaky ReLU whose slope is learned")(
    lambda init=0.25: nn.PReLU(init=init)
)
ACTIVATIONS.register("elu", params=_ELUParams, description="x if x > 0 else alpha * (exp(x) - 1)")(
    lambda alpha=1.0: nn.ELU(alpha)
)
ACTIVATIONS.register("gelu", description="x * Phi(x)")(nn.GELU)
ACTIVATIONS.register("silu", aliases=("swish",), description="x * sigmoid(x)")(nn.SiLU)
ACTIVATIONS.register("tanh", description="hyperbolic tangent")(nn.Tanh)
ACTIVATIONS.register("sigmoid", description="1 / (1 + exp(-x))")(nn.Sigmoid)


def _split_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and "name" in spec:
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise ValueError(f"expected an activation name or {{name: ..., <params>}}, got {spec!r}")


def _known_activation(spec: Any) -> Any:
    # ValueErrors, so the config layer reports them with the key path
    name, params = _split_spec(spec)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(str(UnknownNameError("activation", name, ACTIVATIONS.names())))
    schema = ACTIVATIONS.entry(name).params
    if schema is None and params:
        raise ValueError(f"activation {name!r} takes no parameters, got {sorted(params)}")
    if schema is not None:
        try:
            schema.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"activation {name!r}: {problems}") from None
    return spec


ActivationName = Annotated[str | dict[str, Any], AfterValidator(_known_activation)]
"""A config field holding an activation: a name, or ``{name: leaky_relu, negative_slope: 0.1}``."""


def make_activation(spec: str | dict[str, Any], where: str = "activation") -> nn.Module:
    name, params = _split_spec(spec)
    entry = ACTIVATIONS.entry(name, where=where)
    if entry.params is not None:
        params = entry.params.model_validate(params).model_dump()
    return entry.factory(**params)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding so that output = ceil(size / stride), as in 'same'."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel: int, stride: int, padding: int | str, where: str) -> int:
    """Output length of a convolution or pooling along one axis; ShapeError if it vanishes."""
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{where}: the input is {size} pixels wide here but the window is {kernel} "
            f"(stride {stride}, padding {padding!r}), so nothing is left. Use padding: same, "
            "a smaller kernel or stride, fewer pooling layers, or larger images (data.image_size)."
        )
    return out
