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

from deepworks.config import DATA_KINDS, Config, data_kind
from deepworks.errors import DataError
from deepworks.kinds import embeddings, image, series, table, text
from deepworks.kinds.common import Batch, PreparedData, RunInputs
from deepworks.models.registry import model_from_config
from deepworks.train.tasks import Task
from deepworks.transfer import build as build_transfer

__all__ = [
    "Batch", "KIND_MODULES", "PreparedData", "RunInputs", "inputs_for_run", "kind_of_config", "kind_of_record",
    "new_model", "prepare_data",
]

KIND_MODULES: dict[str, ModuleType] = {
    "image": image, "table": table, "text": text, "embeddings": embeddings, "series": series,
}
_INPUTS: dict[str, type[RunInputs]] = {
    "image": image.ImageInputs, "table": table.TableInputs, "text": text.TokenInputs,
    "embeddings": embeddings.EmbeddingInputs, "series": series.SeriesInputs,
}
assert tuple(KIND_MODULES) == DATA_KINDS


def kind_of_config(config: Config) -> str:
    """The kind of data a config trains on (see :func:`deepworks.config.data_kind`)."""
    return data_kind(config.data)


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


def new_model(cfg: Config, input_shape: Sequence[int], task: Task, info: dict[str, Any], load: bool = True) -> nn.Module:
    """The config's model for this data: a text run's vocabulary size from ``info["input"]``, a
    differenced series wrapped to see windows relative to their last value, a table's network
    behind the :class:`~deepworks.kinds.table.TableInput` that expands its slots. Starting weights
    (model.pretrained, model.weights, transfer.from) are loaded unless ``load`` is false (a
    finished run has its own)."""
    source = info.get("input") or {}
    kind = kind_of_record(info)
    if kind == "table":  # the network reads the features its TableInput expands the slots into
        input_shape = table.net_input_shape(input_shape, info)
    model = model_from_config(cfg.model, input_shape, task.output_size(), vocab_size=source.get("vocab_size"))
    if kind == "series":
        model = series.wrap_model(model, info)
    elif kind == "table":
        model = table.wrap_model(model, info)
    return build_transfer(model, cfg, info, load=load)
