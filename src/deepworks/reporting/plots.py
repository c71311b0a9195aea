"""The report's figures: one function per figure, each returning PNG bytes.

Every figure is a matplotlib ``Figure`` on the Agg canvas (no pyplot, no global state, no
display), saved as PNG at a modest resolution so that a page of ten figures stays small
enough to mail. :func:`data_uri` turns the bytes into an ``<img src=...>`` value.

>>> png = learning_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "lr": 0.1}], "accuracy")
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "new_figure",
    "figure_png",
    "data_uri",
    "learning_curves",
    "curves_metric",
    "confusion_matrix",
    "reliability",
    "image_png",
    "gradient_flow",
    "predicted_vs_actual",
    "residuals",
    "forecast_figure",
    "forecast",
    "error_per_step",
]

# the learning curves are drawn below the report too (a run shown inline in Jupyter: deepworks.inline)
from deepworks.evaluation.figures import (  # noqa: F401
    DPI, TEST, TRAIN, VAL, curves_metric, data_uri, figure_png, forecast_figure, learning_curves, new_figure,
)
from deepworks.evaluation.figures import series as _series  # noqa: F401  (reporting/compare.py draws with it)


def confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "test split") -> bytes:
    """A heat map of counts (rows true class, columns predicted), each cell labelled when it fits."""
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(cm)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    longest = max(map(len, names), default=1) if k <= 40 else 2
    label = min(2.5, 0.3 + 0.075 * longest)  # inches for the tick labels
    side = min(12.0, max(4.0, 0.45 * k + 1.5))
    fig = new_figure(side + label + 1.3, side + label, left=label + 0.35, bottom=label + 0.35, right=0.3)
    ax = fig.subplots()
    # colour by the share of the true class's samples, so rare classes read as well as common ones
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90 if max(map(len, names), default=0) > 3 else 0, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if k > 15 else 9,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({title}, {int(cm.sum())} samples)", fontsize=10)
    return figure_png(fig)


def reliability(results: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Reliability diagrams side by side, one per split (``split -> calibration(...)`` result):
    accuracy per confidence bin against the diagonal of perfect calibration, and how many
    samples each bin holds."""
    fig = new_figure(4.6 * max(1, len(results)), 4.4, right=0.6, wspace=0.5)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(results))))
    for ax, (split, result) in zip(axes, results.items()):
        bins = result["bins"]
        lower = np.array([b["lower"] for b in bins])
        width = np.array([b["upper"] - b["lower"] for b in bins])
        acc = np.array([b["accuracy"] for b in bins])
        conf = np.array([b["confidence"] for b in bins])
        count = np.array([b["count"] for b in bins])
        filled = count > 0
        ax.bar(lower[filled], acc[filled], width=width[filled], align="edge", color=VAL if split == "val" else TEST,
               edgecolor="white", alpha=0.85, label="accuracy")
        ax.bar(lower[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
               color="none", edgecolor="#d62728", hatch="//", linewidth=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="#555555", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{split}: ECE {result['ece']:.4f} ({result['count']} samples)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        share = ax.twinx()
        share.plot(lower[filled] + width[filled] / 2, count[filled] / max(1, count.sum()), color="#7f7f7f",
                   marker=".", linewidth=0.8)
        share.set_ylim(0, 1)
        share.set_ylabel("share of samples", color="#7f7f7f", fontsize=8)
        share.tick_params(axis="y", colors="#7f7f7f", labelsize=7)
    return figure_png(fig)


def image_png(image: np.ndarray, min_side: int = 96) -> bytes:
    """One uint8 image (C, H, W) as a PNG, enlarged by a whole factor (nearest neighbour, so
    pixels stay sharp) until its shorter side is at least ``min_side``; drawn with Pillow, not
    matplotlib: a grid of 16 takes milliseconds."""
    from PIL import Image

    image = np.asarray(image, dtype=np.uint8)
    pixels = image[0] if image.shape[0] == 1 else np.transpose(image[:3], (1, 2, 0))
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    factor = max(1, -(-min_side // max(1, min(picture.size))))
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def gradient_flow(records: Sequence[Mapping[str, Any]], flagged: Mapping[str, str] | None = None) -> bytes:
    """Per-layer gradient norms (``gradients.jsonl``): each layer's norm over the steps, and the
    median (with the range) per layer in the model's order; ``flagged`` names layers marked
    vanishing or exploding."""
    layers: list[str] = []
    for r in records:
        for name in r.get("norms", {}):
            if name not in layers:
                layers.append(name)
    steps = np.array([r.get("step", i) for i, r in enumerate(records)], dtype=float)
    values = np.full((len(records), len(layers)), np.nan)
    for i, r in enumerate(records):
        for j, name in enumerate(layers):
            v = r.get("norms", {}).get(name)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                values[i, j] = v
    longest = max(map(len, layers), default=1) if len(layers) <= 40 else 1
    fig = new_figure(11, 3.4 + min(2.0, 0.08 * longest), bottom=0.45 + min(2.0, 0.08 * longest), top=0.5, wspace=0.25)
    over_steps, per_layer = fig.subplots(1, 2, width_ratios=[3, 2])
    from matplotlib import colormaps

    colours = colormaps["viridis"](np.linspace(0, 0.9, max(1, len(layers))))
    for j, name in enumerate(layers):
        over_steps.plot(steps, values[:, j], color=colours[j], linewidth=1, label=name if len(layers) <= 12 else None)
    over_steps.set_yscale("log")
    over_steps.set_xlabel("step")
    over_steps.set_ylabel("gradient norm")
    over_steps.set_title("per-layer gradient norm over training (input side dark, output side light)", fontsize=9)
    if len(layers) <= 12:
        over_steps.legend(fontsize=7, ncols=2, title="layer", title_fontsize=7)
    over_steps.grid(alpha=0.3)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer without a finite norm: an all-NaN column
            median = np.nanmedian(values, axis=0) if len(records) else np.full(len(layers), np.nan)
            low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    x = np.arange(len(layers))
    flagged = flagged or {}
    bar_colours = ["#d62728" if flagged.get(n) == "exploding" else "#9467bd" if flagged.get(n) == "vanishing"
                   else "#1f77b4" for n in layers]
    per_layer.bar(x, np.nan_to_num(median, nan=0.0), color=bar_colours)
    ok = np.isfinite(median)
    per_layer.errorbar(x[ok], median[ok], yerr=[median[ok] - low[ok], high[ok] - median[ok]], fmt="none",
                       ecolor="#333333", linewidth=0.8, capsize=2)
    per_layer.set_yscale("log")
    if len(layers) <= 40:
        per_layer.set_xticks(x, layers, rotation=90, fontsize=7)
    per_layer.set_xlabel("layer (input to output)")
    per_layer.set_title("median norm per layer (bar) with its range\nred: exploding, purple: vanishing", fontsize=9)
    per_layer.grid(alpha=0.3, axis="y")
    return figure_png(fig)


def gradient_through_time(records: Sequence[Mapping[str, Any]], threshold: float = 1e-3) -> bytes:
    """A sequence model's input-gradient norm per step back from the last step (``time_steps``
    of ``gradients.jsonl``), for the first, a middle and the last recorded step, each with its
    reach floor (``threshold`` times its peak) dashed."""
    timed = [r for r in records if isinstance(r.get("time_steps"), list) and r["time_steps"]]
    picks = [timed[0], timed[len(timed) // 2], timed[-1]] if len(timed) >= 3 else timed
    picks = list({id(r): r for r in picks}.values())  # a record picked twice is drawn once
    fig = new_figure(7.5, 3.6)
    ax = fig.subplots()
    from matplotlib import colormaps

    colours = colormaps["viridis"](np.linspace(0, 0.85, max(1, len(picks))))
    for colour, r in zip(colours, picks, strict=True):
        values = np.array([v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else np.nan
                           for v in r["time_steps"]], dtype=float)
        ax.plot(np.arange(len(values)), values, color=colour, linewidth=1.2, label=f"step {r.get('step')}")
        if np.isfinite(values).any():
            ax.axhline(threshold * np.nanmax(values), color=colour, linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("time steps back from the last step")
    ax.set_ylabel("gradient norm w.r.t. the input")
    ax.set_title(f"gradient through time (dashed: {threshold:g} of each curve's peak)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def predicted_vs_actual(splits: Mapping[str, tuple[np.ndarray, np.ndarray]], target: str) -> bytes:
    """Predicted against actual values per split (``split -> (predicted, actual)``, in the
    target's units), with the line of perfect prediction."""
    fig = new_figure(5.2, 4.8)
    ax = fig.subplots()
    values = [v for pred, actual in splits.values() for v in (pred, actual) if len(v)]
    for split, (pred, actual) in splits.items():
        ax.scatter(actual, pred, s=12, alpha=0.7, color=VAL if split == "val" else TEST, label=f"{split} ({len(pred)})")
    if values:
        low = float(min(v.min() for v in values))
        high = float(max(v.max() for v in values))
        ax.plot([low, high], [low, high], color="#555555", linestyle="--", linewidth=1, label="predicted = actual")
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(f"{target}: predicted vs actual", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def residuals(splits: Mapping[str, tuple[np.ndarray, np.ndarray]], target: str) -> bytes:
    """Residuals (actual - predicted) against the prediction, and their histogram, per split."""
    fig = new_figure(10, 3.8, wspace=0.25)
    scatter, hist = fig.subplots(1, 2)
    for split, (pred, actual) in splits.items():
        colour = VAL if split == "val" else TEST
        res = actual - pred
        scatter.scatter(pred, res, s=12, alpha=0.7, color=colour, label=split)
        hist.hist(res, bins=min(30, max(5, len(res) // 4)), alpha=0.6, color=colour, label=split)
    scatter.axhline(0, color="#555555", linestyle="--", linewidth=1)
    scatter.set_xlabel(f"predicted {target}")
    scatter.set_ylabel("residual (actual - predicted)")
    scatter.set_title("residuals against the prediction", fontsize=10)
    scatter.legend(fontsize=8)
    scatter.grid(alpha=0.3)
    hist.axvline(0, color="#555555", linestyle="--", linewidth=1)
    hist.set_xlabel(f"residual ({target})")
    hist.set_ylabel("samples")
    hist.set_title("distribution of the residuals", fontsize=10)
    hist.legend(fontsize=8)
    return figure_png(fig)


def forecast(times: Any, actual: np.ndarray, forecasts: Mapping[str, tuple[Any, np.ndarray]], targets: Sequence[str],
             title: str = "") -> bytes:
    """:func:`forecast_figure` as PNG bytes."""
    return figure_png(forecast_figure(times, actual, forecasts, targets, title))


def error_per_step(errors: Mapping[str, Sequence[float]], metric: str = "MAE") -> bytes:
    """How the error grows with the steps ahead: ``name -> [error at step 1, 2, ...]``."""
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    colours = {"network": TEST, "last_value": "#9467bd", "seasonal_naive": "#8c564b"}
    for name, values in errors.items():
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, marker="o", markersize=4, color=colours.get(name), label=name.replace("_", " "))
    ax.set_xlabel("steps ahead")
    ax.set_ylabel(metric)
    ax.set_title(f"test {metric} per step ahead", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def adversarial_curves(records: Sequence[Mapping[str, Any]]) -> bytes:
    """A GAN's losses per epoch (generator and discriminator, or critic) and what the
    discriminator makes of real and generated images (D(real), D(fake); the Wasserstein estimate
    and the gradient penalty for WGAN-GP)."""
    fig = new_figure(11, 3.4, wspace=0.25)
    losses, judged = fig.subplots(1, 2)
    for key, colour, label in (("g_loss", TRAIN, "generator"), ("d_loss", VAL, "discriminator")):
        xs, ys = _series(records, key)
        if xs:
            losses.plot(xs, ys, marker="o", markersize=3, color=colour, label=label)
    losses.set_title("losses", fontsize=10)
    pairs = (("d_real", TRAIN, "D(real)"), ("d_fake", VAL, "D(fake)"), ("wasserstein", TEST, "Wasserstein estimate"),
             ("gp", "#555555", "gradient penalty"))
    for key, colour, label in pairs:
        xs, ys = _series(records, key)
        if xs:
            judged.plot(xs, ys, marker="o", markersize=3, color=colour, label=label)
    judged.set_title("the discriminator's view", fontsize=10)
    for ax in (losses, judged):
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure_png(fig)
