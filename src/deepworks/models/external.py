"""Models from outside deepworks: named by import path, or registered by an installed package.

A config may name any function or ``nn.Module`` class by its import path,
``model: {name: "package.module:factory", width: 64}``. It is called like a built-in model's
factory, ``factory(input_shape, num_classes, **keys)`` (``num_classes`` is the number of outputs:
classes, or targets of a regression), and its keyword parameters are the config's keys, checked
against its signature (type hints and defaults included) as a built-in model's keys are checked
against its schema.

A package can also add models under names of their own through the ``deepworks.models`` entry
point group: each entry point's name is a model name, its object a factory (registered under that
name) or a module that registers models with ``MODELS.register`` when imported. They are loaded
the first time a name is not built in, and all of them by ``deepworks models``.

A run whose model comes from outside records where it came from (``model_source`` in data.json:
the name, the module, its file and the file's SHA-256); loading the run later imports the same
name and warns when the file has changed since (:func:`run_config`).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

from deepworks.config import Config, load_run_config
from deepworks.errors import ModelImportError, UnknownNameError, close_matches
from deepworks.runs import RunDir, existing_run, file_sha256

__all__ = [
    "ENTRY_POINT_GROUP", "ModelSourceWarning", "entry_points", "import_factory", "is_import_path",
    "params_schema", "run_config", "source_record", "takes_keyword",
]

ENTRY_POINT_GROUP = "deepworks.models"

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FACTORY = "a function or an nn.Module class called as factory(input_shape, num_classes, **keys)"


class ModelSourceWarning(UserWarning):
    """The module a run's model came from has changed since the run was trained."""


def is_import_path(name: Any) -> bool:
    """Whether ``name`` is an import path (``package.module:factory``) rather than a registered name."""
    return isinstance(name, str) and ":" in name


def import_factory(name: str) -> Callable[..., Any]:
    """The factory an import path ``package.module:factory`` names (``factory`` may be dotted:
    ``module:Class.build``); a :class:`ModelImportError` when it cannot be imported or is not a
    model factory."""
    module_name, _, attr = name.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise ModelImportError(name, f"{name!r} is not an import path: expected 'package.module:factory'",
                               "write the module's dotted name, a colon and the function or class, e.g. "
                               "mymodels.nets:SmallNet")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ModelImportError(
                name, f"cannot import {module_name!r} (no module named {missing!r})",
                f"install the package that provides it, or put the folder that holds {missing.split('.')[0]} "
                "on PYTHONPATH",
            ) from None
        raise ModelImportError(name, f"importing {module_name!r} failed: it needs {missing!r}, which is not installed",
                               f"install {missing.split('.')[0]}") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ModelImportError(name, f"importing {module_name!r} failed ({type(exc).__name__}: {exc})",
                               f"run `python -c 'import {module_name}'` and fix the module") from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name] + attr.split(".")[:i])
            hint = close_matches(part, [n for n in dir(obj) if not n.startswith("_")])
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ModelImportError(name, f"{owner} has no attribute {part!r}{also}",
                                   f"name a function or nn.Module class defined in {owner}")
        obj = getattr(obj, part)
    check_factory(name, obj)
    return obj


def check_factory(name: str, obj: Any) -> None:
    """A :class:`ModelImportError` unless ``obj`` can be a model factory: a callable (a class must be
    an ``nn.Module``) that takes the input shape and the number of outputs as its first two arguments."""
    if not callable(obj) or (inspect.isclass(obj) and not issubclass(obj, nn.Module)):
        what = f"the class {obj.__name__}" if inspect.isclass(obj) else f"{_a(type(obj).__name__)}"
        raise ModelImportError(name, f"{name!r} is {what}, not a model: expected {_FACTORY}",
                               "name a function that returns an nn.Module, or an nn.Module class")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: accept it and let the call judge
        return
    kinds = [p.kind for p in sig.parameters.values()]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    if positional < 2 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise ModelImportError(name, f"{name!r} takes {sig}, not (input_shape, num_classes, ...): expected {_FACTORY}",
                               "make its first two parameters input_shape and num_classes")


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _own_parameters(factory: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool]:
    """The factory's keyword parameters after input shape and class count, and whether it takes **kwargs."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return [], True
    rest, skipped = [], 0
    for p in params:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and skipped < 2:
            skipped += 1
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            rest.append(p)
    return rest, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def takes_keyword(factory: Callable[..., Any], key: str) -> bool:
    """Whether ``factory`` takes the keyword ``key`` (by name or through **kwargs)."""
    own, open_ended = _own_parameters(factory)
    return open_ended or any(p.name == key for p in own)


def _docstring_descriptions(factory: Callable[..., Any]) -> dict[str, str]:
    """``name: text`` (or ``name (type): text``) lines of the factory's docstring, by parameter name."""
    docs = [inspect.getdoc(factory) or ""]
    if inspect.isclass(factory):
        docs.append(inspect.getdoc(factory.__init__) or "")
    found: dict[str, str] = {}
    for line in "\n".join(docs).splitlines():
        m = re.match(r"\s*\**(\w+)\**\s*(?:\([^)]*\))?\s*:\s*(\S.*)$", line)
        if m:
            found.setdefault(m.group(1), m.group(2).strip())
    return found


