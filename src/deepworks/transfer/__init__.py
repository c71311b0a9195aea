"""Transfer learning: start from pretrained weights or an earlier run, then extract features or fine-tune.

The config keys: ``model.pretrained`` / ``model.weights`` (:mod:`.weights`), and the ``transfer``
section (:mod:`.finetune`): ``mode``, ``unfreeze``, ``warmup_epochs``, ``backbone_lr_scale``,
``cache`` and ``from``. :func:`build` turns a freshly built model into the one a run trains.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from deepworks.config import Config, load_config, load_run_config
from deepworks.errors import CheckpointError, ConfigError
from deepworks.runs import RunDir, existing_run
from deepworks.runtime import distributed_context
from deepworks.transfer.finetune import CachedFeatures, Transfer, TransferStages, body_blocks, cache_features
from deepworks.transfer.weights import fit_state_dict, load_weights, read_weights_file, sha256_file

__all__ = [
    "build", "adopt_source", "check_transfer", "Transfer", "TransferStages", "CachedFeatures", "cache_features",
    "body_blocks", "load_weights", "read_weights_file", "fit_state_dict",
]


def adopt_source(cfg: Config) -> Config:
    """``transfer.from: RUN_DIR``: the new run's model section is the source run's (recorded in
    the new config.yaml, so the run can be opened without the source)."""
    t = cfg.transfer
    if t is None or t.from_run is None:
        return cfg
    run = _source_run(t.from_run)
    source = load_run_config(run.config)
    if cfg.model.name != source.model.name and "model" in cfg.model_fields_set and not cfg.model.chosen_from_data:
        raise ConfigError(
            f"transfer.from: {run.path} trained a {source.model.name}, but model.name is {cfg.model.name}. Fix: "
            "remove the model section (the source run's model is used), or start from a run of that model."
        )
    model = source.model.model_dump(mode="json", by_alias=True)
    model.update(pretrained=False, weights=None)  # the weights come from the source run
    return load_config(cfg, {"model": model})


def build(model: nn.Module, cfg: Config, info: dict[str, Any], load: bool = True) -> nn.Module:
    """The model a run trains: ``model`` with its starting weights loaded (``load``; a run being
    reopened has them in its own files) and, with a ``transfer`` section, wrapped in
    :class:`Transfer`. The origin of the weights is kept on the returned model as ``origin``."""
    t = cfg.transfer
    params = cfg.model.params
    origin = None
    pretrained_encoder = getattr(model, "load_pretrained", None)  # a text transformer: model.encoder's weights
    if pretrained_encoder is not None and (cfg.model.pretrained or cfg.model.weights is not None):
        key = "model.pretrained" if cfg.model.pretrained else "model.weights"
        raise ConfigError(f"{key}: model.name: {cfg.model.name} always starts from the weights of model.encoder. Fix: "
                          f"remove {key}, and point model.encoder at the model folder to start from.")
    if load and pretrained_encoder is not None:
        origin = pretrained_encoder()
    elif load:
        origin = load_weights(model, cfg.model.pretrained, cfg.model.weights, info.get("mean"), info.get("std"),
                              mean=params.get("mean"), std=params.get("std"), name=cfg.model.name)
    source_norm = None
    if t is not None and t.from_run is not None:
        if len(info.get("input_shape") or ()) != 3:
            raise ConfigError("transfer.from: starting from an earlier run works for image data; this data is not "
                              "images. Fix: remove transfer.from.")
        if load:
            origin, source_norm = _load_from_run(model, t.from_run, info)
    if t is None:
        if origin is not None:
            model.origin = origin
        return model
    if t.mode == "feature_extraction":
        defaults = {k: f.default for k, f in type(t).model_fields.items()}
        changed = [k for k in ("unfreeze", "warmup_epochs", "backbone_lr_scale", "layer_decay")
                   if getattr(t, k) != defaults[k]]
        if changed:
            raise ConfigError(
                f"transfer.{changed[0]}: a fine-tuning key, but transfer.mode is feature_extraction (the body never "
                "learns). Fix: remove it, or transfer.mode: fine_tune."
            )
    if t.mode == "fine_tune" and t.warmup_epochs and distributed_context().enabled:
        raise ConfigError(
            "transfer.warmup_epochs: under torchrun the body's parameters must learn from the first step (the "
            "distributed wrapper only synchronises gradients of parameters that learn when it is built). Fix: "
            "transfer.warmup_epochs: 0, or one process."
        )
    channels = int(info["input_shape"][0]) if len(info.get("input_shape") or ()) == 3 else None
    mode = "fine_tune" if t.mode == "auto" else t.mode  # auto is settled once the data is read; before, it counts as the larger
    wrapped = Transfer(model, mode, t.unfreeze, t.warmup_epochs, t.backbone_lr_scale, channels=channels,
                       layer_decay=t.layer_decay)
    if source_norm is not None:
        wrapped.input.set_normalisation(info["mean"], info["std"], *source_norm)
    if origin is None and load and t.from_run is None and not cfg.model.pretrained and cfg.model.weights is None:
        raise ConfigError(
            f"transfer.mode: {t.mode} starts from trained weights, but none are given. Fix: model.pretrained: true "
            "(a backbone), model.weights: PATH, or transfer.from: RUN_DIR."
        )
    wrapped.origin = origin
    return wrapped


def _load_from_run(model: nn.Module, run_dir: str, info: dict[str, Any]) -> tuple[dict[str, Any], tuple[list, list]]:
    """The source run's best weights into ``model`` (the head only when the classes are the same)."""
    run = _source_run(run_dir)
    source_info = run.read_json(run.data)
    if list(source_info.get("input_shape") or []) != list(info["input_shape"]):
        raise ConfigError(
            f"transfer.from: {run.path} was trained on inputs shaped {tuple(source_info.get('input_shape') or ())}, "
            f"this data is {tuple(info['input_shape'])}. Fix: data.image_size and data.channels as in the source run."
        )
    if not run.best.exists():
        raise ConfigError(f"transfer.from: {run.path} has no trained model yet ({run.best.name} is missing). Fix: let "
                          "it finish an epoch, or resume it first.")
    state = read_weights_file(run.best, "transfer.from")
    if state and all(k.startswith("model.") or k.startswith("input.") for k in state):  # itself a transfer run
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    same_classes = list(source_info.get("classes") or []) == list(info.get("classes") or [])
    # other classes (even as many): a new head, since the old one's outputs mean other things
    fitted = fit_state_dict(model, state, "transfer.from", keep_head=same_classes)
    if not same_classes:
        fitted["head"] = f"new ({len(source_info.get('classes') or [])} source classes -> {len(info.get('classes') or [])})"
    origin = {"source": "run", "run": str(run.path.resolve()), "file": str(run.best.resolve()),
              "sha256": sha256_file(run.best), "classes": list(source_info.get("classes") or []), **fitted}
    return origin, (source_info.get("mean") or [0.0], source_info.get("std") or [1.0])


def _source_run(path: str) -> RunDir:
    try:
        return existing_run(path)
    except CheckpointError as exc:
        raise ConfigError(f"transfer.from: {exc} Fix: the directory of a deepworks run (runs/NAME-TIME).") from None


def check_transfer(cfg: Config, augment: Any) -> None:
    """Refuse what cached features cannot hold, before any work."""
    t = cfg.transfer
    if t is None or t.mode != "feature_extraction" or not t.cache:
        return
    if augment is not None:
        raise ConfigError(
            "data.augment: with transfer.mode: feature_extraction the body's features are computed once "
            "(transfer.cache), so augmented images would never reach it. Fix: remove data.augment, or "
            "transfer.cache: false (the frozen body runs on every augmented batch)."
        )
    if cfg.train.tta != "none":
        raise ConfigError(
            f"train.tta: {cfg.train.tta} flips images, but the head reads cached features. Fix: train.tta: none, or "
            "transfer.cache: false."
        )
