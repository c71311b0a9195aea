"""Figures the lower layers draw as well as the report: the figure with fixed margins, its PNG
bytes, the colour of each split, a series with its forecast (``deepworks predict`` on a
forecasting run draws it; the report's forecast section too), and a run's learning curves (a run
shown inline in Jupyter, :mod:`deepworks.inline`, and the report's curves section)."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DPI", "TRAIN", "VAL", "TEST", "new_figure", "figure_png", "forecast_figure", "data_uri", "series",
           "learning_curves", "curves_metric"]

DPI = 96
TRAIN, VAL, TEST = "#1f77b4", "#ff7f0e", "#2ca02c"  # one colour per split across figures


def new_figure(width: float, height: float, *, left: float = 0.65, right: float = 0.2, bottom: float = 0.55,
               top: float = 0.35, wspace: float = 0.3, hspace: float = 0.2):
    """A figure of ``width`` x ``height`` inches with fixed margins in inches (a layout engine
    would draw every figure twice: half the report's time). Public: the tuning study's page
    (:mod:`deepworks.tune.results`) draws its figures on the report's style with it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace, hspace=hspace)
    return fig


def figure_png(fig, dpi: int = DPI) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def forecast_figure(
    times: Any, actual: np.ndarray, forecasts: Mapping[str, tuple[Any, np.ndarray]], targets: Sequence[str],
    title: str = "", actual_label: str = "actual",
):
    """A series (``times``, ``actual`` (N, T)) and forecasts ``name -> (times, values (M, T))``,
    one panel per target (at most 4): the Figure, for :func:`figure_png`."""
    shown = list(targets)[:4]
    fig = new_figure(10, 2.2 + 1.8 * len(shown), hspace=0.35)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    colours = {"forecast": TEST, "network": TEST, "last_value": "#9467bd", "seasonal_naive": "#8c564b"}
    actual = np.asarray(actual).reshape(len(actual), -1)
    for j, (ax, target) in enumerate(zip(axes, shown)):
        ax.plot(times, actual[:, j], color="#333333", linewidth=1, label=actual_label)
        for name, (when, values) in forecasts.items():
            values = np.asarray(values).reshape(len(values), -1)
            ax.plot(when, values[:, j], color=colours.get(name), linewidth=1.2, marker="o" if len(values) <= 12 else None,
                    markersize=3, label=name.replace("_", " "))
        ax.set_ylabel(str(target))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        axes[0].set_title(title, fontsize=10)
    return fig


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``: the page carries its images."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the records that have a finite ``key``."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("epoch", len(xs) + 1))
            ys.append(float(v))
    return xs, ys


def learning_curves(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    best_epoch: int | None = None,
    stopped_epoch: int | None = None,
    monitor: str | None = None,
    dpi: int = DPI,
) -> bytes:
    """Loss (train vs val), ``metric`` (train vs val) and the learning rate per epoch, with the
    best epoch and the early-stopping point marked (``metric``: :func:`curves_metric` chooses it)."""
    fig = new_figure(11, 3.4, wspace=0.25)
    axes = fig.subplots(1, 3)
    for ax, name in zip(axes[:2], ("loss", metric)):
        for split, colour in (("train", TRAIN), ("val", VAL)):
            xs, ys = series(records, f"{split}_{name}")
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=split)
        title = name.replace("_", " ")
        if monitor and monitor.endswith(f"_{name}"):
            title += f" (monitored: {monitor})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].set_yscale("log" if _positive_wide(records, "loss") else "linear")
    xs, ys = series(records, "lr")
    lr = axes[2]
    if xs:
        lr.plot(xs, ys, marker="o", markersize=3, color="#555555")
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            lr.set_yscale("log")
        elif max(ys) == min(ys):  # a constant rate: show it against zero, not as noise in the fifth digit
            lr.set_ylim(0, 1.5 * max(ys) if max(ys) > 0 else 1)
    from matplotlib.ticker import MaxNLocator

    lr.set_title("learning rate", fontsize=10)
    lr.set_xlabel("epoch")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#2ca02c", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        if stopped_epoch is not None:
            ax.axvline(stopped_epoch, color="#d62728", linestyle=":", linewidth=1.2,
                       label=f"early stop (epoch {stopped_epoch})")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8)
    if any(series(records, f"{s}_{metric}")[0] for s in ("train", "val")):
        axes[1].legend(fontsize=8)
    return figure_png(fig, dpi)


def curves_metric(records: Sequence[Mapping[str, Any]], monitor: str | None, task: str) -> str:
    """The metric drawn beside the loss: the monitored one (``val_accuracy`` -> ``accuracy``), or,
    when the loss is monitored, the task's headline metric that the records hold."""
    metric = monitor.partition("_")[2] if monitor and monitor not in ("auto", "last") else ""
    if metric in ("", "loss"):  # the loss has its own panel
        names = {k.partition("_")[2] for r in records for k in r if k.startswith(("train_", "val_"))}
        order = ("mae",) if task == "forecasting" else ("accuracy", "r2", "macro_f1", "mae")
        metric = next((m for m in order if m in names), "loss")
    return metric


def _positive_wide(records: Sequence[Mapping[str, Any]], name: str) -> bool:
    """A loss that falls over more than a decade reads better on a log axis."""
    values = [v for s in ("train", "val") for v in series(records, f"{s}_{name}")[1]]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10
