"""From a config to a trained, evaluated run, and back from a run directory.

These are the functions the command line calls::

    run = deepworks.train("examples/configs/quickstart.yaml", train__epochs=5)
    run.summary["test"]["accuracy"]
    deepworks.evaluate(run.dir, split="val")
    deepworks.predict(run.dir, ["shoe.png"], top_k=3)
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import SERIES_DATASETS, Config, dump_config, load_config, parse_overrides
from deepworks.data import ImageDataset, build_augment, normalize
from deepworks.data.datasets import is_text_dataset, load_from_config
from deepworks.data.folders import FolderStream, StreamedImages, pixel_stats
from deepworks.data.images import ImageSpec, load_pixels
from deepworks.data.loaders import TensorData, ToInput, balanced_weights
from deepworks.data.features import TableEncoder
from deepworks.data.series import (
    DEFAULT_LOOKBACK, ChangeFromLast, Series, TimeStep, fit_scaling, last_value, make_windows, read_series,
    seasonal_naive, series_from_columns, split_periods, stamp_text, window_origins,
)
from deepworks.data.leakage import apply_policy, find_duplicates, one_to_one_columns, sample_hashes
from deepworks.data.splits import apply_subset, dataset_split_indices, kfold_indices, split_indices, take_splits
from deepworks.data.tabular import Table, load_table, read_feature_rows, read_table, table_target
from deepworks.data.text import TextEncoder, load_text_from_config, read_text_inputs
from deepworks.errors import CheckpointError, ConfigError, DataError, TrainingError
from deepworks.evaluate.baselines import tabular_baselines, text_baselines
from deepworks.evaluate.diagnosis import diagnose, render_diagnosis
from deepworks.evaluate.forecasting import forecast_scores
from deepworks.evaluate.predictions import confidently_wrong, display_pixels, save_predictions
from deepworks.models.gan import is_adversarial
from deepworks.models.registry import model_from_config
from deepworks.runs import RunDir, atomic_write, existing_run, new_run_dir
from deepworks.runtime import barrier, broadcast_object, distributed_context
from deepworks.train import Callback, Trainer, load_model_weights
from deepworks.train.memory import check_batch_memory, counting_batch
from deepworks.train.step import with_tta
from deepworks.train.tasks import Classification, Forecasting, Regression, Task, task_from_record
from deepworks.train.tensorboard import summary_writer_class
from deepworks.transfer import Transfer, TransferStages, adopt_source, cache_features, check_transfer
from deepworks.transfer import build as build_transfer

__all__ = [
    "Run", "PreparedData", "prepare_data", "train", "cross_validate", "resume", "evaluate", "predict", "load_run",
    "lr_find",
]


@dataclass
class PreparedData:
    """The three splits, normalised with training statistics, and what predict needs later."""

    train: TensorData | StreamedImages
    val: TensorData | StreamedImages
    test: TensorData | StreamedImages
    classes: list[str]  # class names; empty for regression
    input_shape: tuple[int, ...]  # (C, H, W) images, (F,) features or sentence embeddings, or (L,) token ids
    info: dict[str, Any]
    task: Task = field(default_factory=Classification)
    # a series: per split, the window origins ("origin", steps of the series), and the baselines'
    # forecasts and the actual values in the targets' units ("last_value", "seasonal_naive", "actual")
    forecasts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    raw: dict[str, list[str]] | None = None  # text: each split's raw strings (for the TF-IDF baseline)


@dataclass
class Run:
    """A run directory with its config, model (best weights) and results."""

    dir: Path
    config: Config
    model: nn.Module
    classes: list[str]  # class names; empty for regression
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    task: Task = field(default_factory=Classification)


def prepare_data(config: Config, fold: tuple[int, int] | None = None) -> PreparedData:
    """Load the data, split it (seeded, stratified) and normalise it with training statistics only.

    ``fold=(k, i)``: the same test split, but training and validation are the rest of the
    non-test data and its ``i``-th of ``k`` cross-validation folds.
    """
    d = config.data
    if d.text is not None or is_text_dataset(d.dataset):
        return _prepare_text(config, fold)
    if d.encoder is not None:
        raise ConfigError(
            f"data.encoder ({d.encoder!r}) embeds texts, but this data is not text. Fix: name the text column of a CSV "
            "file (data.path, data.text) or a built-in text dataset (data.dataset: rotten-tomatoes), or remove data.encoder."
        )
    if d.time is not None or d.dataset in SERIES_DATASETS:
        return _prepare_series(config, fold)
    if d.path is not None and (d.dataset == "csv" or _is_table_path(d.path)):
        return _prepare_table(config, fold)
    ds = load_from_config(d)  # uint8 images in memory (ImageDataset) or a folder streamed from disk (FolderStream)
    official = ds.has_official_test
    seed = _data_seed(config)
    # positions first, samples copied once: after folds, the subset and dropped duplicates
    idx = dataset_split_indices(ds, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=seed)
    if fold is not None:
        idx.update(_apply_fold(idx, ds.y.numpy(), fold, True, None, seed, ds.name))
    idx, classes, remap = apply_subset(
        idx, ds.y.numpy(), d.subset, ds.classes, test_labels=ds.test_y.numpy() if official else None,
        where=f"dataset {ds.name!r}",
    )
    duplicates = _image_duplicates(ds, idx, official, d.on_duplicates)
    channels, height, width = ds.input_shape
    if d.normalize:  # training split only: no leakage from val/test
        sums, sqs = ds.pixel_sums()
        rows = torch.from_numpy(idx["train"])
        mean, std = pixel_stats(sums[rows], sqs[rows], height * width, ds.scale)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    to_input = ToInput(ds.scale, mean, std)  # uint8 -> normalised float, a batch at a time on the device
    new_label = torch.from_numpy(remap)  # the kept classes' labels 0..k-1 (the identity without data.subset)
    parts = ds.take(idx, to_input, new_label) if isinstance(ds, FolderStream) else {
        name: TensorData(x, new_label[y], transform=to_input) for name, (x, y) in take_splits(ds, idx).items()
    }
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(idx[name], dtype=np.int64).tobytes())
    for name in ("train", "val", "test"):
        digest.update(parts[name].y.numpy().astype(np.int64).tobytes())
    spec = ds.spec or ImageSpec(channels, (height, width))
    info = {
        "dataset": ds.name,
        "source": ds.source,
        "classes": classes,
        "input_shape": list(ds.input_shape),
        "features": ds.features,
        "mean": mean,
        "std": std,
        "image": spec.to_dict(),  # how predict turns a file into these pixels
        "pixels": {"dtype": "uint8", "scale": ds.scale},
        "loading": ds.loading or {"path": "memory", "estimate_bytes": int(ds.x.numel() + (0 if ds.test_x is None else ds.test_x.numel()))},
        "sizes": {name: len(parts[name]) for name in ("train", "val", "test")},
        "class_counts": _class_counts({name: parts[name].y for name in ("train", "val", "test")}, len(classes)),
        "official_test": official,
        "split_fingerprint": digest.hexdigest(),
        "duplicates": duplicates,
        **_subset_record(config, classes),
    }
    task = Classification(classes)
    info["task"] = task.record()
    return PreparedData(parts["train"], parts["val"], parts["test"], classes, ds.input_shape, info, task)


def _data_seed(config: Config) -> int:
    """The seed of the splits and folds: data.subset.seed with a subset (its samples then do not
    depend on the run's seed), else the run's seed."""
    return config.data.subset.seed if config.data.subset is not None else config.seed


def _subset_record(config: Config, classes: list[str]) -> dict[str, Any]:
    """data.json's ``subset``: what data.subset kept (nothing without one)."""
    sub = config.data.subset
    if sub is None:
        return {}
    return {"subset": {"classes": classes if sub.classes is not None else None,
                       "train_per_class": sub.train_per_class, "val_per_class": sub.val_per_class, "seed": sub.seed}}


def _new_model(
    cfg: Config, input_shape: Sequence[int], task: Task, info: dict[str, Any], load: bool = True
) -> nn.Module:
    """The config's model for this data: ``info["input"]`` tells token ids (text, with the
    vocabulary's size) from other inputs. Starting weights (model.pretrained, model.weights,
    transfer.from) are loaded unless ``load`` is false (a finished run has its own)."""
    source = info.get("input") or {}
    model = model_from_config(cfg.model, input_shape, task.output_size(), vocab_size=source.get("vocab_size"))
    if source.get("kind") == "series" and source.get("difference"):  # windows relative to their last value
        model = ChangeFromLast(model, len(source["targets"]), int(source["horizon"]), source["gain"])
    return build_transfer(model, cfg, info, load=load)


def _class_counts(ys: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """Samples per class in each split (for the report's data section)."""
    return {name: torch.bincount(y.long().cpu().flatten(), minlength=k).tolist() for name, y in ys.items()}


def _is_table_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".parquet", ".pq")


def _image_duplicates(ds: ImageDataset | FolderStream, idx: dict[str, np.ndarray], official: bool, policy: str) -> dict[str, Any]:
    """Find exact duplicate images (decoded pixels) within and across splits; drop, keep or refuse
    the val/test ones that also occur in training (``idx`` is updated in place)."""
    if official:  # hash training and official test images together; test positions follow the training ones
        hashes = np.concatenate([ds.sample_hashes(), sample_hashes(ds.test_x)])
        offset = {"train": 0, "val": 0, "test": len(ds.y)}
    else:
        hashes, offset = ds.sample_hashes(), {"train": 0, "val": 0, "test": 0}
    shifted = {name: idx[name] + offset[name] for name in ("train", "val", "test")}
    report = find_duplicates(hashes, shifted)
    kept = apply_policy(report, shifted, policy, what=f"dataset {ds.name!r}")
    idx.update({name: kept[name] - offset[name] for name in ("train", "val", "test")})
    return report.to_dict(policy)


def _apply_fold(
    idx: dict[str, np.ndarray], y: np.ndarray, fold: tuple[int, int], stratify: bool, groups: np.ndarray | None,
    seed: int, what: str,
) -> dict[str, np.ndarray]:
    """Train/val indices of fold ``i`` of ``k`` over the non-test rows (train + val)."""
    k, i = fold
    rest = np.sort(np.concatenate([idx["train"], idx["val"]]))
    if i is None:  # the final model of a cross-validation: all non-test data, no validation
        return {"train": rest, "val": rest[:0]}
    folds = kfold_indices(y[rest], k, stratify=stratify, groups=groups[rest] if groups is not None else None,
                          seed=seed, what=what)
    tr, va = folds[i]
    return {"train": rest[tr], "val": rest[va]}


def _prepare_table(config: Config, fold: tuple[int, int] | None = None) -> PreparedData:
    """A table: raw cells -> split -> encoder fitted on the training rows -> (N, F) features.

    Classification targets are class indices; regression targets are standardised with the
    training split's mean and std (the task un-scales predictions).
    """
    d = config.data
    table = load_table(d.path, d.target, features=d.features, group_by=d.group_by)
    y, classes, task_name = table_target(table, d.task)
    where = str(table.path)
    if d.subset is not None and task_name == "regression":
        raise ConfigError(
            f"data.subset: {where} has a numeric target {table.target_name!r} (a regression run), but a subset keeps "
            "classes and samples per class. Fix: remove data.subset, or set data.task: classification."
        )
    groups = np.asarray(table.groups) if table.groups else None
    seed = _data_seed(config)
    idx = split_indices(
        y, stratify=task_name == "classification", groups=groups,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=seed, what=where,
    )
    if fold is not None:
        idx.update(_apply_fold(idx, y, fold, task_name == "classification", groups, seed, where))
    if d.subset is not None:
        idx, classes, remap = apply_subset(idx, y, d.subset, classes, where=where)
        y = remap[y]  # the kept classes' labels 0..k-1; the rows left out are indexed no more
    # exact duplicate rows (the parsed input cells) within and across splits
    keyed = np.array(["\x1f".join(cells) for cells in zip(*table.columns.values())]).reshape(-1, 1)
    duplicates = find_duplicates(sample_hashes(keyed), idx)
    idx = apply_policy(duplicates, idx, d.on_duplicates, what=where)
    giveaway = one_to_one_columns(
        {name: np.asarray(cells, dtype=object)[idx["train"]] for name, cells in table.columns.items()}, y[idx["train"]]
    )
    if giveaway:
        raise DataError(
            f"{where}: column(s) {', '.join(map(repr, giveaway))} determine the target {table.target_name!r} one to one "
            "on the training split (the target under another name or coding?), so the figures would be meaningless. "
            f"Fix: leave them out with data.features, or declare them data.columns.<name>.kind: ignore."
        )
    train_cells = table.rows(idx["train"])
    train_lines = [table.lines[i] for i in idx["train"]]
    declared = {name: col.model_dump(exclude_none=True) for name, col in d.columns.items()}
    unknown = [name for name in declared if name not in table.columns]
    if unknown:
        raise DataError(
            f"{where}: data.columns names column(s) {', '.join(map(repr, unknown))} that are not input columns. "
            f"Input columns: {', '.join(map(repr, table.columns))}."
        )
    encoder = TableEncoder.fit(train_cells, declared, scaling=d.scaling, lines=train_lines, where=where)
    xs = {
        name: torch.from_numpy(
            encoder.transform(table.rows(rows), lines=[table.lines[i] for i in rows], where=where)
        )
        for name, rows in idx.items()
    }
    if task_name == "regression":
        mean, std = float(y[idx["train"]].mean()), float(y[idx["train"]].std())
        std = std if std > 0 else 1.0
        task: Task = Regression([table.target_name], [mean], [std])
        ys = {name: torch.from_numpy(((y[rows] - mean) / std).astype(np.float32))[:, None] for name, rows in idx.items()}
    else:
        task = Classification(classes)
        ys = {name: torch.from_numpy(y[rows].astype(np.int64)) for name, rows in idx.items()}
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(idx[name], dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(y[idx[name]]).tobytes())
    info = {
        "dataset": "table",
        "source": str(table.path.resolve()),
        "kind": "table",
        "target": table.target_name,
        "classes": classes,
        "input_shape": [len(encoder.feature_names)],
        "features": encoder.inputs,
        "feature_names": encoder.feature_names,
        "feature_groups": encoder.groups,
        "encoder": encoder.to_dict(),
        "sizes": {name: len(rows) for name, rows in idx.items()},
        "class_counts": _class_counts(ys, len(classes)) if task_name == "classification" else None,
        "official_test": False,
        "split_fingerprint": digest.hexdigest(),
        "task": task.record(),
        "duplicates": duplicates.to_dict(d.on_duplicates),
        **_subset_record(config, classes),
    }
    return PreparedData(
        TensorData(xs["train"], ys["train"]), TensorData(xs["val"], ys["val"]), TensorData(xs["test"], ys["test"]),
        classes, (len(encoder.feature_names),), info, task,
    )


def _prepare_text(config: Config, fold: tuple[int, int] | None = None) -> PreparedData:
    """Texts: raw strings -> split -> tokenizer and vocabulary fitted on the training texts ->
    int64 token ids (N, max_length), right-padded with 0 (see :mod:`deepworks.data.text`); with
    ``data.encoder``, the same split read as float32 sentence embeddings (N, dim) instead."""
    d = config.data
    if d.task == "regression":
        raise ConfigError("data.task: regression is not available for text; texts are classified. "
                          "Fix: remove data.task (or set it to classification).")
    texts = load_text_from_config(d)
    where = texts.source
    # the labels as a table's target: the same class order and checks (at least 2 classes)
    target = Table(Path(where), {texts.text_column: texts.texts}, texts.target_name, texts.target, texts.lines)
    y, classes, _ = table_target(target, "classification")
    groups = np.asarray(texts.groups) if texts.groups else None
    seed = _data_seed(config)
    idx = split_indices(y, stratify=True, groups=groups, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, seed=seed, what=where)
    if fold is not None:
        idx.update(_apply_fold(idx, y, fold, True, groups, seed, where))
    if d.subset is not None:
        idx, classes, remap = apply_subset(idx, y, d.subset, classes, where=where)
        y = remap[y]  # the kept classes' labels 0..k-1; the texts left out are indexed no more
    # exact duplicate texts (as read: surrounding spaces stripped, case kept) within and across splits
    hashes = np.array([hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts.texts])
    duplicates = find_duplicates(hashes, idx)
    idx = apply_policy(duplicates, idx, d.on_duplicates, what=where)
    raw = {name: [texts.texts[i] for i in rows] for name, rows in idx.items()}
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(idx[name], dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(y[idx[name]]).tobytes())
        digest.update("".join(hashes[idx[name]]).encode())  # an edited text changes the data too
    ys = {name: torch.from_numpy(y[rows].astype(np.int64)) for name, rows in idx.items()}
    task = Classification(classes)
    info = {
        "dataset": texts.name,
        "source": where,
        "kind": "text",
        "text_column": texts.text_column,
        "target": texts.target_name,
        "classes": classes,
        "sizes": {name: len(rows) for name, rows in idx.items()},
        "class_counts": _class_counts(ys, len(classes)),
        "official_test": False,
        "split_fingerprint": digest.hexdigest(),
        "task": task.record(),
        "duplicates": duplicates.to_dict(d.on_duplicates),
        **_subset_record(config, classes),
    }
    if d.encoder is not None:
        return _embedded_text(config, texts.texts, idx, raw, ys, classes, info, task)
    encoder = TextEncoder.fit(raw["train"], tokenizer=d.tokenizer, lowercase=d.lowercase, min_freq=d.min_freq,
                              max_vocab=d.max_vocab, max_length=d.max_length)
    encoded = {name: encoder.encode(raw[name]) for name in ("train", "val", "test")}
    stats = {name: e.stats() for name, e in encoded.items()}
    cut = stats["train"]["truncated"]
    if cut:
        print(f"{where}: {cut} of {len(raw['train'])} training texts are longer than data.max_length = {d.max_length} "
              f"tokens and keep their first {d.max_length} (the longest has {stats['train']['length']['max']}; "
              f"95% have at most {stats['train']['length']['p95']:.0f}).", flush=True)
    info.update({
        "input_shape": [d.max_length],
        "input": {"kind": "tokens", "vocab_size": len(encoder.vocab), "pad_index": 0, "unk_index": 1},
        "text": encoder.to_dict(),  # tokenizer, settings and the vocabulary: predict encodes raw strings with it
        "tokens": stats,  # per split: texts, empty, truncated, unknown_rate, length statistics (before truncation)
    })
    parts = {name: TensorData(encoded[name].ids, ys[name]) for name in ("train", "val", "test")}
    return PreparedData(parts["train"], parts["val"], parts["test"], classes, (d.max_length,), info, task, raw=raw)


def _check_encoder_model(config: Config) -> None:
    """With ``data.encoder`` the model reads sentence embeddings (F,): a flat-input model."""
    from deepworks.models.registry import MODELS, takes_flat_input

    name = config.model.name
    if name in MODELS.names() and not takes_flat_input(name):
        flat = [n for n in MODELS.names() if takes_flat_input(n)]
        raise ConfigError(
            f"model.name: {name} cannot read sentence embeddings: data.encoder ({config.data.encoder}) turns each "
            f"text into one vector (F,). Fix: model.name: {' or '.join(flat)}, or remove data.encoder to train {name} "
            "on token ids."
        )


def _embedded_text(
    config: Config, all_texts: list[str], idx: dict[str, np.ndarray], raw: dict[str, list[str]],
    ys: dict[str, torch.Tensor], classes: list[str], info: dict[str, Any], task: Task,
) -> PreparedData:
    """Texts through a frozen sentence encoder (``data.encoder``): each split's inputs are float32
    embeddings (N, dim), encoded once for the whole file (and cached on disk, see
    :mod:`deepworks.data.encoders`); the model is a head on them."""
    from deepworks.data.encoders import embed_texts, resolve_encoder

    _check_encoder_model(config)
    source = resolve_encoder(config.data.encoder)
    features = config.data.encoder_features
    embedded = embed_texts(source, all_texts, progress=config.train.progress != "none", features=features)
    record = embedded.record
    if config.train.progress != "none":
        how = "read from the cache" if embedded.cached else f"encoded in {embedded.seconds:.1f} s"
        print(f"{info['source']}: {len(all_texts)} texts embedded by {record['name']} ({record['source']}; "
              f"{features} features, {record['dim']} values each), {how}.", flush=True)
    limit = int(record["max_seq_length"]) - 2  # [CLS] and [SEP] take two of the model's positions
    stats = {}
    for name in ("train", "val", "test"):
        lengths = embedded.token_counts[idx[name]]
        shown = lengths if len(lengths) else np.zeros(1, dtype=np.int64)
        stats[name] = {
            "texts": len(lengths), "empty": int((lengths == 0).sum()), "truncated": int((lengths > limit).sum()),
            "length": {"min": int(shown.min()), "mean": float(shown.mean()), "median": float(np.median(shown)),
                       "p95": float(np.percentile(shown, 95)), "max": int(shown.max())},
        }
    cut = stats["train"]["truncated"]
    if cut:
        print(f"{info['source']}: {cut} of {len(raw['train'])} training texts are longer than the encoder's "
              f"{limit} word pieces and are read up to there.", flush=True)
    dim = int(record["dim"])
    info.update({
        "input_shape": [dim],
        # the encoder's origin (name, source, weights' SHA-256, feature kind, dim, max_seq_length): predict
        # loads the same and computes the same kind of features
        "input": {"kind": "embeddings", "dim": dim, "encoder": record},
        "tokens": stats,  # per split: texts, empty, cut at max_seq_length, word pieces per text
    })
    parts = {name: TensorData(torch.from_numpy(embedded.vectors[rows]), ys[name]) for name, rows in idx.items()}
    return PreparedData(parts["train"], parts["val"], parts["test"], classes, (dim,), info, task, raw=raw)


def _load_series(config: Config) -> Series:
    """The config's series: a built-in one (co2) or a table with ``data.time``."""
    d = config.data
    targets = [d.target] if isinstance(d.target, str) else list(d.target or [])
    if d.time is None:  # a built-in series names its own columns
        from deepworks.data.datasets import DATASETS

        series = DATASETS.get(d.dataset, where="data.dataset")(root=d.root)
        extra = [t for t in targets if t not in series.targets]
        if extra or d.features:
            raise ConfigError(
                f"data.dataset: {d.dataset} is the series {', '.join(map(repr, series.targets))} by "
                f"{series.time_name!r}; remove data.target/data.features (or read your own file with data.path and "
                "data.time)."
            )
        return series
    if d.path is None or not _is_table_path(d.path):
        raise ConfigError(
            f"data.time ({d.time!r}): a forecasting run reads a table; set data.path to a .csv (or .parquet) file."
        )
    if not targets:
        raise ConfigError("data.target: name the column to forecast (or a list of columns), e.g. data.target: sales.")
    return read_series(d.path, d.time, targets, list(d.features or []))


def _prepare_series(config: Config, fold: tuple[int, int] | None = None) -> PreparedData:
    """A series: read -> training, validation and test periods in time order -> scaling fitted on
    the training period -> windows (W, lookback, columns) and targets (W, horizon * targets)
    inside each period, standardised."""
    d = config.data
    if fold is not None:
        raise ConfigError("data.cv: a forecasting run splits by time, not into shuffled folds; remove data.cv / --cv.")
    series = _load_series(config)
    where, step = series.where, series.step
    season_from = "data.season" if d.season else ("time step" if step.season else None)
    season = d.season or step.season
    lookback = d.lookback or season or DEFAULT_LOOKBACK
    horizon, t, c = d.horizon, len(series.targets), len(series.columns)
    periods = split_periods(len(series), d.val_fraction, d.test_fraction, lookback, horizon, where)
    n_train = periods["train"][1]
    mean, std, change = fit_scaling(series.values, n_train)  # the training period only
    scaled = ((series.values - mean) / std).astype(np.float32)
    origins, parts, skipped = {}, {}, {}
    for name, (start, stop) in periods.items():
        origins[name] = window_origins(start, stop, lookback, horizon, series.observed)
        skipped[name] = len(window_origins(start, stop, lookback, horizon)) - len(origins[name])
        if not len(origins[name]):
            raise DataError(
                f"{where}: every window of the {name} period has a missing target value, so there is nothing to "
                f"{'train on' if name == 'train' else 'score'}. Fix: fill in the series, or change "
                "data.val_fraction/data.test_fraction."
            )
        x, y = make_windows(scaled, origins[name], lookback, horizon, t)
        parts[name] = TensorData(torch.from_numpy(x), torch.from_numpy(y))
    train_values = series.values[:n_train, :t][series.observed[:n_train]]
    percent = "smape" if bool((train_values == 0).any()) else "mape"  # MAPE divides by the actual value
    task = Forecasting(series.targets, mean[:t].tolist(), std[:t].tolist(), horizon=horizon, percent=percent)
    forecasts: dict[str, dict[str, np.ndarray]] = {}
    baselines_note = None
    for name in ("val", "test"):
        o = origins[name]
        forecasts[name] = {
            "origin": o,
            "actual": make_windows(series.values, o, lookback, horizon, t)[1],
            "last_value": last_value(series.values, o, horizon, t),
        }
        if season is not None:
            try:
                forecasts[name]["seasonal_naive"] = seasonal_naive(series.values, o, horizon, t, season)
            except DataError:
                baselines_note = (f"seasonal_naive left out: a season ({season} steps) before the first validation "
                                  "window lies before the series starts")
    if season is None:
        baselines_note = "seasonal_naive left out: the time step has no season; set data.season to have it"
    if baselines_note:
        for name in ("val", "test"):
            forecasts[name].pop("seasonal_naive", None)
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(origins[name]).tobytes())
    digest.update(np.ascontiguousarray(series.values).tobytes())
    is_dt = step.is_datetime
    origin = str(np.datetime64(series.origin, "ns")) if is_dt else float(series.origin)
    info = {
        "dataset": d.dataset or "table",
        "source": where,
        "kind": "series",
        "target": series.targets[0] if t == 1 else series.targets,
        "classes": [],
        "input_shape": [lookback, c],
        "features": series.columns,
        "input": {
            "kind": "series",
            "time": series.time_name,
            "targets": series.targets,
            "inputs": series.inputs,
            "columns": series.columns,
            "lookback": lookback,
            "horizon": horizon,
            "season": season,
            "season_from": season_from,
            "time_step": step.to_dict(),
            "time_step_text": step.describe(),
            "origin": origin,
            "steps": len(series),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "change_std": change.tolist(),
            "difference": d.difference,
            "gain": (std[:t] / change[:t]).tolist(),
            "percent_error": percent,
            "periods": {
                name: {"steps": stop - start, "first": stamp_text(series.stamps([start])[0]),
                       "last": stamp_text(series.stamps([stop - 1])[0])}
                for name, (start, stop) in periods.items()
            },
            "windows_skipped": skipped,
            "baselines_note": baselines_note,
            "report": series.report,
        },
        "sizes": {name: len(parts[name]) for name in ("train", "val", "test")},
        "class_counts": None,
        "official_test": False,
        "split_fingerprint": digest.hexdigest(),
        "task": task.record(),
    }
    print(
        f"{where}: {len(series)} steps ({step.describe()}); windows of {lookback} steps -> {horizon} ahead; "
        f"periods train/val/test {', '.join(str(stop - start) for start, stop in periods.values())} steps, "
        f"{', '.join(str(len(parts[n])) for n in ('train', 'val', 'test'))} windows",
        flush=True,
    )
    return PreparedData(parts["train"], parts["val"], parts["test"], [], (lookback, c), info, task, forecasts)


