"""TensorBoard logs of a run, on request (``train.tensorboard: true``).

:class:`TensorBoardLogger` writes into ``RUN_DIR/tensorboard/`` with
``torch.utils.tensorboard.SummaryWriter``; open it with ``tensorboard --logdir RUN_DIR/tensorboard``:

- at the end of every epoch, a scalar for each number of the epoch's metrics line (the keys of
  ``metrics.jsonl``: ``train_loss``, ``val_accuracy``, ``lr``, ``epoch``, ...);
- every ``every`` optimizer steps, a histogram of each parameter's weights
  (``weights/<name>``) and of its gradient (``gradients/<name>``), with the names of
  ``model.named_parameters()`` (``0.weight``, ``features.3.bias``, ...).

Every event's step is the global optimizer step (the epoch scalars at the step that ends the
epoch; the ``epoch`` scalar maps steps to epochs). A resumed run keeps writing into the same
folder: the new writer starts with ``purge_step`` = the checkpoint's step + 1, so TensorBoard
hides what the killed run logged after its last checkpoint, and the resumed run logs it again
once. Only the main process writes. It is one of the run's trackers (:mod:`deepworks.training.tracking`),
``train.track: tensorboard`` being the same as ``train.tensorboard: true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepworks.errors import ConfigError
from deepworks.training.callbacks import Tracker

if TYPE_CHECKING:
    from deepworks.training.trainer import Trainer

__all__ = ["TensorBoardLogger", "summary_writer_class"]

FIX = "pip install deepworks[tensorboard] (or pip install tensorboard), or set train.tensorboard: false"


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; a :class:`ConfigError` naming the key and
    the fix when the ``tensorboard`` package is missing (call it before training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"train.tensorboard: true needs the tensorboard package, which cannot be imported ({exc}). Fix: {FIX}."
        ) from None
    return SummaryWriter


class TensorBoardLogger(Tracker):
    """Epoch metrics as scalars and, every ``every`` steps, weight and gradient histograms.

    The gradients are those the optimizer step just used: ``on_batch_end`` runs after
    ``optimizer.step()``, and ``.grad`` is only cleared (set to None) at the start of the next
    step. They are the raw gradients after ``train.clip_grad_norm`` and fp16 unscaling, averaged
    over processes under DDP.
    """

    name = "tensorboard"

    def __init__(self, every: int = 100, folder: str = "tensorboard"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"train.tensorboard_every: expected a whole number of at least 1, got {every!r}.")
        self.every, self.folder = every, folder
        self.writer: Any = None

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.run is None:
            raise ConfigError(
                "train.tensorboard: true writes into the run directory, and this Trainer has none. "
                "Fix: Trainer(..., run_dir=...), or train.tensorboard: false."
            )
        writer_class = summary_writer_class()  # on every process: a missing package fails everywhere alike
        if not trainer.writes:
            return
        # a fresh run purges from step 1: a start-over of a run killed before its first
        # checkpoint hides the old attempt's events; a resumed one from the checkpoint's next step
        self.writer = writer_class(log_dir=str(trainer.run.path / self.folder), purge_step=trainer.global_step + 1)

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        if self.writer is None or step % self.every:
            return
        for name, param in trainer.model.named_parameters():
            # float(): numpy has no bfloat16
            self.writer.add_histogram(f"weights/{name}", param.detach().float(), step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float(), step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = trainer.global_step
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # not "best"
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()  # a killed run keeps every finished epoch's scalars

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
