"""Classification metrics: summed on the device while training, reported like scikit-learn.

:class:`MetricAccumulator` keeps a running confusion matrix and loss sum as device tensors,
so a training step never waits for the GPU; numbers reach the host only in ``compute``.
Every score (accuracy, per-class and macro precision/recall/F1) is derived from the
confusion matrix by one helper, :func:`_scores`, which both ``compute`` and
:func:`classification_report` use, so the per-epoch logs and the final report cannot
disagree. The semantics are scikit-learn's with ``zero_division=0`` and ``labels=range(K)``:
a class never predicted has precision 0, a class absent from the targets has recall 0,
and both still count in the macro average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from deepworks.errors import DataError

__all__ = ["MetricAccumulator", "classification_report", "render_report"]

_STATE_KEYS = ("confusion", "loss_sum", "count", "loss_count")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0: scikit-learn's ``zero_division=0``."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _scores(confusion: np.ndarray) -> dict[str, Any]:
    """Every metric from a (K, K) confusion matrix (rows true, columns predicted).

    The one place for the formulas, so the accumulator and the report agree.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # how often each class is the target: tp + fn
    predicted = cm.sum(axis=0)  # how often each class is predicted: tp + fp
    total = cm.sum()
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)  # 2tp / (2tp + fp + fn), as sklearn >= 1.3
    k = cm.shape[0]
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "macro_precision": float(precision.sum() / k),
        "macro_recall": float(recall.sum() / k),
        "macro_f1": float(f1.sum() / k),
        "weighted_f1": float((f1 * support).sum() / total) if total > 0 else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "total": int(total),
    }


def _as_confusion(confusion: np.ndarray | torch.Tensor | Sequence[Sequence[int]]) -> np.ndarray:
    """A square int64 matrix of counts, or a ValueError saying what was wrong."""
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion: expected a square (K, K) matrix with K >= 1, got shape {cm.shape}.")
    if not np.issubdtype(cm.dtype, np.number) or np.any(cm < 0) or np.any(cm != np.round(cm)):
        raise ValueError("confusion: expected non-negative whole-number counts.")
    return cm.astype(np.int64)


