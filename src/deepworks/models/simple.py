"""The softmax classifier and the multi-layer perceptron."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepworks.models.layers import ActivationName, make_activation
from deepworks.models.registry import MODELS, flat_input

__all__ = ["SoftmaxParams", "MLPParams", "softmax", "mlp"]


class SoftmaxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bias: bool = True


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: list[int] = Field(default_factory=lambda: [256, 128], description="units of each hidden layer")
    activation: ActivationName = "relu"
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout after each hidden layer")
    batch_norm: bool = False


@MODELS.register("softmax", params=SoftmaxParams, description="multinomial logistic regression: one linear layer + softmax")
@flat_input
def softmax(input_shape: tuple[int, ...], num_classes: int, bias: bool = True) -> nn.Module:
    """A linear layer on the flattened input (an image (C, H, W) or features (F,)); cross-entropy adds the softmax."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias))


@MODELS.register("mlp", params=MLPParams, description="fully connected layers with activations and dropout")
@flat_input
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int],
    activation: str,
    dropout: float,
    batch_norm: bool,
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for units in hidden:
        layers.append(nn.Linear(width, units))
        if batch_norm:
            layers.append(nn.BatchNorm1d(units))
        layers.append(make_activation(activation, where="model.activation"))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