def _merge_kwargs(overrides: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
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


def _balance(config: Config, data: PreparedData) -> None:
    """Warn about strong class imbalance; draw class-balanced batches with data.sampler: balanced."""
    if data.task.name != "classification":
        if config.data.sampler == "balanced":
            raise ConfigError("data.sampler: balanced is for classification; this is a regression run. Fix: remove it.")
        return
    counts = torch.bincount(data.train.y.long().cpu(), minlength=len(data.classes))
    largest, smallest = int(counts.max()), int(counts.min())
    if smallest == 0 or largest > 10 * smallest:
        rare = data.classes[int(counts.argmin())]
        warnings.warn(
            f"the training split is imbalanced: the largest class has {largest} samples, {rare!r} only {smallest}. "
            "Per-class metrics are in test_report.json; consider train.class_weights: balanced or "
            "data.sampler: balanced.",
            stacklevel=3,
        )
    if config.data.sampler == "balanced":
        data.train.weights = balanced_weights(data.train.y)


def train(
    config: str | Path | dict | Config,
    *,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    callbacks: Sequence[Callback] = (),
    **kwargs: Any,
) -> Run:
    """Train from a config (YAML path, mapping or :class:`Config`) and evaluate on the test split.

    Keyword overrides use ``__`` between keys (``train__epochs=5``) or a section mapping
    (``train={"epochs": 5}``). ``callbacks`` are added to the Trainer's (Keras semantics,
    :class:`~deepworks.train.Callback`). Returns the :class:`Run` with its best model and summary.
    """
    cfg = load_config(config, _merge_kwargs(overrides, kwargs))
    if is_adversarial(cfg.model.name):  # a GAN: its own loop (deepworks.generation)
        from deepworks.generation import train_gan

        if callbacks:
            raise ConfigError("train(callbacks=...): the GAN loop takes no callbacks.")
        return train_gan(cfg, run_dir=run_dir, runs_root=runs_root)
    if cfg.train.tensorboard:  # a missing tensorboard package is refused before any work
        summary_writer_class()
    dist = distributed_context()
    cfg = adopt_source(cfg)  # transfer.from: the earlier run's model section
    with counting_batch(cfg):  # memory: an image folder's budget counts a training batch (train/memory.py)
        data = prepare_data(cfg)
    # memory: a training batch that cannot fit is refused, train.batch_size: auto is chosen (train/memory.py)
    cfg = check_batch_memory(cfg, lambda: _new_model(cfg, data.input_shape, data.task, data.info, load=False),
                             data.train, world_size=dist.world_size)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = _new_model(cfg, data.input_shape, data.task, data.info)
    augment = _augment(cfg, data)  # refuse a bad data.augment before the run directory exists
    check_transfer(cfg, augment)
    cfg, found = _resolve_lr(cfg, data, model, augment)
    # under torchrun every process must use the directory rank 0 names
    run = RunDir(broadcast_object(str(run_dir or new_run_dir(cfg.name, runs_root))))
    if run.checkpoint.exists() or run.summary.exists():
        raise ConfigError(
            f"--run-dir {run.path}: a run already lives there. Resume it with "
            f"`deepworks train --resume {run.path}`, or choose another directory."
        )
    barrier()  # all processes have checked the directory before rank 0 writes to it
    if dist.is_main:
        run.create()
        atomic_write(run.config, dump_config(cfg))
        run.write_json(run.data, data.info)
        print(f"run directory: {run.path}", flush=True)
        if found is not None:
            _write_lr_find(run, found, cfg.name)
    return _fit(cfg, data, model, run, resume=False, callbacks=callbacks)


def _resolve_lr(cfg: Config, data: PreparedData, model: nn.Module, augment: Any) -> tuple[Config, Any]:
    """``train.optimizer.lr: auto``: a learning-rate range test on a copy of the model, on the
    training split; the resolved config records the chosen number."""
    if cfg.train.optimizer.params.get("lr") != "auto":
        return cfg, None
    from deepworks.train.lr_finder import find_lr

    result = broadcast_object(
        find_lr(model, data.train, cfg.train, task=data.task, seed=cfg.seed, augment=augment)
    )  # every process trains with rank 0's choice
    print(f"lr: auto -> {result.suggestion:.3g} (learning-rate range test over {result.steps} steps, the middle of "
          f"the loss curve's longest descent; lr_find.png shows it)", flush=True)
    return load_config(cfg, {"train.optimizer.lr": float(f"{result.suggestion:.3g}")}), result


def _write_lr_find(run: RunDir, result: Any, name: str) -> None:
    _save_lr_find(result, run.path / "lr_find.png", name)


def _save_lr_find(result: Any, png: Path, name: str) -> dict[str, str]:
    """The range test as ``png`` and, beside it, the same stem ``.json``."""
    import io

    from deepworks.train.lr_finder import plot_lr_find

    buffer = io.BytesIO()
    plot_lr_find(result, title=f"{name}: learning-rate range test").savefig(buffer, format="png", dpi=120)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png, buffer.getvalue())
    table = png.with_suffix(".json")
    RunDir(png.parent).write_json(table, result.to_dict())
    return {"png": str(png), "json": str(table)}


