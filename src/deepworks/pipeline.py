"""From a config to a trained, evaluated run, and back from a run directory.

These are the functions the command line calls::

    run = deepworks.train("examples/configs/quickstart.yaml", train__epochs=5)
    run.summary["test"]["accuracy"]
    deepworks.evaluate(run.dir, split="val")
    deepworks.predict(run.dir, ["shoe.png"], top_k=3)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config, dump_config, load_config, merge_overrides
from deepworks.data import build_augment
from deepworks.data.folders import StreamedImages
from deepworks.data.memory import given_again
from deepworks.errors import CheckpointError, ConfigError, TrainingError
from deepworks.evaluation.baselines import MAX_FIT_ROWS, tabular_baselines, text_baselines
from deepworks.evaluation.diagnosis import diagnose, render_diagnosis
from deepworks.evaluation.forecasting import forecast_scores
from deepworks.evaluation.predictions import confidently_wrong, display_pixels, save_predictions
from deepworks.kinds import PreparedData, choose_model, kind_of_record, new_model, prepare_data
from deepworks.kinds.common import balance_classes
from deepworks.models.external import run_config
from deepworks.kinds.table import baseline_features
from deepworks.models.gan import is_adversarial
from deepworks.models.registry import model_source
from deepworks.predictor import Run, load_run, predict
from deepworks.runs import RunDir, atomic_write, default_output, new_run_dir
from deepworks.runtime import barrier, broadcast_object, distributed_context
from deepworks.training import Callback, Trainer
from deepworks.training.trainer import load_model_weights
from deepworks.training.tasks import Task
from deepworks.training.memory import check_batch_memory, counting_batch
from deepworks.training.tracking import Tracker, build_trackers, check_trackers, final_metrics, flat_params
from deepworks.transfer import Transfer, TransferStages, adopt_source, cache_features, check_transfer

__all__ = [
    "Run", "PreparedData", "prepare_data", "train", "cross_validate", "resume", "evaluate", "predict", "load_run",
    "lr_find", "check_same_data", "write_run_report", "finish",
]


def train(
    config: str | Path | dict | Config,
    *,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    callbacks: Sequence[Callback] = (),
    trial: bool = False,
    **kwargs: Any,
) -> Run:
    """Train a (non-GAN) config and evaluate on the test split: what :func:`deepworks.train`
    (:mod:`deepworks.front`, which documents the arguments) runs for every config but a GAN's.

    ``trial=True`` (a tuning trial): validation figures only, no checkpoints, and nothing that
    reads the test split; :func:`finish` completes the run later (the study's best trial)."""
    cfg = load_config(config, merge_overrides(overrides, kwargs))
    if is_adversarial(cfg.model.name):
        raise ConfigError(f"model.name: {cfg.model.name} is a GAN, which trains in its own loop. Fix: "
                          "deepworks.train(config) (or `deepworks train CONFIG`) routes it there.")
    check_trackers(cfg.train)  # a missing tensorboard or mlflow package is refused before any work
    dist = distributed_context()
    cfg = adopt_source(cfg)  # transfer.from: the earlier run's model section
    # memory: an image folder's budget counts a training batch (training/memory.py) of the model for its size
    with counting_batch(cfg, model_for=lambda shape: choose_model(cfg, shape).model):
        data = prepare_data(cfg)
    cfg = choose_model(cfg, data.input_shape, log=dist.is_main, train_size=len(data.train))  # no model named: the data's size chooses it
    # memory: a training batch that cannot fit is refused, train.batch_size: auto is chosen (training/memory.py)
    cfg = check_batch_memory(cfg, lambda: new_model(cfg, data.input_shape, data.task, data.info, load=False),
                             data.train, world_size=dist.world_size)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = new_model(cfg, data.input_shape, data.task, data.info)
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
        run.write_json(run.data, _data_record(cfg, data))
        if data.save is not None:  # a pretrained tokenizer's files
            data.save(run.path)
        print(f"run directory: {run.path}", flush=True)
        if found is not None:
            _write_lr_find(run, found, cfg.name)
    return _fit(cfg, data, model, run, resume=False, callbacks=callbacks, trial=trial)


def _resolve_lr(cfg: Config, data: PreparedData, model: nn.Module, augment: Any) -> tuple[Config, Any]:
    """``train.optimizer.lr: auto``: a learning-rate range test on a copy of the model, on the
    training split; the resolved config records the chosen number."""
    if cfg.train.optimizer.params.get("lr") != "auto":
        return cfg, None
    from deepworks.training.lr_finder import find_lr

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

    from deepworks.training.lr_finder import plot_lr_find

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
    (default ``runs/lr-find/<name>.png`` under the working directory) and a JSON beside it; returns
    the suggestion, where the smoothed loss was lowest, the curve and the files."""
    cfg = adopt_source(load_config(config, merge_overrides(overrides, kwargs)))
    from deepworks.training.lr_finder import find_lr

    data = prepare_data(cfg)
    cfg = choose_model(cfg, data.input_shape, log=True, train_size=len(data.train))
    torch.manual_seed(cfg.seed)
    model = new_model(cfg, data.input_shape, data.task, data.info)
    train_cfg = cfg.train
    if train_cfg.optimizer.params.get("lr") == "auto":  # the number is what the test finds
        train_cfg = load_config(cfg, {"train.optimizer.lr": 1e-3}).train
    result = find_lr(model, data.train, train_cfg, task=data.task, seed=cfg.seed, augment=_augment(cfg, data),
                     steps=steps, start_lr=start_lr, end_lr=end_lr)
    png = Path(out) if out is not None else default_output("lr-find", f"{cfg.name}.png")
    files = _save_lr_find(result, png, cfg.name)
    return {**result.to_dict(), "files": files}


def cross_validate(
    config: str | Path | dict | Config,
    *,
    folds: int | None = None,
    run_dir: str | Path | None = None,
    overrides: Any = (),
    runs_root: str | Path = "runs",
    final: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """k-fold cross-validation over the non-test data (``folds`` or ``data.cv``), stratified
    (or grouped by ``data.group_by``); each fold is a normal run directory ``fold-<i>`` inside
    the CV run. Then one model is trained on all non-test data and evaluated on the test
    split, once (``final``; ``final=False``, a tuning trial, leaves it to :func:`finish`).
    Returns the CV summary (also ``summary.json`` of the CV run).
    """
    cfg = load_config(config, merge_overrides(overrides, kwargs))
    k = folds if folds is not None else cfg.data.cv
    if k is None or isinstance(k, bool) or int(k) < 2:
        raise ConfigError(f"--cv: expected a number of folds of at least 2, got {k!r}. Fix: e.g. --cv 5.")
    k = int(k)
    cfg = adopt_source(load_config(cfg, {"data.cv": k}))
    root = RunDir(run_dir or new_run_dir(f"{cfg.name}-cv", runs_root))
    if root.summary.exists() or root.config.exists():
        raise ConfigError(f"--run-dir {root.path}: a run already lives there. Choose another directory.")
    per_fold: list[dict[str, Any]] = []
    task: Task | None = None
    for i in range(k):
        data = prepare_data(cfg, fold=(k, i))
        if i == 0:  # every fold and the final model train the model the data's size chooses
            cfg = choose_model(cfg, data.input_shape, log=True, train_size=len(data.train))
            root.create()
            atomic_write(root.config, dump_config(cfg))
        print(f"fold {i + 1}/{k}", flush=True)
        run = _start(cfg, data, root.path / f"fold-{i + 1}")
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
    if final:
        _final_model(cfg, root, summary)
    else:
        root.write_json(root.summary, summary)
    return summary


def _final_model(cfg: Config, root: RunDir, summary: dict[str, Any]) -> None:
    """A cross-validation's final model: trained on all non-test data, evaluated on the test split once."""
    print("final model: all non-test data", flush=True)
    final = _fit(cfg, *_start(cfg, prepare_data(cfg, fold=(summary["folds"], None)), root.path / "final"), resume=False)
    summary["test"] = final.summary["test"]
    summary["final_run"] = "final"
    root.write_json(root.summary, summary)


def _start(cfg: Config, data: PreparedData, path: Path) -> tuple[PreparedData, nn.Module, RunDir]:
    """A new run directory for ``data`` with its config and data record, and a fresh model."""
    cfg = choose_model(cfg, data.input_shape, train_size=len(data.train))
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = new_model(cfg, data.input_shape, data.task, data.info)
    run = RunDir(path).create()
    atomic_write(run.config, dump_config(cfg))
    run.write_json(run.data, _data_record(cfg, data))
    if data.save is not None:
        data.save(run.path)
    return data, model, run


def _data_record(cfg: Config, data: PreparedData) -> dict[str, Any]:
    """data.json: the data's record and, for a model from outside deepworks, where it came from (its
    module's file and SHA-256), which loading the run checks (models/external.py)."""
    source = model_source(cfg.model.name)
    return {**data.info, "model_source": source} if source is not None else data.info


def resume(run_dir: str | Path) -> Run:
    """Continue an interrupted run from its last checkpoint."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    cfg = run_config(run.path)
    if is_adversarial(cfg.model.name):
        raise ConfigError(f"{run.path}: a GAN run resumes in its own loop. Fix: deepworks.resume(run_dir) (or "
                          "`deepworks train --resume RUN_DIR`) routes it there.")
    if run.summary.exists() and not run.checkpoint.exists():
        raise CheckpointError(f"{run.path}: this run has no checkpoint to resume from.")
    if run.summary.exists() and "test" in run.read_json(run.summary):
        print(f"{run.path}: the run is already complete; nothing to resume.", flush=True)
        return load_run(run.path)
    check_trackers(cfg.train)
    data = prepare_data(cfg)
    check_same_data(run, data)
    if data.save is not None:  # a run killed before its tokenizer's files were written has them now
        data.save(run.path)
    torch.manual_seed(cfg.seed)
    model = new_model(cfg, data.input_shape, data.task, data.info)
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
    callbacks: Sequence[Callback] = (), trial: bool = False,
) -> Run:
    transfer = None
    if isinstance(model, Transfer):
        callbacks = [TransferStages(model), *callbacks]
        data, transfer = _transfer_data(cfg, data, model)
    balance_classes(cfg, data)
    trackers = _trackers(cfg, data, run, callbacks)
    trainer = Trainer(
        model, cfg.train, run_dir=run.path, task=data.task, seed=cfg.seed, augment=_augment(cfg, data),
        callbacks=[*callbacks, *trackers], checkpoints=not trial, evaluate_train=not trial or _tuned_on_train(cfg),
    )
    test = test and not trial
    try:
        history = trainer.fit(data.train, data.val if len(data.val) else None, resume=resume)
    except BaseException as exc:
        for tracker in trackers:
            tracker.end(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        if isinstance(exc, TrainingError) and test:  # a divergence: say why in summary.json and on the console
            trainer.summary = {"task": data.task.name, "epochs_run": trainer.epoch, "diverged": str(exc)}
            _diagnose(cfg, data, trainer, run, error=str(exc))
            if cfg.report and distributed_context().is_main:
                write_run_report(run)  # the page shows the curves up to the divergence and the diagnosis
        raise
    if not test:  # a cross-validation fold or a tuning trial: validation figures only
        if isinstance(model, Transfer):
            model.reads_features = False
        files = [] if trial else [run.config, run.summary, run.best]  # a trial logs params and metrics only
        _end_trackers(trackers, trainer.summary, files)
        return Run(run.path, cfg, trainer.model, data.classes, history, trainer.summary, data.task)
    return _complete(cfg, data, model, trainer, run, transfer, history, trackers)


def _trackers(cfg: Config, data: PreparedData, run: RunDir, given: Sequence[Callback]) -> list[Tracker]:
    """The run's trackers (train.track, :mod:`deepworks.training.tracking`) that the caller did not
    give, and every tracker described: the resolved config as flat params, the run's tags."""
    import yaml

    from deepworks.version import __version__

    given = [cb for cb in given if isinstance(cb, Tracker)]
    # the Trainer makes the tensorboard one, in its place among the callbacks
    built = build_trackers(cfg.train, cfg.mlflow, skip=[*(t.name for t in given), "tensorboard"],
                           default_experiment=cfg.name)
    params = flat_params(yaml.safe_load(dump_config(cfg)))
    tags = {"task": data.task.name, "model": cfg.model.name, "data_fingerprint": data.info.get("split_fingerprint"),
            "deepworks_version": __version__, "run_dir": str(run.path.resolve())}
    for tracker in (*given, *built):
        tracker.describe(params, tags)
    return built


def _end_trackers(trackers: Sequence[Tracker], summary: dict[str, Any], files: Sequence[Path]) -> None:
    """The run's end for its trackers: the final metrics of ``summary`` and the ``files`` there are."""
    if trackers and distributed_context().is_main:
        existing = [Path(f) for f in files if Path(f).is_file()]
        for tracker in trackers:
            tracker.end(final_metrics(summary), existing)


def _tuned_on_train(cfg: Config) -> bool:
    """Whether a tuning trial is scored on the training split's figures (tune.metric train_...)."""
    metric = cfg.tune.metric if cfg.tune is not None else None
    metrics = metric if isinstance(metric, (list, tuple)) else [metric]
    return any(str(m).startswith("train_") for m in metrics if m)


def finish(run_dir: str | Path) -> Run:
    """Complete a tuning trial's run (``train(..., trial=True)``) as a whole run: the kept model
    on every split (training figures, the test split once), predictions, baselines, the diagnosis
    and the report, as :func:`train` writes them at the end of a run."""
    run = RunDir(run_dir)
    cfg = run_config(run.path)
    summary = run.read_json(run.summary) if run.summary.exists() else None
    if summary is not None and "folds" in summary:  # a cross-validation: its final model
        if summary.get("test") is None:
            _final_model(cfg, run, summary)
        return load_run(run.path / "final")
    if summary is None or summary.get("test") is not None:
        return load_run(run.path)  # unfinished (nothing to complete), or complete already
    data = prepare_data(cfg)
    check_same_data(run, data)
    model = new_model(cfg, data.input_shape, data.task, data.info, load=False)
    load_model_weights(model, run.best)
    transfer = None
    if isinstance(model, Transfer):
        data, transfer = _transfer_data(cfg, data, model)
    trainer = Trainer(model, cfg.train, run_dir=run.path, task=data.task, seed=cfg.seed)
    trainer.history = run.read_metrics()
    trainer.summary = {**summary, "train": trainer.task.compact(trainer.evaluate(data.train)),
                       "val": trainer.task.compact(trainer.evaluate(data.val, keep="val")) if len(data.val) else None}
    run.write_json(run.summary, trainer.summary)
    return _complete(cfg, data, model, trainer, run, transfer, trainer.history)


def _complete(
    cfg: Config, data: PreparedData, model: nn.Module, trainer: Trainer, run: RunDir, transfer: dict[str, Any] | None,
    history: list[dict[str, Any]], trackers: Sequence[Tracker] = (),
) -> Run:
    """The end of a run after training: the test split (touched once, here), predictions,
    baselines, the diagnosis and the report; then the trackers' end (final metrics, the run's files)."""
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
    elif kind_of_record(data.info) == "image":
        recorded["skipped_files"] = {"count": 0, "files": []}  # in memory: every file was decoded before training
    if recorded:
        trainer.summary["data"] = recorded
        if distributed_context().is_main:
            run.write_json(run.summary, trainer.summary)
    if kind_of_record(data.info) in ("table", "text", "embeddings", "subwords"):
        _record_baselines(trainer, data, run, cfg.seed)
    elif kind_of_record(data.info) == "series":
        _record_forecast_baselines(trainer, data, run)
    _diagnose(cfg, data, trainer, run)
    if cfg.report and distributed_context().is_main:
        write_run_report(run)
    _end_trackers(trackers, trainer.summary, [run.path / "report.html", run.summary, run.best, run.config])
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
        what = "texts" if kind_of_record(data.info) == "subwords" else "images"
        print(f"features: the frozen body ran once over {images} {what} ({dim} features each, {precision.name}) in "
              f"{seconds:.1f} s; each epoch now trains the head alone", flush=True)
    model.reads_features = True
    record["feature_cache"] = {"images": images, "features": dim, "seconds": round(seconds, 2), "precision": precision.name}
    return replace(data, **parts), record


def _diagnose(cfg: Config, data: PreparedData, trainer: Trainer, run: RunDir, error: str | None = None) -> None:
    """The diagnosis (:mod:`deepworks.evaluation.diagnosis`) of the run just trained, from what is
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


def write_run_report(run: RunDir) -> None:
    """``report.html`` at the end of a run (config ``report: false`` turns it off)."""
    from deepworks.reporting import write_report

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
    if "val" in trainer.outputs and data.task.name == "classification" and kind_of_record(data.info) == "image":
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
    # the final model of a cross-validation trains on all non-test data: its validation split is empty
    scored = [split for split in ("val", "test") if len(getattr(data, split).y)]
    if data.raw is not None:
        texts = {split: (data.raw[split], getattr(data, split).y) for split in scored}
        baselines = text_baselines(data.task, (data.raw["train"], data.train.y), texts, seed=seed)
    else:
        splits = {split: (getattr(data, split).x, getattr(data, split).y) for split in scored}
        # a table's slots: the linear models read the features the network sees (one-hot, indicators)
        baselines = tabular_baselines(data.task, (data.train.x, data.train.y), splits, seed=seed,
                                      features=baseline_features(data.info))
        if len(data.train) > MAX_FIT_ROWS:
            trainer.summary["baselines_fitted_on"] = MAX_FIT_ROWS
            print(f"baselines: the linear model is fitted on {MAX_FIT_ROWS} of the {len(data.train)} training rows "
                  "(a seeded sample)", flush=True)
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


def check_same_data(run: RunDir, data: PreparedData) -> None:
    saved = run.read_json(run.data)
    if saved.get("split_fingerprint") != data.info["split_fingerprint"]:
        warnings.warn(
            f"{run.data}: the data has changed since this run was trained (its split differs); "
            "figures computed now are not comparable with the run's.",
            stacklevel=2,
        )


def evaluate(run_dir: str | Path, split: str = "test", *, source: Any = None) -> dict[str, Any]:
    """The full report of the run's best model on ``split`` (val or test): per class for
    classification runs, per target for regression runs. A run trained on data given in Python
    is given the same data again (``source``, checked against the run's fingerprint)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: expected train, val or test, got {split!r}.")
    loaded = load_run(run_dir)
    run = RunDir(run_dir)
    torch.manual_seed(loaded.config.seed)
    with given_again(loaded.config, source, str(run.path), "evaluate"):
        data = prepare_data(loaded.config)
    check_same_data(run, data)
    trainer = Trainer(loaded.model, loaded.config.train.model_copy(update={"progress": "none"}), task=loaded.task)
    report = trainer.evaluate(getattr(data, split))
    report["split"] = split
    return report
