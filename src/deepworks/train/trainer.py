"""The training loop: bring an ``nn.Module`` and data, get checkpoints, metrics and a run directory.

>>> import torch
>>> from deepworks import Trainer
>>> x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 2
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
>>> history = Trainer(model, {"epochs": 2, "progress": "none"}).fit((x, y), (x, y))
>>> len(history)
2
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from deepworks.config import TrainConfig, format_errors
from deepworks.data.loaders import TensorData, as_data, iterate_batches
from deepworks.errors import CheckpointError, ConfigError, ShapeError
from deepworks.evaluate.metrics import MetricAccumulator, classification_report
from deepworks.runs import CHECKPOINT_FORMAT, RunDir, atomic_write, load_tensors, pack_state, save_tensors, unpack_state, versions
from deepworks.runtime import resolve_device, seed_everything, set_deterministic
from deepworks.train.callbacks import Callback, EarlyStopping, ProgressLogger, better
from deepworks.train.optim import build_optimizer
from deepworks.train.step import eval_step, train_step

__all__ = ["Trainer", "MODEL_FORMAT", "load_model_weights"]

MODEL_FORMAT = "deepworks-model-1"


class Trainer:
    """Train a classifier with checkpoints, a metrics log and the best model kept.

    ``config`` is a :class:`TrainConfig`, a mapping of its keys, or None (defaults);
    keyword ``overrides`` replace single keys. With ``run_dir`` everything is written
    there (config, metrics, checkpoints, best model, summary) and the run can be resumed.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | Mapping[str, Any] | None = None,
        *,
        run_dir: str | Path | None = None,
        classes: Sequence[str] | None = None,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        **overrides: Any,
    ):
        if isinstance(config, TrainConfig):
            raw = config.model_dump()
        else:
            raw = dict(config or {})
        raw.update(overrides)
        try:
            self.config = TrainConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc.errors(), "Trainer config", ("train",), TrainConfig)) from None
        from deepworks.train.optim import OPTIMIZERS

        opt = OPTIMIZERS.entry(self.config.optimizer.name, where="train.optimizer.name")
        if opt.params is not None:
            try:
                opt.params.model_validate(self.config.optimizer.params)
            except ValidationError as exc:
                raise ConfigError(
                    format_errors(exc.errors(), "Trainer config", ("train", "optimizer"), opt.params)
                ) from None
        self.model = model
        self.classes = list(classes) if classes is not None else None
        self.seed = seed
        self.run = RunDir(run_dir).create() if run_dir is not None else None
        self.device = resolve_device(self.config.device)
        self.callbacks: list[Callback] = [ProgressLogger(self.config.progress)]
        if self.config.early_stopping is not None:
            es = self.config.early_stopping
            self.callbacks.append(EarlyStopping(es.monitor, es.patience, es.min_delta, es.mode))
        self.callbacks += list(callbacks)
        self.stop_training = False
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # batches done in the current epoch
        self.global_step = 0
        self.steps_per_epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wall_seconds = 0.0
        self._accumulator: MetricAccumulator | None = None
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ public

    def fit(self, train: Any, val: Any = None, *, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs (or until early stopping) and keep the best model.

        ``train``/``val`` are ``(x, y)`` tensors, a ``TensorDataset`` or a ``Dataset`` of
        ``(x, y)`` samples. With ``resume=True`` the loop continues from the run directory's
        last checkpoint and ends with the same weights as an uninterrupted run.
        """
        cfg = self.config
        seed_everything(self.seed)
        set_deterministic(cfg.deterministic)
        train_data = self._to_device(as_data(train, "train data"))
        val_data = self._to_device(as_data(val, "validation data")) if val is not None else None
        if val_data is None and cfg.monitor.startswith("val_"):
            # without validation data the best model is judged on the training metrics
            cfg = self.config = cfg.model_copy(update={"monitor": cfg.monitor.replace("val_", "train_", 1)})
        self.model.to(self.device)
        self.num_classes = self._check_shapes(train_data)
        self.optimizer = build_optimizer(cfg.optimizer.name, self.model.parameters(), **cfg.optimizer.params)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()
        self.steps_per_epoch = -(-len(train_data) // cfg.batch_size)
        self._accumulator = MetricAccumulator(self.num_classes, self.device)
        if resume:
            self._load_checkpoint()
        elif self.run is not None:
            self.run.metrics.unlink(missing_ok=True)
            if not self.run.config.exists():  # a Trainer used on its own: keep its resolved settings
                atomic_write(self.run.path / "trainer.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < cfg.epochs and not self.stop_training:
                self._run_epoch(train_data, val_data)
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        if self.run is not None and self.run.best.exists():
            load_model_weights(self.model, self.run.best)
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        if self.run is not None:
            self._write_summary(train_data, val_data)
        return self.history

    def evaluate(self, data: Any, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Accuracy, per-class and macro precision/recall/F1, loss and the confusion matrix."""
        data = self._to_device(as_data(data, "evaluation data"))
        num_classes = getattr(self, "num_classes", None) or self._check_shapes(data)
        acc = MetricAccumulator(num_classes, self.device)
        self.model.to(self.device).eval()
        loss_fn = nn.CrossEntropyLoss()
        for xb, yb in iterate_batches(data, self.config.eval_batch_size, shuffle=False, device=self.device):
            loss, logits = eval_step(self.model, xb, yb, loss_fn)
            acc.update(logits, yb, loss)
        names = list(classes or self.classes or [str(i) for i in range(num_classes)])
        return classification_report(acc.confusion(), names, loss=acc.compute()["loss"])

    def log(self, message: str) -> None:
        if self.config.progress != "none":
            print(message, flush=True)

    # ------------------------------------------------------------------ the loop

    _best_state: dict[str, torch.Tensor] | None = None

    def _run_epoch(self, train_data: Any, val_data: Any) -> None:
        cfg = self.config
        epoch = self.epoch + 1
        started = segment = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_begin(self, epoch)
        self.model.train()
        acc = self._accumulator
        batches = iterate_batches(
            train_data, cfg.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
            start_batch=self.step_in_epoch, device=self.device,
        )
        for xb, yb in batches:
            loss, logits = train_step(self.model, xb, yb, self.optimizer, self.loss_fn)
            acc.update(logits, yb, loss)
            self.step_in_epoch += 1
            self.global_step += 1
            for cb in self.callbacks:
                cb.on_batch_end(self, self.global_step)
            if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                now = time.perf_counter()
                self.wall_seconds, segment = self.wall_seconds + now - segment, now
                self._save_checkpoint()

        logs: dict[str, Any] = {"epoch": epoch}
        logs.update({f"train_{k}": v for k, v in acc.compute().items()})
        if val_data is not None:
            report = self._evaluate_data(val_data)
            logs.update({f"val_{k}": report[k] for k in ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1")})
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        value = logs.get(cfg.monitor)
        logs["best"] = better(cfg.monitor, "auto", value, self.best)
        if logs["best"]:
            self.best, self.best_epoch = value, epoch
            self._save_best()
        self.epoch, self.step_in_epoch = epoch, 0
        acc.reset()
        self.wall_seconds += time.perf_counter() - segment
        logs["seconds"] = round(time.perf_counter() - started, 3)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        self.history.append(logs)
        if self.run is not None:
            # metrics line first, checkpoint last: the checkpoint is the commit point, and
            # resume drops metric lines of epochs the checkpoint does not cover
            self.run.append_metrics(logs)
            self._save_checkpoint()

    def _evaluate_data(self, data: Any) -> dict[str, Any]:
        acc = MetricAccumulator(self.num_classes, self.device)
        self.model.eval()
        for xb, yb in iterate_batches(data, self.config.eval_batch_size, shuffle=False, device=self.device):
            loss, logits = eval_step(self.model, xb, yb, self.eval_loss_fn)
            acc.update(logits, yb, loss)
        self.model.train()
        return acc.compute()

    # ------------------------------------------------------------------ helpers

    def _to_device(self, data: Any) -> Any:
        return data.to(self.device) if isinstance(data, TensorData) else data

    def _check_shapes(self, data: Any) -> int:
        """One forward pass before training: the model must give (B, K) logits for the labels."""
        xb, yb = next(iterate_batches(data, min(len(data), 8), shuffle=False, device=self.device))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(xb)
        except RuntimeError as exc:
            raise ShapeError(
                f"model: a batch of inputs shaped {tuple(xb.shape)} does not fit the model "
                f"({str(exc).splitlines()[0][:200]}). Check the model's input size against the data."
            ) from None
        finally:
            self.model.train(was_training)
        if out.ndim != 2:
            raise ShapeError(f"model: expected logits shaped (batch, classes), got {tuple(out.shape)}.")
        num_classes = out.shape[1]
        if self.classes is not None and len(self.classes) != num_classes:
            raise ShapeError(f"model: it has {num_classes} outputs but there are {len(self.classes)} classes.")
        if isinstance(data, TensorData):
            low, high = int(data.y.min()), int(data.y.max())
            if low < 0 or high >= num_classes:
                raise ShapeError(
                    f"labels: they range over {low}..{high} but the model has {num_classes} outputs "
                    f"(classes 0..{num_classes - 1}). Give the model one output per class."
                )
        return num_classes

    def _save_best(self) -> None:
        if self.run is None:
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return
        meta = {"format": MODEL_FORMAT, "epoch": str(self.epoch + 1), "monitor": self.config.monitor, "value": repr(self.best)}
        save_tensors(self.run.best, self.model.state_dict(), metadata=meta)

    def _save_checkpoint(self) -> None:
        if self.run is None:
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wall_seconds": self.wall_seconds,
            "monitor": self.config.monitor,
            "optimizer": pack_state(self.optimizer.state_dict(), tensors, "optimizer"),
            "rng": pack_state(rng, tensors, "rng"),
            "accumulator": pack_state(self._accumulator.state_dict(), tensors, "accumulator"),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        save_tensors(self.run.checkpoint, tensors, metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(state)})

    def _load_checkpoint(self) -> None:
        if self.run is None:
            raise CheckpointError("resume: the Trainer has no run_dir to resume from.")
        path = self.run.checkpoint
        if not path.exists():
            raise CheckpointError(
                f"{path}: no checkpoint to resume from (the run stopped before its first checkpoint). "
                "Start the run again."
            )
        tensors, meta = load_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a deepworks checkpoint (format {meta.get('format')!r}); refused.")
        try:
            state = json.loads(meta["state"])
            weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(weights, strict=True)
            self.optimizer.load_state_dict(unpack_state(state["optimizer"], tensors))
            rng = unpack_state(state["rng"], tensors)
            self._accumulator.load_state_dict(unpack_state(state["accumulator"], tensors))
            for cb, cb_state in zip(self.callbacks, state["callbacks"], strict=False):
                cb.load_state_dict(cb_state)
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step, self.wall_seconds = int(state["global_step"]), float(state["wall_seconds"])
            self.best, self.best_epoch = state["best"], state["best_epoch"]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: the checkpoint does not match this run's model or is damaged "
                f"({str(exc).splitlines()[0][:160]}); refused. Start the run again."
            ) from None
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.history = self.run.truncate_metrics(self.epoch)
        self.log(f"resumed {self.run.path} at epoch {self.epoch} step {self.step_in_epoch}")

    def _write_summary(self, train_data: Any, val_data: Any) -> None:
        summary = {
            "train": _compact(self.evaluate(train_data)),
            "val": _compact(self.evaluate(val_data)) if val_data is not None else None,
            "epochs_run": self.epoch,
            "best_epoch": self.best_epoch,
            "monitor": self.config.monitor,
            "stopped_early": self.epoch < self.config.epochs,
            "wall_seconds": round(self.wall_seconds, 3),
            "device": str(self.device),
            "versions": versions(),
        }
        self.summary = summary
        self.run.write_json(self.run.summary, summary)

    def record_test(self, report: dict[str, Any]) -> None:
        """Add the test figures to ``summary.json`` (the test split is touched once, at the end)."""
        self.summary["test"] = _compact(report)
        self.summary["test_report"] = "test_report.json"
        if self.run is not None:
            self.run.write_json(self.run.summary, self.summary)
            self.run.write_json(self.run.path / "test_report.json", report)


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "support")
    return {k: report[k] for k in keys if k in report}


def load_model_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a ``model.safetensors`` written by deepworks into ``model`` (strict, no pickle)."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a deepworks model file (format {meta.get('format')!r}); refused.")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not fit the model of this run's config.yaml "
            f"({str(exc).splitlines()[0][:160]}). Was config.yaml edited after training?"
        ) from None
    return model