def lr_find(
    config: str | Path | dict | Config,
    *,
    out: str | Path | None = None,
    steps: int = 200,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    overrides: Any = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """The learning-rate range test of a config, with no run directory: the config's data,
    model, optimizer, batch size and penalties; the learning rate grows from ``start_lr`` to
    ``end_lr`` over ``steps`` steps on a copy of the model. Writes the plot to ``out``
    (default ``lr-find-<name>.png`` in the working directory) and a JSON beside it; returns
    the suggestion, where the smoothed loss was lowest, the curve and the files."""
    cfg = adopt_source(load_config(config, _merge_kwargs(overrides, kwargs)))
    from deepworks.train.lr_finder import find_lr

    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = _new_model(cfg, data.input_shape, data.task, data.info)
    train_cfg = cfg.train
    if train_cfg.optimizer.params.get("lr") == "auto":  # the number is what the test finds
        train_cfg = load_config(cfg, {"train.optimizer.lr": 1e-3}).train
    result = find_lr(model, data.train, train_cfg, task=data.task, seed=cfg.seed, augment=_augment(cfg, data),
                     steps=steps, start_lr=start_lr, end_lr=end_lr)
    files = _save_lr_find(result, Path(out) if out is not None else Path(f"lr-find-{cfg.name}.png"), cfg.name)
    return {**result.to_dict(), "files": files}


def cross_validate(
    config: str | Path | dict | Config,
    *,
    folds: int | None = None,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    **kwargs: Any,
) -> dict[str, Any]:
    """k-fold cross-validation over the non-test data (``folds`` or ``data.cv``), stratified
    (or grouped by ``data.group_by``); each fold is a normal run directory ``fold-<i>`` inside
    the CV run. Then one model is trained on all non-test data and evaluated on the test
    split, once (``final``). Returns the CV summary (also ``summary.json`` of the CV run).
    """
    cfg = load_config(config, _merge_kwargs(overrides, kwargs))
    k = folds if folds is not None else cfg.data.cv
    if k is None or isinstance(k, bool) or int(k) < 2:
        raise ConfigError(f"--cv: expected a number of folds of at least 2, got {k!r}. Fix: e.g. --cv 5.")
    k = int(k)
    cfg = adopt_source(load_config(cfg, {"data.cv": k}))
    root = RunDir(run_dir or new_run_dir(f"{cfg.name}-cv", runs_root))
    if root.summary.exists() or root.config.exists():
        raise ConfigError(f"--run-dir {root.path}: a run already lives there. Choose another directory.")
    root.create()
    atomic_write(root.config, dump_config(cfg))
    per_fold: list[dict[str, Any]] = []
    task: Task | None = None
    for i in range(k):
        print(f"fold {i + 1}/{k}", flush=True)
        run = _start(cfg, prepare_data(cfg, fold=(k, i)), root.path / f"fold-{i + 1}")
        fitted = _fit(cfg, run[0], run[1], run[2], resume=False, test=False)
        task = fitted.task
        per_fold.append({"fold": i + 1, "run": f"fold-{i + 1}", **fitted.summary["val"]})
    metrics = [m for m in (task.summary_keys if task else ()) if all(f.get(m) is not None for f in per_fold)]
    summary: dict[str, Any] = {
        "folds": k,
        "task": task.name if task else None,
        "per_fold": per_fold,
        # population std (ddof=0) over the k folds, as numpy's default
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in metrics},
        "std": {m: float(np.std([f[m] for f in per_fold])) for m in metrics},
    }
    print("final model: all non-test data", flush=True)
    final = _fit(cfg, *_start(cfg, prepare_data(cfg, fold=(k, None)), root.path / "final"), resume=False)
    summary["test"] = final.summary["test"]
    summary["final_run"] = "final"
    root.write_json(root.summary, summary)
    return summary


