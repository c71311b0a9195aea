"""One module per kind of data: image, table, text (token ids), embeddings (texts through a
sentence encoder) and series. Each prepares its data from a config (``prepare``) and turns a
trained run's raw inputs (files, in-memory values, HTTP requests) into model inputs (a
:class:`~deepworks.kinds.common.RunInputs`), including what an export puts in its graph and
sidecar. The kind is chosen once: from the config when training
(:func:`deepworks.config.data_kind`), from data.json's ``kind`` when a run is read
(:func:`kind_of_record`). GANs are a kind of run (:mod:`deepworks.generation`), not of data.

>>> from deepworks.config import load_config
>>> kind_of_config(load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn"}}))
'image'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from deepworks.config import (
    AUTO_MODEL, DATA_KINDS, FAMILY_TRAIN_DEFAULTS, FINE_TUNE_FROM, FROZEN_HEAD_TRAIN, Config, TransferConfig, data_kind,
    load_config,
)
from deepworks.errors import ConfigError, DataError
from deepworks.kinds import embeddings, image, series, subwords, table, text
from deepworks.kinds.common import Batch, PreparedData, RunInputs
from deepworks.models.cnn import global_pool_default
from deepworks.models.registry import model_from_config
from deepworks.training.tasks import Task
from deepworks.transfer import build as build_transfer

__all__ = [
    "Batch", "KIND_MODULES", "PreparedData", "RunInputs", "choose_model", "inputs_for_run", "kind_of_config",
    "kind_of_record", "new_model", "prepare_data",
]

KIND_MODULES: dict[str, ModuleType] = {
    "image": image, "table": table, "text": text, "embeddings": embeddings, "series": series, "subwords": subwords,
}
_INPUTS: dict[str, type[RunInputs]] = {
    "image": image.ImageInputs, "table": table.TableInputs, "text": text.TokenInputs,
    "embeddings": embeddings.EmbeddingInputs, "series": series.SeriesInputs, "subwords": subwords.SubwordInputs,
}
assert tuple(KIND_MODULES) == DATA_KINDS


def kind_of_config(config: Config) -> str:
    """The kind of data a config trains on (see :func:`deepworks.config.data_kind`)."""
    return data_kind(config.data, config.model)


def kind_of_record(info: dict[str, Any], where: str | Path = "data.json") -> str:
    """The kind of a trained run from its data.json. Runs written before data.json recorded the
    kind of every run (image runs had none; texts said ``text`` for both token ids and embeddings)
    are read by what they hold; this is the only place that looks."""
    kind = info.get("kind")
    source = (info.get("input") or {}).get("kind")
    if kind == "text" and source == "embeddings":
        return "embeddings"
    if kind in DATA_KINDS:
        return kind
    if kind is not None:
        raise DataError(f"{where}: kind {kind!r} is not a kind of data this deepworks reads ({', '.join(DATA_KINDS)}). "
                        "Fix: use the deepworks version that trained the run, or train it again.")
    if "text" in info:
        return "text"
    if "encoder" in info or len(info.get("input_shape") or []) == 1:
        return "table"
    if len(info.get("input_shape") or []) == 3:
        return "image"
    raise DataError(f"{where}: the record says neither the kind of data nor an input shape. Fix: train the run again.")


def prepare_data(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """Load the data, split it (seeded, stratified) and normalise it with training statistics only.

    ``fold=(k, i)``: the same test split, but training and validation are the rest of the
    non-test data and its ``i``-th of ``k`` cross-validation folds (``i`` None: all of it).
    """
    return KIND_MODULES[kind_of_config(config)].prepare(config, fold)


def inputs_for_run(run_dir: str | Path, info: dict[str, Any]) -> RunInputs:
    """The fitted input path of a trained run (its data.json ``info``)."""
    return _INPUTS[kind_of_record(info, Path(run_dir) / "data.json")](Path(run_dir), info)


def choose_model(cfg: Config, input_shape: Sequence[int], log: bool = False, train_size: int | None = None) -> Config:
    """The config with the keys its data settles written in, so that the run's config.yaml
    records the model it trains (and training again from it builds the same one):

    * no model named (``model.name: auto``): images get :func:`deepworks.kinds.image.default_model`
      for their size, with the transfer section it needs when the config has none; with ``log``,
      one line says which and why;
    * a ``cnn`` without ``global_pool``: the value its input size gives (on over 64 px);
    * ``transfer.mode: auto`` (a text run that names no model, when a pretrained encoder is
      installed): fine_tune from :data:`~deepworks.config.FINE_TUNE_FROM` training samples
      (``train_size``), feature_extraction below; with ``log``, one line says which and why.
    """
    shape = tuple(int(s) for s in input_shape)
    if cfg.transfer is not None and cfg.transfer.mode == "auto" and train_size is not None:
        cfg = _settle_transfer_mode(cfg, int(train_size), log)
    if cfg.model.chosen_from_data:
        if len(shape) != 3:
            raise ConfigError(
                f"model.name: {AUTO_MODEL} chooses a model for images; this data is shaped {shape}. Fix: name the "
                "model (mlp for tables and sentence embeddings; rnn, lstm or gru for token ids and series)."
            )
        model, transfer, why = image.default_model(shape)
        overrides: dict[str, Any] = {"model": {"init": cfg.model.init, "zero_bias": cfg.model.zero_bias, **model}}
        if transfer is not None and cfg.transfer is None:
            overrides["transfer"] = transfer
        cfg = load_config(cfg, overrides)
        if log:
            print(f"model: {why}; name a model to choose another", flush=True)
    if cfg.model.name == "cnn" and cfg.model.params.get("global_pool") is None and len(shape) == 3:
        cfg = load_config(cfg, {"model.global_pool": global_pool_default(shape)})
    return cfg


def new_model(cfg: Config, input_shape: Sequence[int], task: Task, info: dict[str, Any], load: bool = True) -> nn.Module:
    """The config's model for this data: a text run's vocabulary size (and a pretrained text
    encoder's recorded architecture) from ``info["input"]``, a
    differenced series wrapped to see windows relative to their last value, a table's network
    behind the :class:`~deepworks.kinds.table.TableInput` that expands its slots. Starting weights
    (model.pretrained, model.weights, transfer.from) are loaded unless ``load`` is false (a
    finished run has its own). A config that names no model gets the one :func:`choose_model`
    chooses for ``input_shape``."""
    cfg = choose_model(cfg, input_shape)
    source = info.get("input") or {}
    kind = kind_of_record(info)
    if kind == "table":  # the network reads the features its TableInput expands the slots into
        input_shape = table.net_input_shape(input_shape, info)
    model = model_from_config(cfg.model, input_shape, task.output_size(), vocab_size=source.get("vocab_size"),
                              encoder_config=source.get("config"))
    if kind == "series":
        model = series.wrap_model(model, info)
    elif kind == "table":
        model = table.wrap_model(model, info)
    return build_transfer(model, cfg, info, load=load)


def _settle_transfer_mode(cfg: Config, train_size: int, log: bool) -> Config:
    """transfer.mode: auto made fine_tune or feature_extraction by the size of the training split."""
    fine = train_size >= FINE_TUNE_FROM
    transfer = cfg.transfer.model_dump(mode="json", by_alias=True)
    if fine:
        transfer["mode"] = "fine_tune"
    else:  # the fine-tuning keys have nothing to say about a frozen body
        fields = TransferConfig.model_fields
        transfer.update({k: fields[k].default for k in ("unfreeze", "warmup_epochs", "backbone_lr_scale", "layer_decay")},
                        mode="feature_extraction")
    overrides: dict[str, Any] = {"transfer": transfer}
    family = FAMILY_TRAIN_DEFAULTS.get(cfg.model.name, {})
    head = ""
    if not fine and family:  # the fine-tuning defaults left as they were: the frozen head's instead
        if cfg.train.epochs == family.get("epochs"):
            overrides["train.epochs"] = FROZEN_HEAD_TRAIN["epochs"]
        if cfg.train.optimizer.params.get("lr") == family.get("optimizer", {}).get("lr"):
            overrides["train.optimizer.lr"] = FROZEN_HEAD_TRAIN["lr"]
        if len(overrides) > 1:
            head = f" (the head alone learns: {', '.join(f'{k} {v:g}' for k, v in overrides.items() if k != 'transfer')})"
    cfg = load_config(cfg, overrides)
    if log:
        what = str(cfg.model.params.get("encoder") or cfg.model.name)
        how = "fine-tuned end to end" if fine else "read as frozen features under a new head"
        print(f"model: {what} {how}: {train_size:,} training samples, {'at least' if fine else 'fewer than'} "
              f"{FINE_TUNE_FROM:,} (transfer.mode: auto){head}; set transfer.mode to choose", flush=True)
    return cfg
