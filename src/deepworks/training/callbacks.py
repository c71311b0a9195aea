"""A few Keras-like callbacks. Stopping is a flag on the trainer, not an exception."""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepworks.training.tasks import metric_mode

if TYPE_CHECKING:
    from deepworks.training.trainer import Trainer

__all__ = ["Callback", "EarlyStopping", "ProgressLogger", "NotebookBar", "in_notebook", "better"]


def better(monitor: str, mode: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Is ``value`` an improvement on ``best`` for this metric?"""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    if mode == "auto":
        mode = metric_mode(monitor)
    return value < best - min_delta if mode == "min" else value > best + min_delta


class Callback:
    """Hooks called by :class:`Trainer.fit`; override the ones you need."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...

    # state saved in checkpoints, so a resumed run stops where the uninterrupted one would
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto"):
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is None and self.monitor.startswith("val_"):
            if getattr(trainer, "validated", True) is False:
                return  # train.val_every skipped this epoch's validation: patience counts validations
            value = logs.get("train_" + self.monitor[len("val_"):])  # no validation data: watch training
        if better(self.monitor, self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop_training = True
            trainer.log(f"early stopping: {self.monitor} has not improved for {self.patience} epochs (best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (ipykernel), where stderr is no terminal but an
    output drawn as HTML can be updated in place. Nothing is imported to find out."""
    shell = sys.modules.get("ipykernel.zmqshell")
    ipython = sys.modules.get("IPython")
    if shell is None or ipython is None:
        return False
    return isinstance(ipython.get_ipython(), shell.ZMQInteractiveShell)


class NotebookBar:
    """A progress bar in a Jupyter notebook: one HTML output (an HTML ``<progress>``) updated in
    place through IPython's display ids, which every front end and nbclient keep as one output.

    rich draws its live bar in a notebook through ipywidgets only; without them it draws nothing,
    and a terminal bar written to the notebook's stderr would leave its control codes there, a line
    per refresh. Updates are at most every ``every`` seconds, so a fast epoch costs a few messages."""

    def __init__(self, every: float = 0.25):
        from IPython.display import HTML, display

        self._html, self.every = HTML, every
        self._last = 0.0
        self._t0 = time.perf_counter()
        self.handle = display(HTML(self._render("starting", 0, None)), display_id=True)

    @staticmethod
    def _render(description: str, done: int, total: int | None, left: float | None = None) -> str:
        counts = f"{done}/{total}" if total else f"{done}"
        eta = f" · {left:.0f} s left" if left is not None else ""
        bar = f'<progress value="{done}" max="{total}" style="width:18em;vertical-align:middle"></progress> ' if total else ""
        return (f'<div class="deepworks-progress" style="font:12.5px ui-monospace,monospace">{bar}'
                f"{html.escape(description)} · {counts} batches{eta}</div>")

    def update(self, description: str, done: int, total: int | None, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self._t0
        left = elapsed / done * (total - done) if total and 0 < done < total and elapsed > 1 else None
        if self.handle is not None:
            self.handle.update(self._html(self._render(description, done, total, left)))

    def restart(self) -> None:
        """A new epoch: the time left is measured from here."""
        self._t0 = time.perf_counter()


class ProgressLogger(Callback):
    """A progress bar in a terminal (rich) or a Jupyter notebook (:class:`NotebookBar`), one plain
    line per epoch otherwise; the epoch's line is printed in each case."""

    def __init__(self, mode: str = "auto", steps_per_epoch: int | None = None):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() or in_notebook() else "log"
        self.mode = mode
        self.steps_per_epoch = steps_per_epoch
        self._progress = None
        self._notebook: NotebookBar | None = None
        self._task = None
        self._t0 = 0.0
        self._done, self._total, self._description = 0, None, ""

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.mode == "bar" and in_notebook():
            self._notebook = NotebookBar()
        elif self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._t0 = time.perf_counter()
        total = getattr(trainer, "batches_per_epoch", trainer.steps_per_epoch)
        if self._notebook is not None:
            self._description, self._done, self._total = f"epoch {epoch}/{trainer.config.epochs}", trainer.step_in_epoch, total
            self._notebook.restart()
            self._notebook.update(self._description, self._done, self._total, force=True)
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                f"epoch {epoch}/{trainer.config.epochs}", total=total, completed=trainer.step_in_epoch,
            )

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        if self._notebook is not None:
            self._done += 1
            self._notebook.update(self._description, self._done, self._total)
        if self._progress is not None:
            self._progress.advance(self._task)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.mode == "none":
            return
        line = f"epoch {epoch}/{trainer.config.epochs}  " + self.describe(trainer, logs) + f"  ({logs.get('seconds', 0):.1f}s)"
        if logs.get("best"):
            line += "  *"
        if self._notebook is not None:
            self._notebook.update(self._description, self._done, self._total, force=True)
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, flush=True)

    def describe(self, trainer: Any, logs: dict[str, Any]) -> str:
        """The epoch's figures on its progress line (the task's shown metrics per split)."""
        parts = []
        for split in ("train", "val"):
            fields = [(m, logs.get(f"{split}_{m}")) for m in trainer.task.shown]
            shown = " ".join(f"{m.replace('macro_', '')} {v:.4g}" if m in ("mae", "rmse") else f"{m.replace('macro_', '')} {v:.4f}" for m, v in fields if isinstance(v, float))
            if shown:
                parts.append(f"{split}: {shown}")
        return "  |  ".join(parts)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._notebook = None  # its last state stays in the notebook


class Tracker(Callback):
    """What a run tells an experiment tracker (:mod:`deepworks.training.tracking`); ``name`` is its
    ``train.track`` name."""

    name = "tracker"

    def describe(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """What the run is, before it starts: flat params (``{"train.epochs": "3"}``) and tags."""

    def end(self, metrics: Mapping[str, float] | None = None, artifacts: Sequence[Path] = (),
            status: str = "FINISHED") -> None:
        """The run is over: its final metrics, its files, and how it ended (FINISHED, FAILED or KILLED)."""
