"""The front door of training: ``deepworks.train`` and ``deepworks.resume`` send a GAN config to
its adversarial loop (:mod:`deepworks.generation`) and every other config to the pipeline
(:mod:`deepworks.pipeline`), so neither of those imports the other's loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepworks import generation, pipeline
from deepworks.autoconfig import infer_data
from deepworks.config import Config, read_yaml, load_config, merge_overrides
from deepworks.data.memory import Source, as_source, given_again, provided
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.models.external import run_config
from deepworks.models.gan import is_adversarial
from deepworks.predictor import Run
from deepworks.runs import RunDir
from deepworks.training import Callback

__all__ = ["train", "train_trial", "resume"]


def train(
    config: str | Path | dict | Config | None = None,
    *,
    source: Any = None,
    target: str | list[str] | None = None,
    text: str | None = None,
    time: str | None = None,
    task: str | None = None,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    callbacks: Sequence[Callback] = (),
    **kwargs: Any,
) -> Run:
    """Train from a config (YAML path, mapping or :class:`Config`) and evaluate on the test split.

    ``source`` gives the data from Python instead of a file (see :mod:`deepworks.data.memory`): a
    pandas DataFrame (``target``, ``text``, ``time`` and ``task`` name its columns and task as
    ``data.target``, ... do), arrays ``(X, y)`` (images (N, C, H, W) or (N, H, W); a 2-D ``X`` is a
    table) or a torch ``Dataset`` of ``(input, label)`` pairs. The config then needs no data section
    (it may set the data section's other keys, such as ``val_fraction``); with no config the defaults
    of the data's kind apply. The run records the data's SHA-256 (``data.fingerprint``), so that
    :func:`resume` and ``deepworks.evaluate``, given the data again, check it is the same.

    Keyword overrides use ``__`` between keys (``train__epochs=5``) or a section mapping
    (``train={"epochs": 5}``). ``callbacks`` are added to the Trainer's (Keras semantics,
    :class:`~deepworks.training.Callback`). Returns the :class:`Run` with its best model and summary.
    A GAN config (``model.name: dcgan``, ...) trains in its own loop, which takes no callbacks.
    """
    columns = {"target": target, "text": text, "time": time, "task": task}
    if source is None:
        named = [key for key, value in columns.items() if value is not None]
        if named:
            raise ConfigError(
                f"train({named[0]}=...) names a column of the data given as source=, but no source was given. Fix: pass "
                f"source=DataFrame, or set data.{named[0]} in the config."
            )
        if config is None:
            raise ConfigError("train: give a config (a YAML file, a mapping or a Config), or the data itself: "
                              "deepworks.train(source=df, target='label').")
        return _train(load_config(config, merge_overrides(overrides, kwargs)), run_dir, runs_root, callbacks)
    given = as_source(source, target)
    cfg = load_config(with_source(config, given, columns), merge_overrides(overrides, kwargs))
    with provided(given):
        return _train(cfg, run_dir, runs_root, callbacks)


def _train(cfg: Config, run_dir: str | Path | None, runs_root: str | Path, callbacks: Sequence[Callback]) -> Run:
    if is_adversarial(cfg.model.name):
        if callbacks:
            raise ConfigError("train(callbacks=...): the GAN loop takes no callbacks.")
        return generation.train_gan(cfg, run_dir=run_dir, runs_root=runs_root)
    return pipeline.train(cfg, run_dir=run_dir, runs_root=runs_root, callbacks=callbacks)


def train_trial(config: str | Path | dict | Config, *, run_dir: str | Path, overrides: Any = (),
                callbacks: Sequence[Callback] = ()) -> Run:
    """One tuning trial: validation figures only, no checkpoints, the test split untouched
    (:func:`deepworks.pipeline.finish` completes the study's best); a GAN trains its whole run."""
    cfg = load_config(config, merge_overrides(overrides, {}))
    if is_adversarial(cfg.model.name):
        return _train(cfg, run_dir, "runs", callbacks)
    return pipeline.train(cfg, run_dir=run_dir, callbacks=callbacks, trial=True)


def resume(run_dir: str | Path, *, source: Any = None) -> Run:
    """Continue an interrupted run (a GAN's too) from its last checkpoint; a run trained on data
    given in Python (``source=``) is given the same data again, and refuses other data."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    cfg = run_config(run.path)
    with given_again(cfg, source, str(run.path), "resume"):
        if is_adversarial(cfg.model.name):
            return generation.resume_gan(run, cfg)
        return pipeline.resume(run_dir)


def with_source(config: str | Path | dict | Config | None, source: Source, columns: dict[str, Any]) -> dict[str, Any]:
    """The config mapping for training on ``source``: the given config (or none) with the data
    keys the source implies (:func:`deepworks.autoconfig.infer_data` for a DataFrame: a table, texts
    or a series) and its fingerprint."""
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, Config):
        base = config.model_dump(exclude_unset=True)
    elif isinstance(config, (str, Path)):
        base = read_yaml(Path(config)) or {}
    else:
        base = dict(config)
    if not isinstance(base, dict):
        raise ConfigError(f"{config}: a config is a mapping of sections (data, model, train, ...).")
    data = dict(base.get("data") or {})
    named = [key for key in ("dataset", "path", "target", "text", "time", "image", "fingerprint") if data.get(key) is not None]
    if named:
        raise ConfigError(
            f"data.{named[0]}: the data comes from source=, so the config must not name it too. Fix: remove "
            f"data.{named[0]} from the config (name a DataFrame's columns with target=, text=, time=)."
        )
    if source.kind == "images":
        given = [key for key, value in columns.items() if value is not None]
        if given:
            raise ConfigError(f"{given[0]}=: names a column of a DataFrame, but the data given is {source.describe()}. "
                              f"Fix: remove {given[0]}=.")
        keys: dict[str, Any] = {"dataset": "arrays"}
    else:
        columns = dict(columns)
        if source.target is not None:  # arrays (X, y): whole-number or named labels are classes unless task= says not
            columns["target"] = source.target
            labels = source.frame[source.target]
            if columns["task"] is None:
                columns["task"] = "regression" if labels.dtype.kind == "f" else "classification"
        frame = source.frame
        for key in ("target", "text", "time"):  # a column left in the index (df.set_index('day')) is not read
            name = columns[key]
            if name is not None and name not in map(str, frame.columns) and name in map(str, frame.index.names):
                raise DataError(f"{key}={name!r}: is the DataFrame's index, not one of its columns, and the index is "
                                f"not read. Fix: pass df.reset_index() (the index as a column {name!r}).")
        inferred = infer_data(frame, "source (DataFrame)", Path.cwd(), **columns, spelling="keywords")  # fixes name keywords
        keys = {**inferred, "dataset": "dataframe"}
        if keys.get("image") is not None:  # image files are read from a file's folder only, for now
            raise ConfigError(
                f"source (DataFrame): column {keys['image']!r} lists image files, and an image list is read from a "
                "file only (its paths are relative to the file). Fix: save it beside the images "
                "(df.to_csv('labels.csv', index=False)) and train on the file (`deepworks train labels.csv`)."
            )
    return {**base, "data": {**data, **keys, "fingerprint": source.fingerprint}}