def _start(cfg: Config, data: PreparedData, path: Path) -> tuple[PreparedData, nn.Module, RunDir]:
    """A new run directory for ``data`` with its config and data record, and a fresh model."""
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = _new_model(cfg, data.input_shape, data.task, data.info)
    run = RunDir(path).create()
    atomic_write(run.config, dump_config(cfg))
    run.write_json(run.data, data.info)
    return data, model, run


def resume(run_dir: str | Path) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    cfg = load_config(run.config)
    if is_adversarial(cfg.model.name):
        from deepworks.generation import resume_gan

        return resume_gan(run, cfg)
    if run.summary.exists() and not run.checkpoint.exists():
        raise CheckpointError(f"{run.path}: this run has no checkpoint to resume from.")
    if run.summary.exists() and "test" in run.read_json(run.summary):
        print(f"{run.path}: the run is already complete; nothing to resume.", flush=True)
        return load_run(run.path)
    data = prepare_data(cfg)
    _check_same_data(run, data)
    torch.manual_seed(cfg.seed)
    model = _new_model(cfg, data.input_shape, data.task, data.info)
    if not run.checkpoint.exists():  # killed before its first checkpoint: nothing to lose, start it again
        print(f"{run.path}: no checkpoint yet (stopped before the first one); starting the run again from its "
              "config.yaml.", flush=True)
        return _fit(cfg, data, model, run, resume=False)
    return _fit(cfg, data, model, run, resume=True)