class MetricAccumulator:
    """Accumulates loss and a confusion matrix on the model's device, with no host sync per step.

    ``update`` only queues device work (argmax, an ``index_add_`` into the flat matrix, a
    loss sum); batch sizes are known on the host from shapes. ``compute``/``confusion``
    read the totals back once. The running sums are in ``state_dict`` so a mid-epoch
    checkpoint resumes with the same epoch metrics an uninterrupted run would log.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes: expected a whole number >= 1, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        # float64 keeps a long epoch's loss sum exact enough; MPS has no float64
        self._loss_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        # on the CPU checking the labels costs no device sync, so fail at the bad batch;
        # elsewhere bad labels are counted on the device and reported by compute()
        self._check_eagerly = self.device.type == "cpu"
        self.reset()

    def __repr__(self) -> str:  # pragma: no mutate block (display)
        return f"MetricAccumulator(num_classes={self.num_classes}, device='{self.device}', count={self._count})"

    def reset(self) -> None:
        """Start a new epoch: zero counts and sums."""
        k = self.num_classes
        self._confusion = torch.zeros(k * k, dtype=torch.int64, device=self.device)  # flat, row-major (true, pred)
        self._loss_sum = torch.zeros((), dtype=self._loss_dtype, device=self.device)
        self._count = 0  # samples seen (host int: batch sizes are shapes, no sync)
        self._loss_count = 0  # samples whose batch came with a loss

    @property
    def count(self) -> int:
        """Number of samples accumulated since the last reset."""
        return self._count

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor | float | None = None) -> None:
        """Add one batch: ``logits`` (B, K), ``targets`` (B,) class indices, ``loss`` the batch MEAN."""
        # a context, not the @torch.no_grad() decorator: mutmut leaves decorated functions alone
        with torch.no_grad():
            k = self.num_classes
            if logits.ndim != 2 or logits.shape[1] != k:
                raise ValueError(f"logits: expected shape (batch, {k}), got {tuple(logits.shape)}.")
            if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"targets: expected shape ({logits.shape[0]},) to match the logits, got {tuple(targets.shape)}."
                )
            if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
                raise TypeError(f"targets: expected integer class indices, got dtype {targets.dtype}.")
            batch = int(logits.shape[0])
            if batch == 0:
                return
            preds = logits.detach().argmax(dim=1).to(self.device, non_blocking=True)
            targets = targets.to(self.device, torch.int64, non_blocking=True)
            valid = (targets >= 0) & (targets < k)
            if self._check_eagerly and not bool(valid.all()):
                bad = sorted({int(t) for t in targets[~valid].tolist()})[:5]
                raise DataError(
                    f"metrics: target labels {bad} are outside 0..{k - 1}; targets must be class indices "
                    f"for the {k} classes the model predicts."
                )
            # index_add_ rather than bincount: CUDA's bincount reads min/max back to the host.
            # An invalid label adds 0 (to cell 0), so compute() can tell from the total.
            index = torch.where(valid, targets * k + preds, 0)
            self._confusion.index_add_(0, index, valid.to(torch.int64))
            if loss is not None:
                if not isinstance(loss, torch.Tensor):
                    loss = torch.tensor(float(loss))
                if loss.numel() != 1:
                    raise ValueError(f"loss: expected the batch's mean loss (one number), got shape {tuple(loss.shape)}.")
                self._loss_sum.add_(loss.detach().reshape(()).to(self.device, self._loss_dtype) * batch)
                self._loss_count += batch
            self._count += batch

    def confusion(self) -> np.ndarray:
        """The (K, K) confusion matrix as int64, rows = true class, columns = predicted."""
        k = self.num_classes
        cm = self._confusion.detach().to("cpu", copy=True).numpy().reshape(k, k)
        counted = int(cm.sum())
        if counted != self._count:
            raise DataError(
                f"metrics: {self._count - counted} of the {self._count} targets seen were outside 0..{k - 1}; "
                f"targets must be class indices for the {k} classes the model predicts."
            )
        return cm

    def compute(self) -> dict[str, Any]:
        """Mean loss (None if no batch gave one), accuracy and macro precision/recall/F1."""
        scores = _scores(self.confusion())
        loss = float(self._loss_sum.item()) / self._loss_count if self._loss_count else None
        return {
            "loss": loss,
            "accuracy": scores["accuracy"],
            "macro_precision": scores["macro_precision"],
            "macro_recall": scores["macro_recall"],
            "macro_f1": scores["macro_f1"],
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the running sums (tensors only, so they fit a safetensors checkpoint)."""
        k = self.num_classes
        return {
            "confusion": self._confusion.detach().reshape(k, k).clone(),
            "loss_sum": self._loss_sum.detach().clone(),
            "count": torch.tensor(self._count, dtype=torch.int64),
            "loss_count": torch.tensor(self._loss_count, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore sums saved by :meth:`state_dict` (from any device) onto this one."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise KeyError(f"metric accumulator state lacks {missing}; it has {sorted(state)}.")
        k = self.num_classes
        confusion = torch.as_tensor(state["confusion"])
        if tuple(confusion.shape) != (k, k):
            raise ValueError(
                f"metric accumulator state has a confusion matrix of shape {tuple(confusion.shape)}, "
                f"but this accumulator has {k} classes."
            )
        self._confusion = confusion.to(self.device, torch.int64).reshape(-1).clone()
        self._loss_sum = torch.as_tensor(state["loss_sum"]).to(self.device, self._loss_dtype).reshape(()).clone()
        self._count = int(state["count"])
        self._loss_count = int(state["loss_count"])


def classification_report(
    confusion: np.ndarray | torch.Tensor, classes: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1 and the matrix, as plain JSON types."""
    cm = _as_confusion(confusion)
    names = [str(c) for c in classes]
    if len(names) != cm.shape[0]:
        raise ValueError(f"classes: {len(names)} names given for a {cm.shape[0]}-class confusion matrix.")
    s = _scores(cm)
    report: dict[str, Any] = {
        "accuracy": s["accuracy"],
        "macro_precision": s["macro_precision"],
        "macro_recall": s["macro_recall"],
        "macro_f1": s["macro_f1"],
        "weighted_f1": s["weighted_f1"],
    }
    if loss is not None:
        report["loss"] = float(loss)
    report["support"] = s["total"]
    report["per_class"] = [
        {
            "class": name,
            "precision": float(s["precision"][i]),
            "recall": float(s["recall"][i]),
            "f1": float(s["f1"][i]),
            "support": int(s["support"][i]),
        }
        for i, name in enumerate(names)
    ]
    report["confusion_matrix"] = cm.tolist()
    report["classes"] = names
    return report


def _short(name: str, width: int = 10) -> str:  # pragma: no mutate block (display)
    """Clip a class name so a confusion-matrix column stays narrow."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _num(value: Any, digits: int) -> str:  # pragma: no mutate block (display)
    return "-" if value is None else f"{float(value):.{digits}f}"


def render_report(  # the console view: left out of the mutation check, which is about the numbers
    report: Mapping[str, Any], title: str = "", *, max_matrix_classes: int = 20
) -> RenderableType:  # pragma: no mutate block (display)
    """A rich view of :func:`classification_report`: summary, per-class table, confusion matrix.

    Class names are wrapped in ``Text`` so names like ``[red]`` are shown, not parsed as
    markup. Matrices with more than ``max_matrix_classes`` classes are left out (they do
    not fit a terminal); the JSON report still has them.
    """
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))

    summary = Text()
    items = [
        ("accuracy", report.get("accuracy")),
        ("macro precision", report.get("macro_precision")),
        ("macro recall", report.get("macro_recall")),
        ("macro F1", report.get("macro_f1")),
        ("weighted F1", report.get("weighted_f1")),
        ("loss", report.get("loss")),
    ]
    for i, (label, value) in enumerate(items):
        if value is None and label != "accuracy":
            continue
        if i:
            summary.append("   ")
        summary.append(f"{label} ", style="dim")
        summary.append(_num(value, 4), style="bold")
    if report.get("support") is not None:
        summary.append(f"   ({int(report['support'])} samples)", style="dim")
    parts.append(summary)

    per_class = report.get("per_class") or []
    table = Table(box=box.SIMPLE_HEAD, title="per class", title_justify="left")
    table.add_column("class")
    for header in ("precision", "recall", "F1", "support"):
        table.add_column(header, justify="right")
    for row in per_class:
        table.add_row(
            Text(str(row["class"])),
            _num(row.get("precision"), 3),
            _num(row.get("recall"), 3),
            _num(row.get("f1"), 3),
            str(row.get("support", "")),
        )
    if per_class:
        table.add_section()
        table.add_row(
            Text("macro avg", style="bold"),
            _num(report.get("macro_precision"), 3),
            _num(report.get("macro_recall"), 3),
            _num(report.get("macro_f1"), 3),
            str(report.get("support", "")),
        )
    parts.append(table)

    matrix = report.get("confusion_matrix")
    classes = [str(c) for c in report.get("classes") or [row["class"] for row in per_class]]
    if matrix is not None and len(classes) == len(matrix):
        if len(classes) > max_matrix_classes:
            parts.append(
                Text(
                    f"confusion matrix: {len(classes)} classes, too many to show here "
                    "(it is in the JSON report, e.g. `deepworks evaluate --json`).",
                    style="dim",
                )
            )
        else:
            parts.append(_matrix_table(matrix, classes))
    return Group(*parts)


def _matrix_table(matrix: Sequence[Sequence[int]], classes: list[str]) -> Table:  # pragma: no mutate block (display)
    """The confusion matrix with the diagonal (correct predictions) highlighted."""
    table = Table(box=box.SIMPLE_HEAD, title="confusion matrix", title_justify="left")
    table.add_column(Text("true \\ pred", style="dim"))
    for name in classes:
        table.add_column(Text(_short(name)), justify="right")
    for i, (name, row) in enumerate(zip(classes, matrix)):
        cells: list[RenderableType] = [Text(_short(name))]
        for j, value in enumerate(row):
            value = int(value)
            style = "bold green" if i == j else ("red" if value else "dim")
            cells.append(Text(str(value), style=style))
        table.add_row(*cells)
    return table
