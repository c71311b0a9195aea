"""The front door of training: ``deepworks.train`` and ``deepworks.resume`` send a GAN config to
its adversarial loop (:mod:`deepworks.generation`) and every other config to the pipeline
(:mod:`deepworks.pipeline`), so neither of those imports the other's loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepworks import generation, pipeline
from deepworks.config import Config, load_config, load_run_config, merge_overrides
from deepworks.errors import CheckpointError, ConfigError
from deepworks.models.gan import is_adversarial
from deepworks.predictor import Run
from deepworks.runs import RunDir
from deepworks.train import Callback

__all__ = ["train", "resume"]


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
    A GAN config (``model.name: dcgan``, ...) trains in its own loop, which takes no callbacks.
    """
    cfg = load_config(config, merge_overrides(overrides, kwargs))
    if is_adversarial(cfg.model.name):
        if callbacks:
            raise ConfigError("train(callbacks=...): the GAN loop takes no callbacks.")
        return generation.train_gan(cfg, run_dir=run_dir, runs_root=runs_root)
    return pipeline.train(cfg, run_dir=run_dir, runs_root=runs_root, callbacks=callbacks)


def resume(run_dir: str | Path) -> Run:
    """Continue an interrupted run (a GAN's too) from its last checkpoint."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    cfg = load_run_config(run.config)
    if is_adversarial(cfg.model.name):
        return generation.resume_gan(run, cfg)
    return pipeline.resume(run_dir)
