"""A configurable convolutional network: conv blocks then a fully connected head.

Each block is ``convs`` x (conv -> [batch norm] -> activation), then optional pooling and
dropout. Shapes are worked out while building, so a config whose images would shrink to
nothing fails here, naming the block, before any training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from deepworks.models.layers import ActivationName, conv_output_size, make_activation, same_padding
from deepworks.models.registry import MODELS

__all__ = ["CNNParams", "ConvBlock", "cnn", "global_pool_default", "GLOBAL_POOL_ABOVE"]

Padding = Literal["same", "valid"] | int

# global_pool's default: on for images whose shorter side is over this many pixels
GLOBAL_POOL_ABOVE = 64


def global_pool_default(input_shape: tuple[int, ...]) -> bool:
    """Whether a ``cnn`` without ``global_pool`` pools: for images over 64 px (shorter side). Without
    pooling the first dense layer reads every position of the last feature maps, and its weights
    grow with the pixels: 25.7M parameters at 224x224 with the default blocks, against 29k pooled."""
    return min(int(s) for s in input_shape[-2:]) > GLOBAL_POOL_ABOVE


class ConvBlock(BaseModel):
    """One block; a key left out takes the model-level value of the same name."""

    model_config = ConfigDict(extra="forbid")
    filters: int = Field(ge=1)
    kernel_size: int | None = Field(None, ge=1)
    stride: int | None = Field(None, ge=1)
    padding: Padding | None = None
    convs: int | None = Field(None, ge=1)
    pool: Literal["max", "avg", "none"] | None = None
    pool_size: int | None = Field(None, ge=2)
    batch_norm: bool | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    activation: ActivationName | None = None


class CNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filters: list[int] = Field(default_factory=lambda: [32, 64], description="filters of each conv block")
    blocks: list[ConvBlock] | None = Field(None, description="per-block settings; overrides `filters`")
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(1, ge=1)
    padding: Padding = "same"
    convs: int = Field(1, ge=1, description="conv layers per block")
    pool: Literal["max", "avg", "none"] = "max"
    pool_size: int = Field(2, ge=2)
    batch_norm: bool = True
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout after each block")
    activation: ActivationName = "relu"
    hidden: list[int] = Field(default_factory=lambda: [128], description="units of the dense head")
    head_dropout: float = Field(0.5, ge=0, lt=1)
    global_pool: bool | None = Field(
        None, description="average each feature map to one value before the head; default: on for images over "
        f"{GLOBAL_POOL_ABOVE} px (shorter side), where the dense head would otherwise read every pixel position "
        "(the run's config.yaml records the value used)"
    )

    @model_validator(mode="after")
    def _some_blocks(self) -> CNNParams:
        if not self.blocks and not self.filters:
            raise ValueError("a CNN needs at least one conv block: set model.filters, e.g. [32, 64]")
        if any(f < 1 for f in self.filters):
            raise ValueError("model.filters must be positive integers")
        return self


@MODELS.register("cnn", params=CNNParams, description="conv blocks (padding, stride, pooling, batch norm, dropout) + dense head")
def cnn(input_shape: tuple[int, int, int], num_classes: int, **params) -> nn.Module:
    p = CNNParams.model_validate(params)
    blocks = p.blocks or [ConvBlock(filters=f) for f in p.filters]
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for i, block in enumerate(blocks):
        get = lambda key: getattr(block, key) if getattr(block, key) is not None else getattr(p, key)  # noqa: E731
        kernel, stride, padding = get("kernel_size"), get("stride"), get("padding")
        for j in range(get("convs")):
            where = f"model block {i} conv {j} ({block.filters} filters, kernel {kernel}, stride {stride}, padding {padding})"
            s = stride if j == 0 else 1  # the stride applies to the block's first conv
            if padding == "same":
                # explicit (possibly asymmetric) zero padding: torch's padding='same' has no strides
                top, bottom = same_padding(height, kernel, s)
                left, right = same_padding(width, kernel, s)
                if top == bottom and left == right:
                    conv_pad = (top, left)  # symmetric: the conv pads itself, no extra copy
                else:
                    layers.append(nn.ZeroPad2d((left, right, top, bottom)))
                    conv_pad = 0
            else:
                conv_pad = 0 if padding == "valid" else int(padding)
            height = conv_output_size(height, kernel, s, padding, where)
            width = conv_output_size(width, kernel, s, padding, where)
            layers.append(nn.Conv2d(channels, block.filters, kernel, stride=s, padding=conv_pad, bias=not get("batch_norm")))
            if get("batch_norm"):
                layers.append(nn.BatchNorm2d(block.filters))
            layers.append(make_activation(get("activation"), where="model.activation"))
            channels = block.filters
        if get("pool") != "none":
            size = get("pool_size")
            where = f"model block {i} {get('pool')}-pool {size}x{size}"
            height = conv_output_size(height, size, size, "valid", where)
            width = conv_output_size(width, size, size, "valid", where)
            layers.append((nn.MaxPool2d if get("pool") == "max" else nn.AvgPool2d)(size))
        if get("dropout"):
            layers.append(nn.Dropout(get("dropout")))
    pool = p.global_pool if p.global_pool is not None else global_pool_default(input_shape)
    if pool:
        layers.append(nn.AdaptiveAvgPool2d(1))
        height = width = 1
    layers.append(nn.Flatten())
    features = channels * height * width
    for units in p.hidden:
        layers += [nn.Linear(features, units), make_activation(p.activation, where="model.activation")]
        if p.head_dropout:
            layers.append(nn.Dropout(p.head_dropout))
        features = units
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