def _augment(cfg: Config, data: PreparedData) -> Any:
    """The training-batch augmentation ``data.augment`` asks for (None when it is empty); a
    ConfigError for data that cannot be augmented (tables)."""
    # training batches are normalised: color_jitter and cutout need the statistics
    return build_augment(
        cfg.data.augment, cfg.seed, input_shape=data.input_shape, mean=data.info.get("mean"), std=data.info.get("std")
    )


def _fit(
    cfg: Config, data: PreparedData, model: nn.Module, run: RunDir, resume: bool, test: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Run:
    transfer = None
    if isinstance(model, Transfer):
        callbacks = [TransferStages(model), *callbacks]
        data, transfer = _transfer_data(cfg, data, model)
    _balance(cfg, data)
    trainer = Trainer(
        model, cfg.train, run_dir=run.path, task=data.task, seed=cfg.seed, augment=_augment(cfg, data),
        callbacks=callbacks,
    )
    try:
        history = trainer.fit(data.train, data.val if len(data.val) else None, resume=resume)
    except TrainingError as exc:  # a divergence: say why in summary.json and on the console, then stop
        if test:
            trainer.summary = {"task": data.task.name, "epochs_run": trainer.epoch, "diverged": str(exc)}
            _diagnose(cfg, data, trainer, run, error=str(exc))
            if cfg.report and distributed_context().is_main:
                _write_report(run)  # the page shows the curves up to the divergence and the diagnosis
        raise
    if not test:  # a cross-validation fold: validation figures only
        if isinstance(model, Transfer):
            model.reads_features = False
        return Run(run.path, cfg, trainer.model, data.classes, history, trainer.summary, data.task)
    test_report = trainer.evaluate(data.test, keep="test")  # the test split is touched once, here
    trainer.record_test(test_report)
    if isinstance(model, Transfer):
        model.reads_features = False  # the run's model takes images again
    origin = getattr(model, "origin", None)
    if transfer is not None or origin is not None:
        trainer.summary["transfer"] = {**(transfer or {}), **({"weights": origin} if origin is not None else {})}
        if distributed_context().is_main:
            run.write_json(run.summary, trainer.summary)
    if distributed_context().is_main and trainer.outputs:
        _save_predictions(run, trainer, data)
    recorded = {key: data.info[key] for key in ("duplicates", "loading") if data.info.get(key) is not None}
    if (data.info.get("input") or {}).get("encoder"):  # texts read through a frozen sentence encoder: its origin
        recorded["encoder"] = data.info["input"]["encoder"]
    if isinstance(data.train, StreamedImages):  # files that changed on disk since the scan
        skipped = data.train.source.skipped
        recorded["skipped_files"] = {"count": len(skipped), "files": [{"file": f, "reason": r} for f, r in skipped.items()]}
    elif len(data.input_shape) == 3:
        recorded["skipped_files"] = {"count": 0, "files": []}  # in memory: every file was decoded before training
    if recorded:
        trainer.summary["data"] = recorded
        if distributed_context().is_main:
            run.write_json(run.summary, trainer.summary)
    if data.info.get("kind") in ("table", "text"):
        _record_baselines(trainer, data, run, cfg.seed)
    elif data.info.get("kind") == "series":
        _record_forecast_baselines(trainer, data, run)
    _diagnose(cfg, data, trainer, run)
    if cfg.report and distributed_context().is_main:
        _write_report(run)
    return Run(run.path, cfg, trainer.model, data.classes, history, trainer.summary, data.task)


def _transfer_data(cfg: Config, data: PreparedData, model: Transfer) -> tuple[PreparedData, dict[str, Any]]:
    """Feature extraction with transfer.cache: every split as the frozen body's features,
    computed once, so each epoch trains only the head. Returns the data the Trainer sees and
    what summary.json records (which blocks learn, the cache's time)."""
    from dataclasses import replace

    from deepworks.runtime import resolve_device, resolve_precision

    record: dict[str, Any] = model.describe()
    t = cfg.transfer
    if t is None or t.mode != "feature_extraction" or not t.cache:
        return data, record
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device, model, cfg.train.channels_last)
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    batch = 256 if cfg.train.eval_batch_size == "auto" else int(cfg.train.eval_batch_size)
    started = time.perf_counter()
    parts = {name: cache_features(model, getattr(data, name), batch_size=batch, device=device, precision=precision)
             for name in ("train", "val", "test") if len(getattr(data, name))}
    seconds = time.perf_counter() - started
    images = sum(len(p) for p in parts.values())
    dim = int(next(iter(parts.values())).x.shape[1])
    if cfg.train.progress != "none" and distributed_context().is_main:
        print(f"features: the frozen body ran once over {images} images ({dim} features each, {precision.name}) in "
              f"{seconds:.1f} s; each epoch now trains the head alone", flush=True)
    model.reads_features = True
    record["feature_cache"] = {"images": images, "features": dim, "seconds": round(seconds, 2), "precision": precision.name}
    return replace(data, **parts), record


