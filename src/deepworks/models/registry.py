"""The model registry and ``create_model``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from torch import nn

from deepworks.errors import ConfigError, ShapeError
from deepworks.registry import Registry

__all__ = ["MODELS", "create_model", "list_models"]

MODELS: Registry = Registry("model")


def create_model(
    name: str,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    **params: Any,
) -> nn.Module:
    """Build a registered model as a plain ``nn.Module``.

    ``input_shape`` is (channels, height, width) of one sample; ``params`` are the model's
    own keys (``deepworks inspect`` and the docs list them).

    >>> m = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[16])
    >>> import torch; m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    entry = MODELS.entry(name, where="model.name")
    if len(tuple(input_shape)) != 3 or any(int(s) < 1 for s in input_shape):
        raise ShapeError(f"input_shape: expected (channels, height, width), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ShapeError(f"num_classes: a classifier needs at least 2 classes, got {num_classes}")
    if entry.params is not None:
        try:
            params = entry.params.model_validate(params).model_dump()
        except ValidationError as exc:
            from deepworks.config import format_errors

            raise ConfigError(format_errors(exc.errors(), f"model {name!r}", ("model",), entry.params)) from None
    return entry.factory(tuple(int(s) for s in input_shape), int(num_classes), **params)


def list_models() -> list[str]:
    return MODELS.names()
