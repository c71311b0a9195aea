"""The model registry and ``create_model``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError
from torch import nn

from deepworks.errors import ConfigError, ShapeError
from deepworks.models.init import apply_init
from deepworks.registry import Registry

__all__ = [
    "MODELS", "create_model", "model_from_config", "list_models", "flat_input", "takes_flat_input", "sequence_input",
    "takes_sequence_input",
]

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


def sequence_input(factory: F) -> F:
    """Mark a model factory as reading sequences: token ids (L,) with a ``vocab_size`` keyword
    (text), or windows of a series (steps, features). Put it under ``@MODELS.register``."""
    factory.sequence_input = True  # type: ignore[attr-defined]
    return factory


def takes_sequence_input(name: str) -> bool:
    """Whether the registered model ``name`` reads token ids and series windows."""
    return bool(getattr(MODELS.get(name), "sequence_input", False))


def _choices(names: list[str]) -> str:
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _check_input(name: str, shape: tuple[int, ...], vocab_size: int | None) -> None:
    """A clear ShapeError when model ``name`` cannot read data of this kind."""
    if len(shape) not in (1, 2, 3) or any(int(s) < 1 for s in shape):
        raise ShapeError(
            f"input_shape: expected (channels, height, width) for images, (features,) for tabular data, "
            f"(steps, features) for series windows or (length,) with a vocab_size for text, got {shape}"
        )
    sequence = [n for n in MODELS.names() if takes_sequence_input(n)]
    if vocab_size is not None:
        if len(shape) != 1:
            raise ShapeError(f"input_shape: token ids are shaped (length,), got {shape}")
        if not takes_sequence_input(name):
            raise ShapeError(
                f"model.name: {name} cannot read text (token ids of length {shape[0]}): use {_choices(sequence)}"
            )
        return
    if len(shape) == 2 and not (takes_sequence_input(name) or takes_flat_input(name)):
        flat = [n for n in MODELS.names() if takes_flat_input(n)]
        raise ShapeError(
            f"model.name: {name} cannot read series windows (steps, features) = {shape}: use {_choices(sequence + flat)}"
        )
    if len(shape) == 1 and not takes_flat_input(name):
        flat = [n for n in MODELS.names() if takes_flat_input(n)]
        raise ShapeError(
            f"model.name: {name} needs image input (C, H, W); tabular data has shape (F,) = ({int(shape[0])},): "
            f"use {_choices(flat)}"
        )
    if len(shape) == 3 and takes_sequence_input(name) and not takes_flat_input(name):
        raise ShapeError(f"model.name: {name} reads sequences, not images shaped {shape}: use cnn, mlp or softmax")


def create_model(
    name: str,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    vocab_size: int | None = None,
    init: str = "default",
    zero_bias: bool = True,
    **params: Any,
) -> nn.Module:
    """Build a registered model as a plain ``nn.Module``.

    ``input_shape`` is (channels, height, width) of one image, (features,) of one
    feature vector for the models that flatten their input (``softmax``, ``mlp``),
    (steps, features) of one window of a series, or (length,) of token ids with
    ``vocab_size`` given (text; the sequence models ``rnn``, ``lstm``, ``gru``);
    ``params`` are the model's own keys (``deepworks inspect`` and the docs list them). ``init`` names a weight
    initialisation (``he_normal``, ``xavier_uniform``, ...); with one, biases start at zero
    unless ``zero_bias=False``.

    >>> m = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[16])
    >>> import torch; m(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    entry = MODELS.entry(name, where="model.name")
    shape = tuple(int(s) for s in input_shape)
    _check_input(name, shape, vocab_size)
    if num_classes < 1:
        raise ShapeError(f"num_classes: the model needs at least 1 output (a class or a target), got {num_classes}")
    if entry.params is not None:
        try:
            params = entry.params.model_validate(params).model_dump()
        except ValidationError as exc:
            from deepworks.config import format_errors

            raise ConfigError(format_errors(exc.errors(), f"model {name!r}", ("model",), entry.params)) from None
    if vocab_size is not None:
        params["vocab_size"] = int(vocab_size)
    model = entry.factory(shape, int(num_classes), **params)
    return apply_init(model, init, zero_bias)


def model_from_config(
    model_config: Any, input_shape: Sequence[int], num_classes: int, vocab_size: int | None = None
) -> nn.Module:
    """The model a config's ``model`` block describes, for data of ``input_shape`` and ``num_classes``
    (and ``vocab_size`` for token ids)."""
    m = model_config
    return create_model(
        m.name, input_shape=input_shape, num_classes=num_classes, vocab_size=vocab_size, init=m.init,
        zero_bias=m.zero_bias, **m.params,
    )


def list_models() -> list[str]:
    return MODELS.names()