def _diagnose(cfg: Config, data: PreparedData, trainer: Trainer, run: RunDir, error: str | None = None) -> None:
    """The diagnosis (:mod:`deepworks.evaluate.diagnosis`) of the run just trained, from what is
    in memory: ``summary.json`` -> ``diagnosis``, and printed unless ``train.progress`` is none."""
    if not distributed_context().is_main:
        return
    predictions = {"task": data.task.name, **{s: {"outputs": o, "targets": t} for s, (o, t) in trainer.outputs.items()}}
    gradients = run.read_jsonl(run.gradients) if cfg.train.log_gradients else None
    findings = diagnose(trainer.history, trainer.summary, predictions=predictions, gradients=gradients,
                        data_info=data.info, config=cfg, error=error)
    trainer.summary["diagnosis"] = findings
    run.write_json(run.summary, trainer.summary)
    if cfg.train.progress != "none":
        print(render_diagnosis(findings), flush=True)


def _write_report(run: RunDir) -> None:
    """``report.html`` at the end of a run (config ``report: false`` turns it off)."""
    from deepworks.report import write_report

    try:
        path = write_report(run.path)
    except Exception as exc:  # the trained run is intact; the report can be written again
        warnings.warn(f"{run.path}: report.html could not be written ({type(exc).__name__}: {exc}). "
                      f"Write it again with `deepworks report {run.path}`.", stacklevel=2)
        return
    print(f"report: {path}", flush=True)


