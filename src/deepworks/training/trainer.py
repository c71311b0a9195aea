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

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from deepworks.config import OptimizerConfig, TrainConfig, format_errors, resolve_components
from deepworks.data.loaders import TensorData, as_data, evaluation_order, iterate_batches
from deepworks.errors import CheckpointError, ConfigError, ShapeError, TrainingError
from deepworks.runs import (
    RunDir, atomic_write, load_tensors, pack_state, read_checkpoint, restore_rng_state, rng_state, save_tensors, unpack_state,
    versions, write_checkpoint,
)
from deepworks.runtime import (
    all_reduce_sum,
    barrier,
    broadcast_module,
    broadcast_object,
    distributed_context,
    gather_objects,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_deterministic,
)
from deepworks.training.callbacks import Callback, EarlyStopping, ProgressLogger, better
from deepworks.training.gradients import GradientMonitor, first_nonfinite_layer
from deepworks.training.memory import check_batch_memory, device_memory, inference_batch_size
from deepworks.training.optim import FULL_BATCH, build_optimizer
from deepworks.training.regularization import penalized_weights, weight_penalty
from deepworks.training.schedules import build_schedule
from deepworks.training.step import eval_step, train_step, with_tta
from deepworks.training.tasks import Task, resolve_task
from deepworks.training.tracking import Tracker, build_trackers, final_metrics

__all__ = ["Trainer", "MODEL_FORMAT", "load_model_weights"]

MODEL_FORMAT = "deepworks-model-1"


