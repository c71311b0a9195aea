"""Weight initialisation by name (He, Xavier, orthogonal), applied to conv and linear layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepworks.registry import Registry

__all__ = ["INITIALIZERS", "apply_init"]

INITIALIZERS: Registry[Callable[[torch.Tensor], None]] = Registry("initialiser")


def _relu_gain(w: torch.Tensor, fn) -> None:
    fn(w, mode="fan_in", nonlinearity="relu")


INITIALIZERS.register("default", description="PyTorch's own per-layer default (Kaiming-uniform, a=sqrt(5))")(
    lambda w: None
)
INITIALIZERS.register("he_normal", description="N(0, 2/fan_in): keeps ReLU activations' variance (He et al. 2015)")(
    lambda w: _relu_gain(w, nn.init.kaiming_normal_)
)
INITIALIZERS.register("he_uniform", description="U(-sqrt(6/fan_in), sqrt(6/fan_in))")(
    lambda w: _relu_gain(w, nn.init.kaiming_uniform_)
)
INITIALIZERS.register("xavier_normal", description="N(0, 2/(fan_in+fan_out)): for tanh/sigmoid (Glorot 2010)")(
    nn.init.xavier_normal_
)
INITIALIZERS.register("xavier_uniform", description="U(-a, a), a = sqrt(6/(fan_in+fan_out))")(nn.init.xavier_uniform_)
INITIALIZERS.register("orthogonal", description="a (semi-)orthogonal matrix: preserves norms through depth")(
    nn.init.orthogonal_
)


@torch.no_grad()
def apply_init(model: nn.Module, name: str = "default", zero_bias: bool = True) -> nn.Module:
    """Initialise every conv and linear weight of ``model`` with ``name``, and the input and
    recurrent weight matrices of recurrent layers (RNN/LSTM/GRU, each stacked gate matrix as one);
    biases to zero if asked.

    ``default`` leaves the framework's initialisation (biases included) untouched.
    """
    init = INITIALIZERS.get(name, where="model.init")
    if name == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            init(module.weight)
            if module.bias is not None and zero_bias:
                module.bias.zero_()
        elif isinstance(module, nn.RNNBase):
            for param_name, p in module.named_parameters(recurse=False):
                if param_name.startswith("weight_"):
                    init(p)
                elif param_name.startswith("bias_") and zero_bias:
                    p.zero_()
    return model