def _save_predictions(run: RunDir, trainer: Trainer, data: PreparedData) -> None:
    """The kept model's val/test outputs (and, for images, the most confidently wrong validation
    images) in ``predictions.safetensors``, for the report and the diagnosis."""
    wrong = None
    if "val" in trainer.outputs and data.task.name == "classification" and len(data.input_shape) == 3:
        logits, targets = trainer.outputs["val"]
        index = confidently_wrong(logits, targets, k=16)
        if len(index):
            images = getattr(data.val, "images", data.val)  # cached features keep their images for display
            wrong = (index, display_pixels(images.inputs(index), data.info.get("mean"), data.info.get("std")))
    extra = {f"{split}.{key}": torch.from_numpy(np.ascontiguousarray(value))
             for split, parts in data.forecasts.items() if split in trainer.outputs for key, value in parts.items()}
    save_predictions(run.predictions, trainer.outputs, data.task.name, wrong, extra=extra)


def _record_baselines(trainer: Trainer, data: PreparedData, run: RunDir, seed: int) -> None:
    """Simple models on the same split and features (for text, the same raw training texts),
    beside the network in summary.json."""
    if data.raw is not None:
        texts = {"val": (data.raw["val"], data.val.y), "test": (data.raw["test"], data.test.y)}
        baselines = text_baselines(data.task, (data.raw["train"], data.train.y), texts, seed=seed)
    else:
        splits = {"val": (data.val.x, data.val.y), "test": (data.test.x, data.test.y)}
        baselines = tabular_baselines(data.task, (data.train.x, data.train.y), splits, seed=seed)
    trainer.summary["baselines"] = baselines
    if distributed_context().is_main:
        run.write_json(run.summary, trainer.summary)
        key = "accuracy" if data.task.name == "classification" else "r2"
        shown = ", ".join(f"{name} {scores['test'][key]:.4f}" for name, scores in baselines.items())
        print(f"baselines (test {key}): {shown}; network {trainer.summary['test'][key]:.4f}", flush=True)


def _record_forecast_baselines(trainer: Trainer, data: PreparedData, run: RunDir) -> None:
    """last_value and seasonal_naive on exactly the network's validation and test windows, in
    summary.json ``baselines`` ({name: {split: metrics}}), scored by the same code."""
    task = data.task
    t = len(task.target_names)
    baselines: dict[str, Any] = {}
    for name in ("last_value", "seasonal_naive"):
        if all(name in data.forecasts[s] for s in ("val", "test")):
            baselines[name] = {
                split: forecast_scores(data.forecasts[split][name], data.forecasts[split]["actual"], task.horizon, t,
                                       task.percent)
                for split in ("val", "test")
            }
    trainer.summary["baselines"] = baselines
    if distributed_context().is_main:
        run.write_json(run.summary, trainer.summary)
        shown = ", ".join(f"{name} {scores['test']['mae']:.4g}" for name, scores in baselines.items())
        print(f"baselines (test mae): {shown}; network {trainer.summary['test']['mae']:.4g}", flush=True)
        note = (data.info.get("input") or {}).get("baselines_note")
        if note:
            print(note, flush=True)


def _check_same_data(run: RunDir, data: PreparedData) -> None:
    saved = run.read_json(run.data)
    if saved.get("split_fingerprint") != data.info["split_fingerprint"]:
        warnings.warn(
            f"{run.data}: the data has changed since this run was trained (its split differs); "
            "figures computed now are not comparable with the run's.",
            stacklevel=2,
        )


def load_run(run_dir: str | Path) -> Run:
    """Open a finished (or interrupted) run: config, classes and the best model's weights."""
    run = existing_run(run_dir)
    cfg = load_config(run.config)
    if is_adversarial(cfg.model.name):
        raise ConfigError(f"{run.path}: a GAN run ({cfg.model.name}) has a generator, not a classifier. "
                          f"Fix: `deepworks generate {run.path} --n 16 --out DIR`, or deepworks.generate(...).")
    info = run.read_json(run.data)
    classes, shape = list(info["classes"]), tuple(info["input_shape"])
    task = task_from_record(info.get("task"), classes)
    model = _new_model(cfg, shape, task, info, load=False)  # its own weights, below
    if not run.best.exists():
        raise CheckpointError(
            f"{run.best}: missing; the run has not finished an epoch yet. "
            f"Resume it with `deepworks train --resume {run.path}`."
        )
    load_model_weights(model, run.best)
    model.eval()
    summary = run.read_json(run.summary) if run.summary.exists() else {}
    return Run(run.path, cfg, model, classes, run.read_metrics(), summary, task)