class Trainer:
    """Train a model with checkpoints, a metrics log and the best model kept.

    ``config`` is a :class:`TrainConfig`, a mapping of its keys, or None (defaults);
    keyword ``overrides`` replace single keys. With ``run_dir`` everything is written
    there (config, metrics, checkpoints, best model, summary) and the run can be resumed.
    ``task`` says what is learned (:mod:`deepworks.training.tasks`): a :class:`Task`,
    ``"classification"`` (the default, with ``classes`` as its class names) or
    ``"regression"``; it supplies the loss, the metrics and the monitored metric.
    ``order``: ``order(epoch, n)`` gives the training samples' order for each epoch (1-based),
    instead of deepworks' own seeded shuffle, e.g. to match a hand-written loop's batches
    (see :func:`~deepworks.data.loaders.iterate_batches`); it must answer the same for the same
    epoch, or a resumed run would not skip the batches it trained on.
    ``checkpoints=False`` writes no checkpoint (a run that is never resumed: a tuning trial);
    ``evaluate_train=False`` leaves the training split's figures out of ``summary.json`` (a
    pass over the training data that only the report reads).
    ``train.track`` names experiment trackers (:mod:`deepworks.training.tracking`): the Trainer makes
    each one that ``callbacks`` does not already hold (a :class:`Tracker` of that name, e.g. an
    :class:`MlflowTracker` with its own server) and ends it when ``fit`` ends; a tracker given in
    ``callbacks`` is the caller's to end.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | Mapping[str, Any] | None = None,
        *,
        run_dir: str | Path | None = None,
        classes: Sequence[str] | None = None,
        task: Task | str | None = None,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        augment: Callable[..., torch.Tensor] | None = None,
        order: Callable[[int, int], Any] | None = None,
        checkpoints: bool = True,
        evaluate_train: bool = True,
        **overrides: Any,
    ):
        if isinstance(config, TrainConfig):
            raw = config.model_dump()
        else:
            raw = dict(config or {})
        raw.update(overrides)
        try:
            config = TrainConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc.errors(), "Trainer config", ("train",), TrainConfig)) from None
        config = resolve_components(config, ("train",), "Trainer config")  # optimizer and schedule params
        self.task = resolve_task(task, classes)
        monitor = self.task.check_monitor(config.monitor, "train.monitor")
        es = config.early_stopping
        if es is not None:
            es = es.model_copy(update={"monitor": self.task.check_monitor(es.monitor, "train.early_stopping.monitor")})
        self.config = config.model_copy(update={"monitor": monitor, "early_stopping": es})
        self.model = model
        self.seed = seed
        self.dist = distributed_context()  # rank 0 of 1 unless launched by torchrun
        self.run = RunDir(run_dir) if run_dir is not None else None
        self.writes = self.run is not None and self.dist.is_main  # only rank 0 writes the run directory
        if self.writes:
            self.run.create()
        self.device = resolve_device(self.config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        progress = self.config.progress if self.dist.is_main else "none"
        self.callbacks: list[Callback] = [ProgressLogger(progress)]
        if self.config.early_stopping is not None:
            es = self.config.early_stopping
            self.callbacks.append(EarlyStopping(es.monitor, es.patience, es.min_delta, es.mode))
        # train.track's trackers that the caller did not give (tensorboard's place, before the caller's callbacks)
        self.trackers = build_trackers(self.config, skip=[cb.name for cb in callbacks if isinstance(cb, Tracker)])
        self.callbacks += self.trackers
        self.callbacks += list(callbacks)
        self.augment = augment  # augment(x, epoch=, step=, rank=) -> x, on training batches only
        self.order = order  # order(epoch, n) -> sample indices of a training epoch, or None: the seeded shuffle
        self.checkpoints, self.evaluate_train = checkpoints, evaluate_train
        self.stop_training = False
        self.resumed = False  # fit(resume=True): the trackers re-open their runs
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # batches done in the current epoch
        self.global_step = 0
        self.steps_per_epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wall_seconds = 0.0
        self._accumulator: Any = None  # the task's metric accumulator for the running epoch
        self.summary: dict[str, Any] = {}
        self.lr_find: Any = None  # the range test's result when lr is auto
        self.validated: bool | None = None  # whether the current epoch ran its validation pass
        self.outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # evaluate(keep=...): split -> (outputs, targets)

    # ------------------------------------------------------------------ public

    def fit(self, train: Any, val: Any = None, *, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs (or until early stopping) and keep the best model.

        ``train``/``val`` are ``(x, y)`` tensors, a ``TensorDataset`` or a ``Dataset`` of
        ``(x, y)`` samples. With ``resume=True`` the loop continues from the run directory's
        last checkpoint and ends with the same weights as an uninterrupted run.
        """
        cfg = self.config
        seed_everything(self.seed + self.dist.rank)  # each process its own dropout masks
        set_deterministic(cfg.deterministic)
        train_data = self._as_data(train, "train data")
        val_data = self._as_data(val, "validation data") if val is not None else None
        if cfg.batch_size == "auto":  # a Trainer used on its own (deepworks.train resolves it before training)
            cfg = self.config = check_batch_memory(cfg, self.model, train_data, world_size=self.dist.world_size)
        if cfg.optimizer.params.get("lr") == "auto":
            cfg = self._find_lr(train_data)
        if val_data is None and cfg.monitor.startswith("val_"):
            # without validation data the best model is judged on the training metrics
            cfg = self.config = cfg.model_copy(update={"monitor": cfg.monitor.replace("val_", "train_", 1)})
        self._prepare(train_data)
        self.resumed = resume
        if resume:
            self._load_checkpoint()
        elif self.writes:
            self.run.metrics.unlink(missing_ok=True)
            self.run.gradients.unlink(missing_ok=True)
            if not self.run.config.exists():  # a Trainer used on its own: keep its resolved settings
                atomic_write(self.run.path / "trainer.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < cfg.epochs and not self.stop_training:
                self._run_epoch(train_data, val_data)
        except BaseException as exc:
            for tracker in self.trackers:
                tracker.end(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        barrier()  # rank 0 has written the best model
        if self.dist.enabled and self.run is not None:
            # rank 0's file, sent to the others: their nodes need not see the run directory
            if broadcast_object(self.run.best.exists() if self.writes else None):
                if self.writes:
                    load_model_weights(self.model, self.run.best)
                broadcast_module(self.model)
        elif self.run is not None and self.run.best.exists():
            load_model_weights(self.model, self.run.best)
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        if self.run is not None:
            self._write_summary(train_data, val_data)
        files = [p for p in (self.run.best, self.run.summary) if p.exists()] if self.writes else []
        for tracker in self.trackers:  # the ones this Trainer made; the caller ends its own
            tracker.end(final_metrics(self.summary), files)
        return self.history

    def _find_lr(self, train_data: Any) -> TrainConfig:
        """``lr: auto``: a range test on a copy of the model picks the learning rate (see
        :mod:`deepworks.training.lr_finder`); the run's config then holds the number."""
        from deepworks.training.lr_finder import find_lr

        result = find_lr(self.model, train_data, self.config, task=self.task, seed=self.seed, augment=self.augment)
        self.lr_find = result
        optimizer = OptimizerConfig.model_validate(
            {"name": self.config.optimizer.name, **self.config.optimizer.params, "lr": result.suggestion}
        )
        self.config = self.config.model_copy(update={"optimizer": optimizer})
        self.log(f"lr: auto -> {result.suggestion:.3g} (learning-rate range test, {result.steps} steps)")
        return self.config

    def evaluate(self, data: Any, keep: str | None = None) -> dict[str, Any]:
        """The task's full report on ``data``: for classification accuracy, per-class and macro
        precision/recall/F1, loss and the confusion matrix; for regression MAE, RMSE, R² and loss.

        ``keep`` names the split: its model outputs and targets are kept on the CPU in
        ``self.outputs[keep]`` (single-process runs), for the report and the diagnosis."""
        data = self._as_data(data, "evaluation data")
        self.model.to(self.device)
        self._check_shapes(data)
        precision = getattr(self, "precision", None) or resolve_precision(
            self.config.precision, self.device, self.model, self.config.channels_last
        )
        kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep and not self.dist.enabled else None
        report = self.task.report(self._accumulate(data, with_tta(self.model, self.config.tta), precision, kept))
        if kept is not None:
            outputs, targets = torch.cat([o for o, _ in kept]), torch.cat([t for _, t in kept])
            order = evaluation_order(data)  # sequences were visited by length: back to the stored order
            if order is not None:
                back = order.argsort()
                outputs, targets = outputs[back], targets[back]
            self.outputs[keep] = (outputs, targets)
        return report

    def eval_batch_size(self, sample_numel: int | None = None) -> int:
        """``train.eval_batch_size``; for auto the largest batch up to 512 whose forward pass fits
        the memory free on the device, estimated from the model's layers
        (:func:`~deepworks.training.memory.inference_batch_size`), never below batch_size. Before
        the model has seen a batch (or for inputs of another size, ``sample_numel``) about 64 MB
        of float32 input per batch instead (a 224x224 RGB photo gives 111)."""
        size = self.config.eval_batch_size
        if size != "auto":
            return int(size)
        floor = self.config.batch_size if isinstance(self.config.batch_size, int) else 1
        shape = getattr(self, "_sample_shape", None)
        if shape is None or (sample_numel is not None and sample_numel != math.prod(shape)):
            numel = sample_numel or getattr(self, "_sample_numel", None) or 1
            return max(floor, min(512, (64 << 20) // (4 * numel)))
        key = (shape, self._sample_dtype)
        if getattr(self, "_eval_batch", (None, 0))[0] != key:
            found = inference_batch_size(self.model, shape, device_memory(self.device), cap=512,
                                         input_dtype=self._sample_dtype)
            self._eval_batch = (key, found)
        return max(floor, self._eval_batch[1])

    def log(self, message: str) -> None:
        if self.config.progress != "none" and self.dist.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------ the loop

    def _prepare(self, train_data: Any) -> None:
        """Device, precision, optimizer, schedule, penalties and monitors for this run."""
        cfg = self.config
        self.model.to(self.device)
        self._check_shapes(train_data)
        full_batch = cfg.optimizer.name in FULL_BATCH
        if full_batch and cfg.precision in ("bf16", "fp16"):
            raise ConfigError(
                f"train.precision: {cfg.precision} with train.optimizer: {cfg.optimizer.name}: its line search needs "
                "exact loss values. Fix: train.precision: fp32 (or auto)."
            )
        # auto: a line search on a low-precision loss stalls, so full-batch optimizers run in fp32
        self.precision = resolve_precision(
            "fp32" if full_batch else cfg.precision, self.device, self.model, "off" if full_batch else cfg.channels_last
        )
        if self.precision.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        # a model may ask for parameter groups (transfer learning: the body at a fraction of the head's lr)
        groups = self.model.optimizer_groups() if hasattr(self.model, "optimizer_groups") else None
        if groups is not None and full_batch and len(groups) > 1:
            raise ConfigError(
                f"train.optimizer: {cfg.optimizer.name} takes one learning rate for all parameters, but the model "
                "asks for several (transfer.backbone_lr_scale). Fix: an optimizer such as adamw or sgd."
            )
        self.optimizer = build_optimizer(
            cfg.optimizer.name, groups if groups is not None else self.model.parameters(), device=self.device,
            **cfg.optimizer.params,
        )
        for group in self.optimizer.param_groups:  # lr_scale: this group's lr as a fraction of the configured one
            group["lr"] = group["lr"] * group.setdefault("lr_scale", 1.0)
        labels = getattr(train_data, "y", None)  # in-memory or streamed: class counts for class weights
        labels = labels if isinstance(labels, torch.Tensor) else None
        self.loss_fn = self.task.loss(cfg, labels).to(self.device)
        shard = len(train_data) // self.dist.world_size
        if full_batch and cfg.accumulate > 1:
            raise ConfigError(
                f"train.accumulate: {cfg.accumulate} with train.optimizer: {cfg.optimizer.name}, which takes the whole "
                "training set as one batch already. Fix: remove train.accumulate (or use an optimizer such as adamw)."
            )
        # full-batch optimizers (L-BFGS) take the whole shard as one batch: one step per epoch
        self.train_batch_size = max(1, shard) if cfg.optimizer.name in FULL_BATCH else cfg.batch_size
        self.shard_size = shard
        self.batches_per_epoch = -(-shard // self.train_batch_size)
        # train.accumulate: one optimizer step every `accumulate` batches (and after the epoch's last)
        self.steps_per_epoch = -(-self.batches_per_epoch // cfg.accumulate)
        self.forward_model = self._maybe_compile(self._maybe_ddp(), self.steps_per_epoch * cfg.epochs)
        self.schedule = build_schedule(
            cfg.schedule.name, self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs,
            warmup_steps=cfg.warmup_for(self.steps_per_epoch * cfg.epochs), **cfg.schedule.params,
        )
        weights = penalized_weights(self.model)
        self.penalty = None
        if cfg.l1 or cfg.l2:
            def penalty() -> torch.Tensor:
                value = weight_penalty(weights, cfg.l1, cfg.l2)
                if self._step_penalty is None:  # the step's starting point (L-BFGS evaluates several)
                    self._step_penalty = value.detach()
                return value

            self.penalty = penalty
        wide = torch.float64 if self.device.type != "mps" else torch.float32  # mps has no float64
        self._penalty_sum = torch.zeros((), dtype=wide, device=self.device)  # logged as train_objective - train_loss
        self._step_penalty: torch.Tensor | None = None
        self.gradients = GradientMonitor(self.model, cfg.log_gradients) if cfg.log_gradients else None
        # evaluation shards differ in size across processes, so it runs outside DDP
        self.eval_model = self.model if self.dist.enabled else self.forward_model
        self.ema = None
        if cfg.ema:  # an exponential moving average of the weights (buffers too: batch-norm statistics)
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            self.eval_model = self.ema.module
        self.eval_model = with_tta(self.eval_model, cfg.tta)
        self._accumulator = self.task.accumulator(self.device)

    _best_state: dict[str, torch.Tensor] | None = None

    def _run_epoch(self, train_data: Any, val_data: Any) -> None:
        cfg = self.config
        epoch = self.epoch + 1
        started = segment = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_begin(self, epoch)
        self.model.train()
        acc = self._accumulator
        batches = self._batches(
            train_data, self.train_batch_size, shuffle=True, epoch=epoch, start_batch=self.step_in_epoch
        )
        k = cfg.accumulate
        for xb, yb in batches:
            if self.augment is not None:  # seeded by (epoch, batch index in the epoch, rank): resumes exactly
                xb = self.augment(xb, epoch=epoch, step=self.step_in_epoch, rank=self.dist.rank)
            step = self.global_step + 1
            # train.accumulate: this batch's place in its optimizer step's group of batches
            first, last = self.step_in_epoch % k == 0, (self.step_in_epoch + 1) % k == 0
            last = last or self.step_in_epoch + 1 == self.batches_per_epoch
            watch = last and self.gradients is not None and self.gradients.due(step)
            # a model that can (the sequence models) keeps its input's gradient on recorded steps
            tracks = watch and hasattr(self.model, "input_grad_norms")
            if tracks:
                self.model.track_input_grads = True
            try:
                with self._no_sync(not last):
                    loss, logits = train_step(
                        self.forward_model, xb, yb, self.optimizer, self.loss_fn, self.precision, self.scaler,
                        penalty=self.penalty, clip_grad_norm=cfg.clip_grad_norm,
                        inspect_grads=(lambda: self._record_gradients(step, epoch)) if watch else None,
                        zero_grad=first, update=last, weight=self._group_share(len(yb)) if k > 1 else 1.0,
                    )
            finally:
                if tracks:
                    self.model.track_input_grads = False
            # a NaN/inf loss stops the run at once (on GPUs the check runs every 50 steps, to
            # keep the host from waiting on the device every step)
            if (self.device.type == "cpu" or step % 50 == 0) and not bool(torch.isfinite(loss)):
                self._diverged(step, epoch, xb)
            acc.update(logits, yb, loss)
            self.step_in_epoch += 1
            if not last:  # the gradients add up until the group's last batch
                for cb in self.callbacks:
                    cb.on_batch_end(self, self.global_step)
                continue
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if self._step_penalty is not None:
                self._penalty_sum += self._step_penalty.to(self._penalty_sum.dtype)
                self._step_penalty = None
            self.schedule.step_batch()
            self.global_step += 1
            for cb in self.callbacks:
                cb.on_batch_end(self, self.global_step)
            if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                now = time.perf_counter()
                self.wall_seconds, segment = self.wall_seconds + now - segment, now
                self._save_checkpoint()

        logs: dict[str, Any] = {"epoch": epoch}
        logs.update({f"train_{k}": v for k, v in self._reduced(acc).compute().items()})
        if self.penalty is not None and self.steps_per_epoch:
            # what the optimizer minimised: the data loss plus the mean L1/L2 penalty of the epoch's steps
            logs["train_objective"] = logs["train_loss"] + float(self._penalty_sum) / self.steps_per_epoch
            logs["train_penalty"] = float(self._penalty_sum) / self.steps_per_epoch
        # train.val_every: validate after every N-th epoch and after the last one
        self.validated = val_data is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs)
        if self.validated:
            report = self._evaluate_data(val_data)
            logs.update({f"val_{k}": report[k] for k in self.task.metrics})
        if not all(math.isfinite(v) for k, v in logs.items() if k.endswith("_loss") and v is not None):
            self._diverged(self.global_step, epoch, None)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.validated or val_data is None or not str(self.schedule.monitor or "").startswith("val_"):
            self.schedule.step_epoch(logs)  # a plateau schedule watching validation waits for it
        value = logs.get(cfg.monitor)
        # monitor "last": every epoch's weights replace the kept ones, so the final weights are kept
        logs["best"] = cfg.monitor == "last" or better(cfg.monitor, "auto", value, self.best)
        if logs["best"]:
            self.best, self.best_epoch = value, epoch
            self._save_best()
        self.epoch, self.step_in_epoch = epoch, 0
        acc.reset()
        self._penalty_sum.zero_()
        self.wall_seconds += time.perf_counter() - segment
        logs["seconds"] = round(time.perf_counter() - started, 3)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        self.history.append(logs)
        if self.writes:
            # metrics line first, checkpoint last: the checkpoint is the commit point, and
            # resume drops metric lines of epochs the checkpoint does not cover
            self.run.append_metrics(logs)
        self._save_checkpoint()

    def _evaluate_data(self, data: Any) -> dict[str, Any]:
        acc = self._accumulate(data, self.eval_model, self.precision)
        self.model.train()
        return acc.compute()

    def _accumulate(self, data: Any, model: nn.Module, precision: Any, kept: list | None = None) -> Any:
        """One pass over ``data`` in eval mode (this process's shard), summed over all processes;
        each batch's (outputs, targets) appended to ``kept`` (on the CPU) when it is a list."""
        acc = self.task.accumulator(self.device)
        self.model.eval()
        model.eval()  # the averaged (EMA) copy is a module of its own
        loss_fn = self.task.eval_loss().to(self.device)  # e.g. unsmoothed: the loss reported for evaluation
        for xb, yb in self._batches(data, self.eval_batch_size(), shuffle=False):
            loss, logits = eval_step(model, xb, yb, loss_fn, precision)
            acc.update(logits, yb, loss)
            if kept is not None:
                kept.append((logits.to("cpu", torch.float32), yb.to("cpu")))
        return self._reduced(acc)

    # ------------------------------------------------------------------ helpers

    def _batches(self, data: Any, batch_size: int, *, shuffle: bool, epoch: int = 0, start_batch: int = 0):
        workers = self.config.num_workers
        if workers == "auto":
            workers = None  # the data's own choice (iterate_batches)
        return iterate_batches(
            data, batch_size, shuffle=shuffle, seed=self.seed, epoch=epoch, start_batch=start_batch,
            device=self.device, num_workers=workers, rank=self.dist.rank, world_size=self.dist.world_size,
            order=self.order if shuffle else None,
        )

    def _group_share(self, size: int) -> float:
        """A batch's share of the samples of its accumulation group (train.accumulate): the
        group's batches are full but for the epoch's last batch, which may be short."""
        k, batch = self.config.accumulate, self.train_batch_size
        group = self.step_in_epoch // k
        first, end = group * k, min((group + 1) * k, self.batches_per_epoch)
        # training shards are cut to equal length across processes, so this is every process's count
        samples = min(end * batch, self.shard_size) - first * batch
        return size / samples

    def _no_sync(self, skip: bool) -> Any:
        """DDP's no_sync for an accumulation step that does not update (its gradients stay local)."""
        if skip and self.dist.enabled and hasattr(self.forward_model, "no_sync"):
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def _record_gradients(self, step: int, epoch: int) -> None:
        time_steps = None
        if hasattr(self.model, "input_grad_norms"):  # gradient w.r.t. the input at each time step
            scale = 1.0 / float(self.scaler.get_scale()) if self.scaler is not None else 1.0
            time_steps = self.model.input_grad_norms(scale)
        norms, news = self.gradients.record(step, time_steps)
        for message in news:
            self.log(f"warning: {message}")
        if self.writes:
            record = {"step": step, "epoch": epoch, "norms": norms}
            if time_steps is not None:
                record["time_steps"] = time_steps
            self.run.append_jsonl(self.run.gradients, record)

    def _diverged(self, step: int, epoch: int, batch: torch.Tensor | None) -> None:
        """Stop at once: nothing after the last good checkpoint is saved over it."""
        where = first_nonfinite_layer(self.model, batch) if batch is not None else "the evaluation loss"
        kept = (
            f"The last good checkpoint ({self.run.checkpoint}, epoch {self.epoch}) is kept."
            if self.run is not None and self.run.checkpoint.exists() else "No checkpoint was written before it."
        )
        raise TrainingError(
            f"training diverged: the loss became NaN or inf at step {step} (epoch {epoch}); {where}. {kept} "
            "Fix: lower train.optimizer.lr, set train.clip_grad_norm (e.g. 1.0), or check the data for NaN/inf."
        )

    def _reduced(self, acc: Any) -> Any:
        """The accumulator summed over all processes (itself when there is one process)."""
        if not self.dist.enabled:
            return acc
        total = self.task.accumulator(self.device)
        total.load_state_dict(all_reduce_sum(acc.state_dict()))
        return total

    def _maybe_ddp(self) -> nn.Module:
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _maybe_compile(self, model: nn.Module, total_steps: int) -> nn.Module:
        """torch.compile where it repays its start-up cost (GPU runs of a few thousand steps)."""
        mode = self.config.compile
        if mode == "auto":
            mode = "on" if self.device.type == "cuda" and total_steps >= 2000 else "off"
        if mode == "off":
            return model
        self.log("compiling the model with torch.compile (the first steps are slow)")
        return torch.compile(model)

    def _as_data(self, data: Any, where: str) -> Any:
        """``data`` as :func:`as_data` reads it, on the device; integer inputs stay token ids
        for a model that says it reads them (``model.token_ids``, the sequence models on text)."""
        token_ids = bool(getattr(self.model, "token_ids", False))
        return self._to_device(as_data(data, where, self.task.targets, token_ids=token_ids))

    def _to_device(self, data: Any) -> Any:
        return data.to(self.device) if isinstance(data, TensorData) else data

    def _check_shapes(self, data: Any) -> None:
        """One forward pass before training: the model's output must fit the task's targets."""
        xb, yb = next(iterate_batches(data, min(len(data), 8), shuffle=False, device=self.device))
        # batches of texts padded to their longest vary: the evaluation batch is sized for the longest
        self._sample_shape = tuple(getattr(data, "max_shape", None) or xb.shape[1:])
        self._sample_numel, self._sample_dtype = math.prod(self._sample_shape), xb.dtype
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
        self.task.check_output(out, data.y if isinstance(data, TensorData) else yb)
        if self.config.tta != "none" and xb.ndim != 4:
            raise ConfigError(
                f"train.tta: {self.config.tta} flips images, but the inputs are shaped {tuple(xb.shape)}. "
                "Fix: train.tta: none for non-image data."
            )

    def _kept_weights(self) -> nn.Module:
        """The weights evaluated and kept as the best model: the moving average with train.ema."""
        return self.ema.module if self.ema is not None else self.model

    def _save_best(self) -> None:
        if self.run is None:
            self._best_state = {k: v.detach().clone() for k, v in self._kept_weights().state_dict().items()}
            return
        if not self.writes:
            return
        meta = {"format": MODEL_FORMAT, "epoch": str(self.epoch + 1), "monitor": self.config.monitor, "value": repr(self.best)}
        save_tensors(self.run.best, self._kept_weights().state_dict(), metadata=meta)

    def _save_checkpoint(self) -> None:
        if self.run is None or not self.checkpoints:
            return
        rngs = gather_objects(rng_state())  # every process's generators, so each resumes its own stream
        # rank 0 saves the epoch's running metric sums over all processes; on resume the
        # others start from zero, so the end-of-epoch sum comes out the same
        accumulator = self._reduced(self._accumulator)
        if not self.writes:
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wall_seconds": self.wall_seconds,
            "monitor": self.config.monitor,
            "optimizer": pack_state(self.optimizer.state_dict(), tensors, "optimizer"),
            "rng": pack_state(rngs, tensors, "rng"),
            "world_size": self.dist.world_size,
            "accumulator": pack_state(accumulator.state_dict(), tensors, "accumulator"),
            "scaler": pack_state(self.scaler.state_dict(), tensors, "scaler") if self.scaler else None,
            "schedule": pack_state(self.schedule.state_dict(), tensors, "schedule"),
            "gradients": self.gradients.state_dict() if self.gradients else None,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "penalty_sum": float(self._penalty_sum),
        }
        write_checkpoint(self.run.checkpoint, tensors, state)

    def _load_checkpoint(self) -> None:
        if self.run is None:
            raise CheckpointError("resume: the Trainer has no run_dir to resume from.")
        path = self.run.checkpoint
        tensors, state = read_checkpoint(path)
        try:
            weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            self.model.load_state_dict(weights, strict=True)
            if self.ema is not None:
                self.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
            self.optimizer.load_state_dict(unpack_state(state["optimizer"], tensors))
            if int(state.get("world_size", 1)) != self.dist.world_size:
                raise CheckpointError(
                    f"{path}: the run was trained with {state.get('world_size', 1)} process(es); resume it "
                    f"with the same number in all (now {self.dist.world_size}): --nproc {state.get('world_size', 1)}, "
                    f"or as many nodes times --nproc as before (--nnodes N --nproc P, N x P = "
                    f"{state.get('world_size', 1)})."
                )
            rng = unpack_state(state["rng"], tensors)[self.dist.rank]
            if self.dist.is_main:
                self._accumulator.load_state_dict(unpack_state(state["accumulator"], tensors))
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(unpack_state(state["scaler"], tensors))
            self.schedule.load_state_dict(unpack_state(state["schedule"], tensors))
            if self.gradients is not None and state.get("gradients"):
                self.gradients.load_state_dict(state["gradients"])
            for cb, cb_state in zip(self.callbacks, state["callbacks"], strict=False):
                cb.load_state_dict(cb_state)
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step, self.wall_seconds = int(state["global_step"]), float(state["wall_seconds"])
            self.best, self.best_epoch = state["best"], state["best_epoch"]
            self._penalty_sum.fill_(float(state.get("penalty_sum", 0.0)))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: the checkpoint does not match this run's model or is damaged "
                f"({str(exc).splitlines()[0][:160]}); refused. Start the run again."
            ) from None
        restore_rng_state(rng)
        barrier()  # every process has read the checkpoint before rank 0 rewrites the log
        self.history = self.run.truncate_metrics(self.epoch) if self.writes else self.run.read_metrics()[: self.epoch]
        if self.writes:
            self.run.truncate_jsonl(self.run.gradients, "step", self.global_step)
        self.log(f"resumed {self.run.path} at epoch {self.epoch} step {self.step_in_epoch}")

    def _write_summary(self, train_data: Any, val_data: Any) -> None:
        summary = {
            "task": self.task.name,
            "train": self.task.compact(self.evaluate(train_data)) if self.evaluate_train else None,
            "val": self.task.compact(self.evaluate(val_data, keep="val")) if val_data is not None else None,
            "epochs_run": self.epoch,
            "best_epoch": self.best_epoch,
            "monitor": self.config.monitor,
            "stopped_early": self.epoch < self.config.epochs,
            "wall_seconds": round(self.wall_seconds, 3),
            "device": str(self.device),
            "processes": self.dist.world_size,
            "precision": self.precision.name,
            "gradients": self.gradients.summary() if self.gradients else None,
            "gradient_reach": self.gradients.reach() if self.gradients else None,
            "channels_last": self.precision.channels_last,
            "versions": versions(),
        }
        self.summary = summary
        if self.writes:
            self.run.write_json(self.run.summary, summary)

    def record_test(self, report: dict[str, Any]) -> None:
        """Add the test figures to ``summary.json`` (the test split is touched once, at the end)."""
        self.summary["test"] = self.task.compact(report)
        self.summary["test_report"] = "test_report.json"
        if self.writes:
            self.run.write_json(self.run.summary, self.summary)
            self.run.write_json(self.run.path / "test_report.json", report)


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
