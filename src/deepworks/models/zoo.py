"""torchvision classification backbones, built for the data's channels and classes.

Weights start random here; pretrained weights and fine-tuning belong to transfer learning.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import nn

from deepworks.models.registry import MODELS

__all__ = ["BACKBONES", "backbone"]

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


class BackboneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _first_conv_for(model: nn.Module, in_channels: int) -> None:
    """Swap the stem's first convolution for one that takes ``in_channels`` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(
                        parent,
                        child_name,
                        nn.Conv2d(
                            in_channels,
                            child.out_channels,
                            child.kernel_size,
                            child.stride,
                            child.padding,
                            child.dilation,
                            child.groups if child.groups == 1 else in_channels,
                            child.bias is not None,
                        ),
                    )
                return


def backbone(name: str):
    def factory(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        _first_conv_for(model, input_shape[0])
        return model

    factory.__doc__ = f"torchvision {name}"
    return factory


for _name, _desc in BACKBONES.items():
    MODELS.register(_name, params=BackboneParams, description=f"torchvision {_desc}")(backbone(_name))
