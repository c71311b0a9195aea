"""The model registry and ``create_model``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from torch import nn

from deepworks.errors import ConfigError, ModelImportError, ShapeError, UnknownNameError
from deepworks.models import external
from deepworks.models.init import apply_init
from deepworks.registry import Entry, Registry

__all__ = [
    "MODELS", "ModelRegistry", "create_model", "model_from_config", "list_models", "flat_input", "takes_flat_input",
    "sequence_input", "takes_sequence_input", "text_input", "takes_text_input", "describe_model", "describe_models",
    "model_source",
]


class ModelRegistry(Registry):
    """The model registry: the built-in models, the models installed packages add through the
    ``deepworks.models`` entry point group (loaded the first time a name is not built in), and any
    ``package.module:factory`` import path (see :mod:`deepworks.models.external`).

    Register a model of your own under a name with the decorator, giving the schema of its keys::

        class TinyParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            width: int = Field(32, description="hidden units")

        @MODELS.register("tiny", params=TinyParams, description="one hidden layer")
        @flat_input                        # it reads feature vectors (F,) too, not only images
        def tiny(input_shape, num_classes, width):
            ...                            # return an nn.Module

    Without ``params``, the keys are checked against the factory's signature.
    """

    def __init__(self, kind: str):
        super().__init__(kind)
        self._loaded_points: set[tuple[str, str]] = set()

    def entry(self, name: str, where: str | None = None) -> Entry:
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        if external.is_import_path(name):
            try:
                factory = external.import_factory(name)
            except ModelImportError as exc:
                raise exc.at(where) if where else exc from None
            return Entry(name, factory, external.params_schema(factory, name), external.factory_description(factory),
                         f"import path ({getattr(factory, '__module__', '?')})")
        if isinstance(name, str):
            self.load_entry_points(name)
            if name in self._entries:
                return self._entries[name]
        exc = UnknownNameError(self.kind, name, set(self._entries) | self.entry_point_names(), where)
        exc.args = (f"{exc} A model of your own is named by import path: 'package.module:factory'.",)
        raise exc

    def entry_point_names(self) -> set[str]:
        return {ep.name for ep in external.entry_points()}

    def load_entry_points(self, name: str | None = None, *, strict: bool = True) -> None:
        """Load the ``deepworks.models`` entry points not loaded yet: those called ``name`` first, then,
        while ``name`` is still unknown (a module may register other names), the rest; all of them when
        ``name`` is None. One that fails is a :class:`ModelImportError` (``strict``) or a warning."""
        points = [ep for ep in external.entry_points() if (ep.name, ep.value) not in self._loaded_points]
        for ep in sorted(points, key=lambda ep: ep.name != name):
            if name is not None and name in self._entries:
                return
            self._loaded_points.add((ep.name, ep.value))
            try:
                self._load_entry_point(ep)
            except ModelImportError as exc:
                if strict:
                    raise
                import warnings

                warnings.warn(str(exc), stacklevel=2)

    def _load_entry_point(self, ep: Any) -> None:
        label = external.entry_point_label(ep)
        saved, self._origin = self._origin, label
        try:
            obj = ep.load()
        except Exception as exc:
            raise ModelImportError(ep.name, f"the {label} cannot be loaded ({type(exc).__name__}: {exc})",
                                   "reinstall that package, or uninstall it", where=f"model {ep.name!r}") from None
        finally:
            self._origin = saved
        if inspect.ismodule(obj):  # a module that registered its models when imported
            return
        external.check_factory(ep.name, obj)
        if ep.name in self._entries:
            raise ModelImportError(ep.name, f"the {label} names a model that already exists",
                                   "rename the entry point", where=f"model {ep.name!r}")
        saved, self._origin = self._origin, label
        try:
            self.register(ep.name, description=external.factory_description(obj))(obj)
        finally:
            self._origin = saved

    def register(self, name: str, *, params: Any = None, description: str = "", aliases: tuple[str, ...] = ()):
        """Decorator: register a model factory under ``name``; ``params`` is the pydantic model of its
        keys (default: read from the factory's signature)."""

        def deco(factory: F) -> F:
            schema = params if params is not None else external.params_schema(factory, name)
            return Registry.register(self, name, params=schema, description=description, aliases=aliases)(factory)

        return deco


MODELS: ModelRegistry = ModelRegistry("model")

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


def text_input(factory: F) -> F:
    """Mark a model factory as reading token ids (L,) only, with a ``vocab_size`` keyword: texts,
    not series windows (a pretrained text encoder). Put it under ``@MODELS.register``."""
    factory.text_input = True  # type: ignore[attr-defined]
    return factory


def takes_text_input(name: str) -> bool:
    """Whether the registered model ``name`` reads token ids only (texts)."""
    return bool(getattr(MODELS.get(name), "text_input", False))


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _choices(names: list[str]) -> str:
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _check_input(name: str, shape: tuple[int, ...], vocab_size: int | None) -> None:
    """A clear ShapeError when model ``name`` cannot read data of this kind."""
    if len(shape) not in (1, 2, 3) or any(int(s) < 1 for s in shape):
        raise ShapeError(
            f"input_shape: expected (channels, height, width) for images, (features,) for tabular data, "
            f"(steps, features) for series windows or (length,) with a vocab_size for text, got {shape}"
        )
    entry = MODELS.entry(name)
    if entry.origin != "built-in" and not (takes_flat_input(name) or takes_sequence_input(name)):
        # a model from outside deepworks without a mark reads what it is given; token ids need a vocab_size
        if vocab_size is not None and not external.takes_keyword(entry.factory, "vocab_size"):
            raise ShapeError(f"model.name: {name} reads token ids of length {shape[0]} here, but its factory takes "
                             "no vocab_size keyword. Fix: add a vocab_size parameter (the vocabulary's size, for an "
                             "nn.Embedding)")
        return
    sequence = [n for n in MODELS.names() if takes_sequence_input(n)]
    if takes_text_input(name) and (vocab_size is None or len(shape) != 1):
        raise ShapeError(f"model.name: {name} reads texts (token ids of shape (length,) with a vocab_size), not data "
                         f"shaped {shape}: use it with data.text (or a text dataset such as rotten-tomatoes)")
    if vocab_size is not None:
        if len(shape) != 1:
            raise ShapeError(f"input_shape: token ids are shaped (length,), got {shape}")
        if not (takes_sequence_input(name) or takes_text_input(name)):
            texts = sequence + [n for n in MODELS.names() if takes_text_input(n)]
            raise ShapeError(
                f"model.name: {name} cannot read text (token ids of length {shape[0]}): use {_choices(texts)}"
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
    encoder_config: dict[str, Any] | None = None,
    **params: Any,
) -> nn.Module:
    """Build a registered model as a plain ``nn.Module``.

    ``input_shape`` is (channels, height, width) of one image, (features,) of one
    feature vector for the models that flatten their input (``softmax``, ``mlp``),
    (steps, features) of one window of a series, or (length,) of token ids with
    ``vocab_size`` given (text; the sequence models ``rnn``, ``lstm``, ``gru``);
    ``params`` are the model's own keys (``deepworks inspect`` and the docs list them). ``init`` names a weight
    initialisation (``he_normal``, ``xavier_uniform``, ...); with one, biases start at zero
    unless ``zero_bias=False``. ``encoder_config``: for ``transformer``, the architecture of the
    pretrained encoder as a run recorded it (a Hugging Face configuration as a dict), so that a
    finished run is rebuilt from its own directory.

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
    if encoder_config is not None:
        params["encoder_config"] = dict(encoder_config)
    model = entry.factory(shape, int(num_classes), **params)
    if not isinstance(model, nn.Module):
        raise ModelImportError(name, f"{name} returned {_a(type(model).__name__)}, not a torch nn.Module",
                               "return the network (an nn.Module) from the factory")
    return apply_init(model, init, zero_bias)


def model_from_config(
    model_config: Any, input_shape: Sequence[int], num_classes: int, vocab_size: int | None = None,
    encoder_config: dict[str, Any] | None = None,
) -> nn.Module:
    """The model a config's ``model`` block describes, for data of ``input_shape`` and ``num_classes``
    (and ``vocab_size`` for token ids, ``encoder_config`` for a pretrained text encoder's recorded
    architecture)."""
    m = model_config
    return create_model(
        m.name, input_shape=input_shape, num_classes=num_classes, vocab_size=vocab_size, init=m.init,
        zero_bias=m.zero_bias, encoder_config=encoder_config, **m.params,
    )


def list_models() -> list[str]:
    """The names a config's ``model.name`` (or :func:`create_model`) takes, sorted: the built-in models
    and those registered so far (``deepworks models`` also loads installed packages' entry points).

    >>> "cnn" in list_models() and "lstm" in list_models()
    True
    """
    return MODELS.names()


def model_source(name: str) -> dict[str, Any] | None:
    """What a run records of a model from outside deepworks (import path or entry point): its name,
    origin, module, the module's file and the file's SHA-256; None for a built-in model."""
    entry = MODELS.entry(name, where="model.name")
    if entry.origin == "built-in":
        return None
    return external.source_record(name, entry.factory, entry.origin)


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) is Literal:
        return " | ".join(str(a) for a in annotation.__args__)
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(annotation))  # ConvBlock, not a.b.ConvBlock
    return "any" if text == "Any" else text


def _inputs(name: str, entry: Entry) -> str:
    flat, sequence = takes_flat_input(name), takes_sequence_input(name)
    if takes_text_input(name):
        return "token ids (texts)"
    if entry.origin != "built-in" and not (flat or sequence):
        return "any"
    if sequence:
        return "token ids, series windows" + (", feature vectors" if flat else "")
    return "images, feature vectors" if flat else "images"


def describe_model(name: str) -> dict[str, Any]:
    """One model as ``deepworks models NAME`` shows it: name, origin (built-in, an import path's module,
    a package's entry point), description, the inputs it reads, and its keys with type, default and
    description (read from its parameter schema)."""
    entry = MODELS.entry(name, where="deepworks models NAME")
    params = []
    for key, field in (entry.params.model_fields.items() if entry.params is not None else ()):
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        params.append({
            "name": field.alias or key, "type": _type_name(field.annotation), "required": required,
            "default": default, "description": field.description or "",
        })
    return {"name": name, "origin": entry.origin, "description": entry.description, "inputs": _inputs(name, entry),
            "params": params}


def describe_models() -> list[dict[str, Any]]:
    """Every model, built-in and registered by an installed package's entry point (all loaded; one that
    fails to load is a warning), as :func:`describe_model` describes it."""
    MODELS.load_entry_points(strict=False)
    return [describe_model(name) for name in MODELS.names()]