def params_schema(factory: Callable[..., Any], name: str) -> type[BaseModel]:
    """A pydantic model of the factory's own keyword parameters (after input shape and class count;
    ``vocab_size`` comes from the data, not the config): types from its annotations, defaults from its
    signature, descriptions from ``name: text`` lines of its docstring. Unknown keys are refused
    unless the factory takes ``**kwargs``."""
    own, open_ended = _own_parameters(factory)
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # an annotation that cannot be resolved: the key takes any value
        hints = {}
    described = _docstring_descriptions(factory)
    config = ConfigDict(extra="allow" if open_ended else "forbid", arbitrary_types_allowed=True)

    def fields(typed: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in own:
            if p.name == "vocab_size":
                continue
            default = ... if p.default is inspect.Parameter.empty else p.default
            out[p.name] = (hints.get(p.name, Any) if typed else Any, Field(default, description=described.get(p.name)))
        return out

    label = f"model {name}"
    try:
        return create_model(label, __config__=config, **fields(True))
    except Exception:  # a type pydantic cannot check: the keys are still checked by name
        return create_model(label, __config__=config, **fields(False))


def factory_description(factory: Callable[..., Any]) -> str:
    return (inspect.getdoc(factory) or "").strip().split("\n")[0]


def entry_points() -> list[md.EntryPoint]:
    """The installed ``deepworks.models`` entry points (read from package metadata, nothing imported)."""
    return sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def entry_point_label(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    package = f" of package {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{package}"



def source_record(name: str, factory: Callable[..., Any], origin: str) -> dict[str, Any]:
    """Where a model from outside deepworks comes from, as a run records it: its name, origin,
    module, the module's file and the file's SHA-256 (no file: a module without one)."""
    module_name = getattr(factory, "__module__", None) or ""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    record: dict[str, Any] = {"name": name, "origin": origin, "module": module_name, "file": None, "sha256": None}
    if file and Path(file).is_file():
        record["file"] = str(Path(file).resolve())
        record["sha256"] = file_sha256(file)
    return record


def run_config(run_dir: str | Path) -> Config:
    """A run's config.yaml, loaded with its model from where the run was trained: a model named by
    import path or by an entry point that can no longer be imported is refused naming the run, and a
    module whose file differs from the one the run recorded is a :class:`ModelSourceWarning`."""
    run = existing_run(run_dir)
    try:
        recorded = (run.read_json(run.data) if run.data.exists() else {}).get("model_source")
    except Exception:  # an unreadable data.json is reported by whoever reads it next
        recorded = None
    try:
        cfg = load_run_config(run.config)  # as recorded: keys whose defaults changed read as the run used them
    except ModelImportError as exc:
        if recorded and recorded.get("file"):
            exc = ModelImportError(exc.name, exc.problem, f"{exc.fix} (the run was trained with {recorded['file']})")
        raise exc.at(f"model {exc.name!r} of run {run.path}") from None
    except UnknownNameError as exc:
        if recorded and exc.kind == "model" and exc.name == recorded.get("name"):
            raise ModelImportError(
                exc.name, f"no installed package registers it (the run was trained with {recorded.get('origin')})",
                f"install that package again, or put {recorded.get('module')} on PYTHONPATH",
                where=f"model {exc.name!r} of run {run.path}",
            ) from None
        raise
    if recorded and recorded.get("sha256"):
        _check_source(RunDir(run.path), recorded)
    return cfg


def _check_source(run: RunDir, recorded: dict[str, Any]) -> None:
    module = sys.modules.get(recorded.get("module") or "")
    file = getattr(module, "__file__", None)
    if not file or not Path(file).is_file():
        return
    now = file_sha256(file)
    if now != recorded["sha256"]:
        warnings.warn(
            f"model {recorded['name']!r} of run {run.path}: {file} has changed since the run was trained "
            f"(SHA-256 {now[:12]}..., recorded {recorded['sha256'][:12]}... of {recorded.get('file')}); the weights "
            "load only if the layers are the same, and the figures may differ. Fix: use the module the run was "
            "trained with, or train again.",
            ModelSourceWarning, stacklevel=3,
        )
