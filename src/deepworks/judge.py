"""The judge of a generative run: a classifier deepworks trained on the same dataset, whose
features and predictions the quality and collapse measures use
(:mod:`deepworks.evaluation.generative`).

Either a finished classification run is named (``judge_for(config, judge=RUN_DIR)``), or
deepworks trains one with a fixed recipe (:data:`JUDGE_RECIPE`) on the dataset's training
split, through :func:`deepworks.train` like any run, and keeps it in the data cache
(``data_cache_dir() / "judges"``), keyed by the dataset, its image shape and a digest of its
training split, so later runs on the same data reuse it. The judge only ever sees real images:
generated ones are judged, never trained on.

>>> judge = judge_for({"data": {"dataset": "digits"}})          # doctest: +SKIP
>>> judge.accuracy, judge.real.shape                             # doctest: +SKIP
(0.98, torch.Size([270, 1, 8, 8]))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepworks import pipeline
from deepworks.config import Config, DataConfig, load_config
from deepworks.data.datasets import data_cache_dir
from deepworks.data.loaders import TensorData
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.evaluation.generative import Judge
from deepworks.kinds import kind_of_record
from deepworks.runs import RunDir
from deepworks.runtime import resolve_device

__all__ = ["JUDGE_RECIPE", "JUDGE_SEED", "judge_cache_dir", "judge_config", "judge_epochs", "judge_for", "load_judge"]

# The judge's model and training: the cnn of the fast Fashion-MNIST recipe without its flips
# (two conv blocks of 32 and 64 filters, a dense head of 128: the 128 features), AdamW with a
# one-cycle schedule to 0.01, label smoothing 0.1, the moving average of the weights, batches of
# 64, the best epoch by validation accuracy: 0.93 test accuracy on Fashion-MNIST. Bump
# JUDGE_VERSION when this changes, so cached judges are retrained.
JUDGE_RECIPE: dict[str, Any] = {
    "model": {"name": "cnn", "dropout": 0.0, "hidden": [128], "head_dropout": 0.1},
    "train": {
        "batch_size": 64,
        "optimizer": {"name": "adamw", "weight_decay": 0.01},
        "schedule": {"name": "one_cycle", "max_lr": 0.01, "pct_start": 0.2},
        "label_smoothing": 0.1,
        "ema": 0.99,
        "monitor": "val_accuracy",
    },
    "report": False,
}
JUDGE_VERSION = 2
JUDGE_SEED = 0  # the same judge for every run on the same data, whatever the run's seed
# about this many optimizer steps, in 5 to 30 epochs: digits (1,257 training images) gets 30
# epochs, a few seconds; Fashion-MNIST (51,000) gets 11, about two minutes on a 2-core CPU
_STEPS, _MIN_EPOCHS, _MAX_EPOCHS = 8000, 5, 30
# the data keys that decide which images the judge sees (not splits, augmentation or sampling)
_DATA_KEYS = ("dataset", "path", "root", "image_size", "channels", "resize", "on_bad_file", "in_memory", "memory_budget")


def judge_cache_dir() -> Path:
    """Where trained judges are kept: the data cache's ``judges`` folder ($DEEPWORKS_DATA/judges)."""
    return data_cache_dir() / "judges"


def judge_epochs(train_size: int, batch_size: int = 64) -> int:
    """Epochs of the judge's recipe for a training split of ``train_size`` images."""
    steps = max(1, math.ceil(train_size / batch_size))
    return min(_MAX_EPOCHS, max(_MIN_EPOCHS, math.ceil(_STEPS / steps)))


def _data_section(config: Any) -> DataConfig:
    if isinstance(config, DataConfig):
        return config
    if isinstance(getattr(config, "data", None), DataConfig):  # a Config (or any config object with a data section)
        return config.data
    if isinstance(config, (str, Path)):
        return load_config(config).data
    if isinstance(config, Mapping):
        if "data" not in config:
            raise ConfigError("judge_for: the config has no data section; the judge is trained on the run's data.")
        return load_config({"data": config["data"]}).data
    raise ConfigError(f"judge_for: expected a config (Config, mapping or YAML path), got {type(config).__name__}.")


def judge_config(config: Any, epochs: int | None = None, progress: str = "none") -> Config:
    """The judge's config for the data of ``config`` (a run's Config, mapping, YAML path or data
    section): the run's data keys that choose the images, the fixed recipe and seed."""
    data = _data_section(config).model_dump(mode="json")
    raw = {
        "name": "judge",
        "seed": JUDGE_SEED,
        "data": {k: data[k] for k in _DATA_KEYS if data.get(k) is not None},
        **{k: v for k, v in JUDGE_RECIPE.items() if k != "train"},
        "train": {**JUDGE_RECIPE["train"], "progress": progress, **({"epochs": epochs} if epochs else {})},
    }
    return load_config(raw)


def _cache_key(prepared: pipeline.PreparedData, epochs: int) -> str:
    info = prepared.info
    record = {
        "version": JUDGE_VERSION,
        "recipe": JUDGE_RECIPE,
        "epochs": epochs,
        **{k: info.get(k) for k in ("dataset", "source", "classes", "input_shape", "split_fingerprint", "mean", "std")},
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(info.get("dataset") or "data"))
    return f"{name}-{'x'.join(str(s) for s in prepared.input_shape)}-{digest}"


def _check_images(prepared: pipeline.PreparedData, what: str) -> None:
    if prepared.task.name != "classification" or kind_of_record(prepared.info) != "image":
        raise DataError(
            f"{what}: the quality measures judge images of a classification dataset; this data is "
            f"{'a ' + prepared.task.name + ' task' if prepared.task.name != 'classification' else 'not images'} "
            f"(input shape {tuple(prepared.input_shape)})."
        )


