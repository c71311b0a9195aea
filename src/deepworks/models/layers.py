"""Activations by name, and the shape arithmetic of convolution and pooling."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator
from torch import nn

from deepworks.errors import ShapeError, UnknownNameError
from deepworks.registry import Registry

__all__ = ["ACTIVATIONS", "ActivationName", "make_activation", "conv_output_size", "same_padding"]

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")

ACTIVATIONS.register("relu", description="max(0, x)")(nn.ReLU)
ACTIVATIONS.register("leaky_relu", description="x if x > 0 else 0.01 x")(nn.LeakyReLU)
ACTIVATIONS.register("prelu", description="leaky ReLU with a learned slope")(nn.PReLU)
ACTIVATIONS.register("elu", description="x if x > 0 else exp(x) - 1")(nn.ELU)
ACTIVATIONS.register("gelu", description="x * Phi(x)")(nn.GELU)
ACTIVATIONS.register("silu", aliases=("swish",), description="x * sigmoid(x)")(nn.SiLU)
ACTIVATIONS.register("tanh", description="hyperbolic tangent")(nn.Tanh)
ACTIVATIONS.register("sigmoid", description="1 / (1 + exp(-x))")(nn.Sigmoid)


def _known_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        # a ValueError, so the config layer reports it with the key path
        raise ValueError(str(UnknownNameError("activation", name, ACTIVATIONS.names())))
    return name


ActivationName = Annotated[str, AfterValidator(_known_activation)]
"""A config field holding an activation name, checked when the config is validated."""


def make_activation(name: str, where: str = "activation") -> nn.Module:
    return ACTIVATIONS.get(name, where=where)()


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
