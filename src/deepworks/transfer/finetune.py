"""Feature extraction and fine-tuning: which parts of a pretrained model learn, and how fast.

:class:`Transfer` wraps a model (a backbone with loaded weights, or a model from an earlier run)
and splits it into a *head* (its last dense layer, new for this task) and a *body* of blocks in
order from input to output (:func:`body_blocks`). ``transfer.mode``:

* ``feature_extraction``: the body is frozen, its batch-norm statistics too (its blocks stay in
  eval mode while the head trains); with ``transfer.cache`` the body's features are computed once
  (:func:`cache_features`) and each epoch trains only the head on them;
* ``fine_tune``: the top ``transfer.unfreeze`` blocks (or all) learn at ``transfer.backbone_lr_scale``
  times the head's learning rate, after ``transfer.warmup_epochs`` epochs with the body frozen;
  with ``transfer.layer_decay`` each block below the top one learns at ``layer_decay`` times the
  rate of the block above it (layer-wise learning-rate decay).

A model may say what its blocks are (a method ``body_blocks()``, as a pretrained text transformer
does: its embeddings, each layer, its pooler); otherwise :func:`body_blocks` finds them.

The wrapper's forward takes images; with ``reads_features`` set it takes cached body features
and runs the head alone. Its state dict is the wrapped model's under ``model.``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepworks.data.loaders import TensorData, evaluation_order, iterate_batches
from deepworks.models.zoo import Backbone, InputAdapter
from deepworks.training.callbacks import Callback
from deepworks.transfer.weights import head_name

__all__ = ["Transfer", "body_blocks", "cache_features", "CachedFeatures", "TransferStages"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def _params(module: nn.Module, skip: set[int]) -> list[nn.Parameter]:
    return [p for p in module.parameters() if id(p) not in skip]


def body_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body's blocks from input to output, the head excluded: plain ``nn.Sequential`` and
    ``nn.ModuleList`` containers (and a backbone's network) are opened, other modules are blocks;
    a normalisation layer joins the block before it, and blocks without parameters are dropped.
    For a ResNet the blocks are the stem and each residual block; for EfficientNet the stem, each
    inverted-residual block and the final 1x1 convolution. A model with a ``body_blocks()`` method
    gives its own (a text transformer: embeddings, each layer, the pooler)."""
    if callable(getattr(model, "body_blocks", None)):
        return list(model.body_blocks())
    head = model.get_submodule(head_name(model))
    skip = {id(p) for p in head.parameters()}
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if child is head:
                continue
            if type(child) in (nn.Sequential, nn.ModuleList) or (isinstance(module, Backbone) and name == "net"):
                walk(full + ".", child)
            elif any(p is not None for p in _params(child, skip)):
                if isinstance(child, _NORMS) and found:
                    found[-1] = (found[-1][0], nn.ModuleList([found[-1][1], child]))  # joins the block before it
                else:
                    found.append((full, child))

    walk("", model)
    return found