def load_judge(
    run_dir: str | Path, *, device: str = "auto", reference: pipeline.PreparedData | None = None,
    where: str = "gan.judge",
) -> Judge:
    """The finished classification run at ``run_dir`` as a :class:`Judge`: its best model, how it reads
    pixels (``data.json``), its test accuracy, and its test split's uint8 images as the real reference
    (from ``reference`` when given, else prepared again from the run's config)."""
    run = RunDir(run_dir)
    if not (run.path / "config.yaml").exists() or not run.data.exists():
        raise CheckpointError(
            f"{where}: {run.path} is not a finished deepworks run (no config.yaml or data.json). Fix: name the "
            "directory of a classification run trained on this dataset, or leave the key out to have one trained."
        )
    info = run.read_json(run.data)
    task = (info.get("task") or {}).get("name", "classification")
    shape = tuple(int(s) for s in info.get("input_shape", ()))
    if task != "classification" or len(shape) != 3 or "pixels" not in info:
        raise DataError(
            f"{where}: {run.path} is a {task} run on inputs shaped {shape}; a judge must be a classification run "
            "on images. Fix: name an image classification run trained on this dataset."
        )
    loaded = pipeline.load_run(run.path)
    summary = loaded.summary
    if "test" not in summary:
        raise CheckpointError(
            f"{where}: {run.path} has not finished (summary.json has no test figures). Fix: finish it with "
            f"`deepworks train --resume {run.path}`, or name a finished run."
        )
    if reference is None:
        reference = pipeline.prepare_data(loaded.config)
        if reference.info.get("split_fingerprint") != info.get("split_fingerprint"):
            warnings.warn(
                f"{run.data}: the data has changed since the judge was trained (its split differs); the real reference "
                "images may include some it trained on.", stacklevel=2,
            )
    test = reference.test
    real = real_labels = None
    if isinstance(test, TensorData) and test.x.dtype == torch.uint8 and test.x.ndim == 4:
        real, real_labels = test.x.cpu(), test.y.cpu()
    else:
        warnings.warn(
            f"{where}: the judge's test images stream from disk; the Fréchet distance and spread are left out "
            "unless real images are given to judge_generator(real=...).", stacklevel=2,
        )
    model = loaded.model.to(resolve_device(device))
    return Judge(
        model=model, classes=list(info["classes"]), input_shape=shape, scale=float(info["pixels"]["scale"]),
        mean=list(info["mean"]), std=list(info["std"]), dataset=str(info.get("dataset") or ""), run_dir=run.path,
        accuracy=summary["test"].get("accuracy"), real=real, real_labels=real_labels,
    )


def judge_for(
    config: Any,
    *,
    judge: str | Path | None = None,
    data_info: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    progress: str = "none",
    epochs: int | None = None,
    where: str = "gan.judge",
) -> Judge:
    """The judge for a generative run on the data of ``config`` (its Config, a mapping or a YAML path:
    only its ``data`` section is read).

    ``judge``: a finished classification run on the same data; refused (a :class:`DataError`) when
    its classes or image shape (channels, height, width) differ from the run's data (``data_info``,
    the run's ``data.json``, when given; else the data prepared from ``config``). Without it, the
    judge is the cached run under ``cache_dir`` (default :func:`judge_cache_dir`) for this data, and
    is trained once with :data:`JUDGE_RECIPE` when there is none. ``epochs`` replaces the recipe's
    (:func:`judge_epochs`) for quick looks and tests; such a judge is cached under its own key.
    """
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"judge_for: epochs must be a whole number >= 1 (or None for the recipe's), got {epochs!r}.")
    jcfg = judge_config(config, progress=progress)
    prepared = pipeline.prepare_data(jcfg)
    _check_images(prepared, where)
    if judge is not None:
        if data_info is not None:
            expected_classes, expected_shape = data_info["classes"], data_info["input_shape"]
        else:
            expected_classes, expected_shape = prepared.classes, prepared.input_shape
        found = load_judge(judge, device=device, where=where)
        found.check_data(expected_classes, expected_shape, where=where)
        return found
    epochs = epochs or judge_epochs(len(prepared.train), JUDGE_RECIPE["train"]["batch_size"])
    root = Path(cache_dir) if cache_dir is not None else judge_cache_dir()
    key = _cache_key(prepared, epochs)
    final = root / key
    if not (final / "summary.json").exists():
        _train_judge(judge_config(config, epochs=epochs, progress=progress), prepared, root, key)
    found = load_judge(final, device=device, reference=prepared, where=where)
    if data_info is not None:
        found.check_data(data_info["classes"], data_info["input_shape"], where=where)
    return found


def _train_judge(cfg: Config, prepared: pipeline.PreparedData, root: Path, key: str) -> None:
    """Train the judge into a private folder, then rename it into place: a run killed half way
    leaves no judge behind, and of two processes training the same judge, the first to finish wins."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{key}-*.tmp"):  # left by a killed process
        pid = stale.name[len(key) + 2 : -4]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{key}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"judge: training a cnn classifier on {prepared.info.get('dataset')} ({len(prepared.train)} training images, "
        f"{cfg.train.epochs} epochs), once; kept in {root / key}", flush=True,
    )
    run = pipeline.train(cfg, run_dir=tmp)
    try:
        os.rename(tmp, root / key)
    except OSError:  # another process put its judge there first: use that one
        if not (root / key / "summary.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"judge: test accuracy {run.summary['test']['accuracy']:.4f}", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
