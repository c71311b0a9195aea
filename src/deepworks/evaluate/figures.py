"""Figures the lower layers draw as well as the report: the figure with fixed margins, its PNG
bytes, the colour of each split, and a series with its forecast (``deepworks predict`` on a
forecasting run draws it; the report's forecast section too)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DPI", "TRAIN", "VAL", "TEST", "new_figure", "figure_png", "forecast_figure"]

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