class Transfer(nn.Module):
    """A model whose body is frozen, or fine-tuned from a block upward, under a new head."""

    def __init__(
        self, model: nn.Module, mode: str = "fine_tune", unfreeze: int | str = "all", warmup_epochs: int = 0,
        backbone_lr_scale: float = 1.0, channels: int | None = None, layer_decay: float | None = None,
    ):
        super().__init__()
        # images: the data's normalisation mapped to the one the model was trained with (an earlier run's)
        self.input = InputAdapter(channels, channels, None) if channels else nn.Identity()
        self.model = model
        self.mode, self.warmup_epochs, self.backbone_lr_scale = mode, int(warmup_epochs), float(backbone_lr_scale)
        self.layer_decay = float(layer_decay) if layer_decay is not None else None
        self.head_name = head_name(model)
        self.head = [model.get_submodule(self.head_name)]  # a list: not registered twice
        blocks = body_blocks(model)
        n = len(blocks) if unfreeze == "all" else min(int(unfreeze), len(blocks))
        self.blocks = blocks
        self.tunable = [name for name, _ in blocks[len(blocks) - n:]] if mode == "fine_tune" else []
        head_ids = {id(p) for p in self.head[0].parameters()}
        self._body_params = [p for p in model.parameters() if id(p) not in head_ids]
        self.reads_features = False
        self.frozen_body = True
        self.set_epoch(1)

    def _block_modules(self, names: list[str]) -> list[nn.Module]:
        table = dict(self.blocks)
        return [table[n] for n in names]

    def set_epoch(self, epoch: int) -> None:
        """Freeze or unfreeze for training epoch ``epoch`` (1-based): the body stays frozen in
        feature extraction and for the warm-up epochs of fine-tuning."""
        frozen = self.mode == "feature_extraction" or epoch <= self.warmup_epochs
        tunable = {id(p) for m in self._block_modules(self.tunable) for p in m.parameters()} if not frozen else set()
        for p in self._body_params:
            p.requires_grad_(id(p) in tunable)
        for p in self.head[0].parameters():
            p.requires_grad_(True)
        self.frozen_body = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> Transfer:
        super().train(mode)
        if mode:  # frozen blocks keep their batch-norm statistics and dropout off
            learning = set() if self.frozen_body else set(self.tunable)
            for name, block in self.blocks:
                if name not in learning:
                    block.eval()
        return self

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The head at the configured learning rate; the blocks that may learn at
        ``backbone_lr_scale`` times it (``lr_scale``, applied by the Trainer), and with
        ``layer_decay`` each block below the top one at ``layer_decay`` times the block above."""
        groups: list[dict[str, Any]] = [{"params": list(self.head[0].parameters()), "lr_scale": 1.0}]
        if self.layer_decay is None:
            tunable = [p for m in self._block_modules(self.tunable) for p in m.parameters()]
            if tunable:
                groups.append({"params": tunable, "lr_scale": self.backbone_lr_scale})
            return groups
        for depth, name in enumerate(reversed(self.tunable)):  # the top block first
            params = list(dict(self.blocks)[name].parameters())
            if params:
                groups.append({"params": params, "lr_scale": self.backbone_lr_scale * self.layer_decay ** depth})
        return groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reads_features:
            return self.head[0](x)
        return self.model(self.input(x))

    def describe(self) -> dict[str, Any]:
        """The blocks and which learn, for ``inspect`` and ``summary.json``."""
        tunable = set(self.tunable)
        return {
            "mode": self.mode,
            "head": self.head_name,
            "blocks": len(self.blocks),
            "tuned_blocks": [n for n, _ in self.blocks if n in tunable],
            "frozen_blocks": [n for n, _ in self.blocks if n not in tunable],
            "warmup_epochs": self.warmup_epochs,
            "backbone_lr_scale": self.backbone_lr_scale,
            "layer_decay": self.layer_decay,
        }


class CachedFeatures(TensorData):
    """A split as the frozen body's features (the head's inputs), with the images kept for
    display (the report's most confidently wrong images)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, images: Any):
        super().__init__(x, y)
        self.images = images

    def to(self, device: torch.device) -> CachedFeatures:
        return CachedFeatures(self.x.to(device), self.y.to(device), self.images)


@torch.no_grad()
def cache_features(model: Transfer, data: Any, *, batch_size: int, device: torch.device, precision: Any) -> CachedFeatures:
    """The inputs of ``model``'s head for every sample of ``data``, in order, with the body in eval
    mode (float32 on the CPU)."""
    captured: list[torch.Tensor] = []
    hook = model.head[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    was = model.training
    model.eval()
    model.reads_features = False
    try:
        source = data.to(device) if isinstance(data, TensorData) else data  # in memory: on the model's device
        for xb, _ in iterate_batches(source, batch_size, shuffle=False, device=device):
            xb = xb.to(device)
            if precision.channels_last and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with precision.autocast():
                model(xb)
    finally:
        hook.remove()
        model.train(was)
    features = torch.cat(captured)
    order = evaluation_order(source)  # texts were visited shortest first: back to the stored order
    if order is not None:
        features = features[order.argsort()]
    y = data.y if isinstance(data.y, torch.Tensor) else torch.as_tensor(data.y)
    return CachedFeatures(features, y.cpu(), data)


class TransferStages(Callback):
    """Calls :meth:`Transfer.set_epoch` at the start of each epoch (a resumed epoch too)."""

    def __init__(self, model: Transfer):
        self.model = model
        self.seconds = 0.0

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        was_frozen = self.model.frozen_body
        self.model.set_epoch(epoch)
        if was_frozen and not self.model.frozen_body and epoch > 1:
            trainer.log(f"epoch {epoch}: unfreezing {len(self.model.tunable)} blocks of the body "
                        f"(lr x {self.model.backbone_lr_scale:g})")

