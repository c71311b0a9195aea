"""The model registry and ``create_model``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError
from torch import nn

from deepworks.errors import ConfigError, ShapeError
from deepworks.models.init import apply_init
from deepworks.registry import Registry

__all__ = ["MODELS", "create_model", "model_from_config", "list_models", "flat_input", "takes_flat_input"]

MODELS: Registry = Registry("model")

F = TypeVar("F", bound=Callable[..., Any])


def flat_input(factory: F) -> F:
    """Mark a model factory as taking any input shape it can flatten, feature vectors (F,) included.

    Put it under ``@MODELS.register``; models without it need images (C, H, W).
    """
    factory.flat_input = True  # type: ignore[attr-defined]
    return factory


def takes_flat_input(name: str) -> bool:
    """Whether the registered model ``name`` accepts tabular input of shape (F,)."""
    return bool(getattr(MODELS.get(name), "flat_input", False))


def create_model(
    name: str,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    init: str = "default",
    zero_bias: bool = True,
    **params: Any,
) -> nn.Module:
    """Build a registered model as a plain ``nn.Module``.

    ``input_shape`` is (channels, height, width) of one image, or (features,) of one
    feature vector for the models that flatten their input (``softmax``, ``mlp``);
    ``params`` are the model's own keys (``deepworks inspect`` and the docs list them). ``init`` names a weight
    initialisation (``he_normal``, ``xavier_uniform``, ...); with one, biases start at zero
    unless ``zero_bias=False``.

    >>> m = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[16])
    >>> import torch; m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    entry = MODELS.entry(name, where="model.name")
    shape = tuple(input_shape)
    if len(shape) not in (1, 3) or any(int(s) < 1 for s in shape):
        raise ShapeError(
            f"input_shape: expected (channels, height, width) for images or (features,) for tabular data, got {shape}"
        )
    if len(shape) == 1 and not takes_flat_input(name):
        flat = [n for n in MODELS.names() if takes_flat_input(n)]
        choices = " or ".join([", ".join(flat[:-1]), flat[-1]] if len(flat) > 1 else flat)
        raise ShapeError(
            f"model.name: {name} needs image input (C, H, W); tabular data has shape (F,) = ({int(shape[0])},): "
            f"use {choices}"
        )
    if num_classes < 1:
        raise ShapeError(f"num_classes: the model needs at least 1 output (a class or a target), got {num_classes}")
    if entry.params is not None:
        try:
            params = entry.params.model_validate(params).model_dump()
        except ValidationError as exc:
            from deepworks.config import format_errors

            raise ConfigError(format_errors(exc.errors(), f"model {name!r}", ("model",), entry.params)) from None
    model = entry.factory(tuple(int(s) for s in input_shape), int(num_classes), **params)
    return apply_init(model, init, zero_bias)


def model_from_config(model_config: Any, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The model a config's ``model`` block describes, for data of ``input_shape`` and ``num_classes``."""
    m = model_config
    return create_model(
        m.name, input_shape=input_shape, num_classes=num_classes, init=m.init, zero_bias=m.zero_bias, **m.params
    )


def list_models() -> list[str]:
    return MODELS.names()