def evaluate(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """The full report of the run's best model on ``split`` (val or test): per class for
    classification runs, per target for regression runs."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected train, val or test, got {split!r}.")
    loaded = load_run(run_dir)
    run = RunDir(run_dir)
    torch.manual_seed(loaded.config.seed)
    data = prepare_data(loaded.config)
    _check_same_data(run, data)
    trainer = Trainer(loaded.model, loaded.config.train.model_copy(update={"progress": "none"}), task=loaded.task)
    report = trainer.evaluate(getattr(data, split))
    report["split"] = split
    return report


def predict(
    run_dir: str | Path, inputs: Sequence[str | Path] = (), top_k: int = 3, out: str | Path | None = None, *,
    texts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Predict for image files (image runs), the rows of CSV files (tabular runs) or texts (text
    runs) with the run's best model: the ``top_k`` classes and their probabilities for each
    (classification), or the predicted value in the target's units (regression).

    A text run takes raw strings as ``texts`` and files as ``inputs``: a CSV file's text column
    (the run's ``data.text``), or any other file's lines, one text per line. They are encoded
    with the run's tokenizer and vocabulary (``data.json`` -> ``text``), or, for a run trained
    with ``data.encoder``, embedded by the same sentence encoder (its weights' SHA-256 checked
    against ``data.json`` -> ``input.encoder``).

    A forecasting run takes CSV files of history (the training columns) and returns, per file,
    the next ``horizon`` values with their time stamps, and draws the history with the forecast
    as a PNG: ``out`` (a ``.csv`` or ``.json`` file, one input only) gets the forecast and the PNG
    beside it; by default the PNG is ``forecast-<file stem>.png`` in the working directory."""
    inputs = list(inputs or [])
    if not inputs and not texts:
        raise DataError("predict: give at least one input file (or, for a text run, texts).")
    loaded = load_run(run_dir)
    info = RunDir(run_dir).read_json(RunDir(run_dir).data)
    if info.get("kind") == "series":
        return _predict_series(loaded, info, [Path(p) for p in inputs], Path(out) if out is not None else None)
    if out is not None:
        raise ConfigError("predict --out: writing the predictions to a file is for forecasting runs; use --json.")
    shape = info["input_shape"]
    is_text = "text" in info or info.get("kind") == "text"
    if texts and not is_text:
        raise DataError(f"predict: {run_dir} is not a text run (it reads {'images' if len(shape) == 3 else 'tables'}); "
                        "texts are for runs trained on text. Fix: give input files instead.")
    if is_text:
        strings, names = list(texts or []), [{"text": t} for t in texts or []]
        if inputs:
            more, where = read_text_inputs(inputs, info.get("text_column", "text"))
            strings += more
            names += [{**w, "text": t} for w, t in zip(where, more)]
        if any(not isinstance(t, str) for t in strings):
            raise DataError("predict: texts must be strings, e.g. texts=['a fine film'].")
        sentence_encoder = (info.get("input") or {}).get("encoder")
        if sentence_encoder:  # embeddings by the run's frozen sentence encoder, checked to be the same weights
            batch = _embed_for_run(run_dir, sentence_encoder, strings)  # float32 (N, dim)
        else:  # token ids from the run's own tokenizer and vocabulary
            batch = TextEncoder.from_dict(info["text"]).encode(strings).ids  # int64 (N, max_length)
    elif len(shape) == 3:
        # the exact pixels training saw: the run's decode, channels and resize (data.json "image")
        spec = ImageSpec.from_dict(info["image"]) if "image" in info else ImageSpec(shape[0], (shape[1], shape[2]))
        pixels = torch.stack([load_pixels(p, spec) for p in inputs])  # uint8 (N, C, H, W)
        batch = ToInput(1 / 255, info.get("mean", [0.0] * spec.channels), info.get("std", [1.0] * spec.channels))(pixels)
        names = [{"file": str(p)} for p in inputs]
    elif "encoder" in info:  # a table: the encoder fitted on the training rows
        encoder = TableEncoder.from_dict(info["encoder"])
        parts, names = [], []
        for p in inputs:
            header, rows, lines = read_table(p)
            columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
            parts.append(torch.from_numpy(encoder.transform(columns, lines=lines, where=str(p))))
            names += [{"file": str(p), "line": line} for line in lines]
        batch = torch.cat(parts)  # (N, F)
    else:  # a numeric table of a run from before tables were encoded
        parts, names = [], []
        for p in inputs:
            x, lines = read_feature_rows(p, info["features"])
            parts.append(torch.from_numpy(x))
            names += [{"file": str(p), "line": line} for line in lines]
        batch = torch.cat(parts)  # (N, F)
    if "mean" in info and len(shape) != 3:
        batch = normalize(batch, info["mean"], info["std"])
    with torch.no_grad():
        outputs = with_tta(loaded.model, loaded.config.train.tta)(batch).float()
    return [{**name, **result} for name, result in zip(names, loaded.task.predict(outputs, top_k))]


def run_encoder(run_dir: str | Path, record: dict[str, Any]) -> tuple[Any, str]:
    """The installed sentence encoder a run was trained on (data.json -> input.encoder) and the
    feature kind it used, after checking that the weights are the ones the run recorded."""
    from deepworks.data.encoders import FEATURE_KINDS, resolve_encoder

    source = resolve_encoder(str(record.get("name")), key=f"{run_dir}: data.encoder")
    if record.get("sha256") and source.sha256 != record["sha256"]:
        raise DataError(
            f"predict: the run {run_dir} was trained on the embeddings of {record.get('name')} with weights "
            f"sha256 {record['sha256'][:12]}... ({record.get('source')}), but {source.folder} holds weights "
            f"sha256 {source.sha256[:12]}... ({source.source}); its embeddings would mean something else to the "
            "trained model. Fix: install the encoder the run was trained with, or train the run again."
        )
    features = str(record.get("features", "sentence"))  # a run from before feature kinds: the sentence embedding
    if features not in FEATURE_KINDS:
        raise DataError(f"predict: the run {run_dir} was trained on {features!r} features of {record.get('name')}, "
                        f"which this deepworks does not compute (it knows {', '.join(FEATURE_KINDS)}). "
                        "Fix: predict with the deepworks version that trained the run, or train the run again.")
    return source, features


def _embed_for_run(
    run_dir: str | Path, record: dict[str, Any], texts: list[str], *, checked: tuple[Any, str] | None = None,
    encoder: Any = None,
) -> torch.Tensor:
    """``texts`` embedded by the sentence encoder a run was trained on. ``checked`` is
    :func:`run_encoder`'s answer and ``encoder`` the loaded encoder, when a caller keeps them
    (the server: once at start, not per request)."""
    from deepworks.data.encoders import embed_texts

    source, features = checked or run_encoder(run_dir, record)
    vectors = embed_texts(source, texts, cache=False, progress=False, features=features, encoder=encoder).vectors
    if vectors.shape[1] != int(record.get("dim", vectors.shape[1])):
        raise DataError(f"predict: {record.get('name')} gives {vectors.shape[1]} values per text; the run was trained "
                        f"on {record['dim']}. Fix: install the encoder the run was trained with.")
    return torch.from_numpy(vectors)


def _predict_series(loaded: Run, info: dict[str, Any], inputs: list[Path], out: Path | None) -> list[dict[str, Any]]:
    """The next ``horizon`` values after each history file, with their time stamps; a PNG each."""
    from deepworks.data.tabular import _check_column
    from deepworks.report.plots import figure_png, forecast_figure

    src = info["input"]
    if out is not None and (len(inputs) != 1 or out.suffix.lower() not in (".csv", ".json")):
        raise ConfigError(
            f"predict --out {out}: give one history file and an --out ending in .csv or .json (the PNG goes beside it)."
        )
    step, lookback, horizon = TimeStep.from_dict(src["time_step"]), int(src["lookback"]), int(src["horizon"])
    mean, std = np.asarray(src["mean"]), np.asarray(src["std"])
    task = loaded.task
    results = []
    for path in inputs:
        header, rows, lines = read_table(path)
        for name, key in [(src["time"], "data.time"), *[(c, "training column") for c in src["columns"]]]:
            _check_column(path, header, name, key)
        columns = {name: [row[header.index(name)] for row in rows] for name in [src["time"], *src["columns"]]}
        history = series_from_columns(columns, lines, src["time"], src["targets"], src["inputs"], str(path), step=step)
        if len(history) < lookback:
            raise DataError(
                f"{path}: the history has {len(history)} time steps; the model reads the last {lookback} "
                f"(data.lookback of the run). Fix: give at least {lookback} steps of history."
            )
        window = torch.from_numpy(((history.values[-lookback:] - mean) / std).astype(np.float32))[None]  # (1, L, C)
        with torch.no_grad():
            values = task.unscale(loaded.model(window).float()).reshape(horizon, -1).numpy()  # (H, T)
        stamps = history.stamps(len(history) - 1 + np.arange(1, horizon + 1))
        forecast = [{src["time"]: stamp_text(s), **{n: float(v) for n, v in zip(src["targets"], row)}}
                    for s, row in zip(stamps, values)]
        png = out.with_suffix(".png") if out is not None else Path(f"forecast-{path.stem}.png")
        shown = min(len(history), max(4 * lookback, 8 * horizon))  # the recent past, enough to see the pattern
        figure = forecast_figure(
            history.stamps(np.arange(len(history) - shown, len(history))), history.values[-shown:, : len(src["targets"])],
            {"forecast": (stamps, values)}, src["targets"], title=f"{path.name}: the next {horizon} step(s)",
            actual_label="history",
        )
        png.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(png, figure_png(figure))
        result = {"file": str(path), "last": stamp_text(history.stamps([len(history) - 1])[0]), "forecast": forecast,
                  "png": str(png)}
        if out is not None:
            if out.suffix.lower() == ".json":
                atomic_write(out, json.dumps(forecast, indent=2) + "\n")
            else:
                lines_out = [",".join([src["time"], *src["targets"]])]
                lines_out += [",".join([row[src["time"]], *(repr(row[n]) for n in src["targets"])]) for row in forecast]
                atomic_write(out, "\n".join(lines_out) + "\n")
            result["out"] = str(out)
        results.append(result)
    return results
