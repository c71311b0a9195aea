"""From a config to a trained, evaluated run, and back from a run directory.

These are the functions the command line calls::

    run = deepworks.train("examples/configs/quickstart.yaml", train__epochs=5)
    run.summary["test"]["accuracy"]
    deepworks.evaluate(run.dir, split="val")
    deepworks.predict(run.dir, ["shoe.png"], top_k=3)
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config, dump_config, load_config, parse_overrides
from deepworks.data import ImageDataset, build_augment, channel_stats, normalize, read_image, split_dataset
from deepworks.data.datasets import load_from_config
from deepworks.data.loaders import TensorData
from deepworks.data.tabular import read_feature_rows
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.models.registry import model_from_config
from deepworks.runs import RunDir, atomic_write, new_run_dir
from deepworks.runtime import barrier, broadcast_object, distributed_context
from deepworks.train import Trainer, load_model_weights

__all__ = ["Run", "PreparedData", "prepare_data", "train", "resume", "evaluate", "predict", "load_run"]


@dataclass
class PreparedData:
    """The three splits, normalised with training statistics, and what predict needs later."""

    train: TensorData
    val: TensorData
    test: TensorData
    classes: list[str]
    input_shape: tuple[int, ...]  # (C, H, W) images or (F,) features
    info: dict[str, Any]


@dataclass
class Run:
    """A run directory with its config, model (best weights) and results."""

    dir: Path
    config: Config
    model: nn.Module
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def prepare_data(config: Config) -> PreparedData:
    """Load the data, split it (seeded, stratified) and normalise it with training statistics only."""
    d = config.data
    ds: ImageDataset = load_from_config(d)
    splits = split_dataset(ds, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=config.seed)
    (xtr, ytr), (xva, yva), (xte, yte) = splits.train, splits.val, splits.test
    if d.normalize:
        mean, std = channel_stats(xtr)  # training split only: no leakage from val/test
        xtr, xva, xte = (normalize(x, mean, std) for x in (xtr, xva, xte))
    else:
        mean, std = [0.0] * ds.input_shape[0], [1.0] * ds.input_shape[0]
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(splits.indices[name], dtype=np.int64).tobytes())
    for y in (ytr, yva, yte):
        digest.update(y.numpy().astype(np.int64).tobytes())
    info = {
        "dataset": ds.name,
        "source": ds.source,
        "classes": list(ds.classes),
        "input_shape": list(ds.input_shape),
        "features": ds.features,
        "mean": mean,
        "std": std,
        "sizes": {"train": len(ytr), "val": len(yva), "test": len(yte)},
        "official_test": splits.official_test,
        "split_fingerprint": digest.hexdigest(),
    }
    return PreparedData(
        TensorData(xtr, ytr), TensorData(xva, yva), TensorData(xte, yte), list(ds.classes), ds.input_shape, info
    )


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


def train(
    config: str | Path | dict | Config,
    *,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    **kwargs: Any,
) -> Run:
    """Train from a config (YAML path, mapping or :class:`Config`) and evaluate on the test split.

    Keyword overrides use ``__`` between keys (``train__epochs=5``) or a section mapping
    (``train={"epochs": 5}``). Returns the :class:`Run` with its best model and summary.
    """
    cfg = load_config(config, _merge_kwargs(overrides, kwargs))
    dist = distributed_context()
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = model_from_config(cfg.model, data.input_shape, len(data.classes))
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
    return _fit(cfg, data, model, run, resume=False)


def resume(run_dir: str | Path) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    cfg = load_config(run.config)
    if run.summary.exists() and not run.checkpoint.exists():
        raise CheckpointError(f"{run.path}: this run has no checkpoint to resume from.")
    if run.summary.exists() and "test" in run.read_json(run.summary):
        print(f"{run.path}: the run is already complete; nothing to resume.", flush=True)
        return load_run(run.path)
    data = prepare_data(cfg)
    _check_same_data(run, data)
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, data.input_shape, len(data.classes))
    return _fit(cfg, data, model, run, resume=True)


def _fit(cfg: Config, data: PreparedData, model: nn.Module, run: RunDir, resume: bool) -> Run:
    augment = build_augment(  # training batches are normalised: color_jitter needs the statistics
        cfg.data.augment, cfg.seed, input_shape=data.input_shape, mean=data.info["mean"], std=data.info["std"]
    )
    trainer = Trainer(model, cfg.train, run_dir=run.path, classes=data.classes, seed=cfg.seed, augment=augment)
    history = trainer.fit(data.train, data.val, resume=resume)
    test_report = trainer.evaluate(data.test)  # the test split is touched once, here
    trainer.record_test(test_report)
    return Run(run.path, cfg, trainer.model, data.classes, history, trainer.summary)


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
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    if not run.config.exists():
        raise CheckpointError(f"{run.path}: not a deepworks run directory (no config.yaml).")
    cfg = load_config(run.config)
    info = run.read_json(run.data)
    classes, shape = list(info["classes"]), tuple(info["input_shape"])
    model = model_from_config(cfg.model, shape, len(classes))
    if not run.best.exists():
        raise CheckpointError(
            f"{run.best}: missing; the run has not finished an epoch yet. "
            f"Resume it with `deepworks train --resume {run.path}`."
        )
    load_model_weights(model, run.best)
    model.eval()
    summary = run.read_json(run.summary) if run.summary.exists() else {}
    return Run(run.path, cfg, model, classes, run.read_metrics(), summary)


def evaluate(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Full classification report of the run's best model on ``split`` (val or test)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected train, val or test, got {split!r}.")
    loaded = load_run(run_dir)
    run = RunDir(run_dir)
    torch.manual_seed(loaded.config.seed)
    data = prepare_data(loaded.config)
    _check_same_data(run, data)
    trainer = Trainer(loaded.model, loaded.config.train.model_copy(update={"progress": "none"}), classes=loaded.classes)
    report = trainer.evaluate(getattr(data, split))
    report["split"] = split
    return report


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 3) -> list[dict[str, Any]]:
    """Classify image files (image runs) or the rows of CSV files (tabular runs) with the run's
    best model: the ``top_k`` classes and their probabilities for each."""
    if not inputs:
        raise DataError("predict: give at least one input file.")
    loaded = load_run(run_dir)
    info = RunDir(run_dir).read_json(RunDir(run_dir).data)
    shape = info["input_shape"]
    k = max(1, min(int(top_k), len(loaded.classes)))
    if len(shape) == 3:
        channels, height, width = shape
        batch = torch.stack([read_image(p, channels=channels, size=(height, width)) for p in inputs])  # (N, C, H, W)
        names = [{"file": str(p)} for p in inputs]
    else:
        parts, names = [], []
        for p in inputs:
            x, lines = read_feature_rows(p, info["features"])
            parts.append(torch.from_numpy(x))
            names += [{"file": str(p), "line": line} for line in lines]
        batch = torch.cat(parts)  # (N, F)
    batch = normalize(batch, info["mean"], info["std"])
    with torch.no_grad():
        probs = torch.softmax(loaded.model(batch).float(), dim=1)
    top = probs.topk(k, dim=1)
    return [
        {
            **name,
            "prediction": loaded.classes[int(idx[0])],
            "top_k": [{"class": loaded.classes[int(i)], "probability": round(float(p), 6)} for p, i in zip(ps, idx)],
        }
        for name, ps, idx in zip(names, top.values, top.indices)
    ]
