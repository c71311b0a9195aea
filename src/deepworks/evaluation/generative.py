"""How good and how varied are a generator's images? Measured by a *judge*: a classifier that
deepworks trained on the same dataset (:mod:`deepworks.judge` makes or loads one).

- **Fréchet distance on the judge's features.** Each image's features are the judge's
  penultimate activations (the input of its final ``Linear``). A Gaussian is fitted to the
  features of the generated images and one to those of real images the judge never trained
  on (its test split); the distance between them is
  ``|mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))``. This is the formula of the FID, but
  not the FID: the FID uses the Inception-v3 network trained on ImageNet, which is not available
  offline and knows nothing of 8x8 digits; figures here compare runs on the same dataset with
  the same judge, never with published FIDs.
- **Class coverage.** The judge's predicted class for each sample gives a class histogram. A
  class is *covered* when it receives at least a quarter of its uniform share
  (``COVERED_FRACTION * N / K`` samples); coverage is the share of the K classes covered. The
  histogram's entropy is given in nats and divided by ``log K`` (1 = all classes equally often).
- **Label agreement** (conditional generators): for each label K, the share of the samples
  generated for K that the judge assigns to K; and the mean over labels.
- **Collapse.** A finding ``{"collapsed", "reasons", "advice"}``: fewer than half of the classes
  covered, one class taking more than half of the samples (three quarters with two classes), or
  samples nearly alike: their spread in feature space (within the judge's predicted classes)
  under a quarter of the real images'.

>>> import numpy as np
>>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)), 6)   # equal covariances: |mu1 - mu2|^2
2.0
>>> c = class_coverage(np.array([0, 0, 1, 1]), num_classes=10)
>>> c["classes_covered"], c["coverage"], c["largest_share"]
(2, 0.2, 0.5)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.errors import DataError
from deepworks.evaluation.projection import default_layer

__all__ = [
    "Judge",
    "ModeCollapseWarning",
    "COVERED_FRACTION",
    "MIN_COVERED_CLASSES",
    "MAX_CLASS_SHARE",
    "MIN_SPREAD_RATIO",
    "COLLAPSE_ADVICE",
    "gaussian_fit",
    "frechet_distance",
    "feature_frechet_distance",
    "class_coverage",
    "label_agreement",
    "feature_spread",
    "collapse_finding",
    "judge_generator",
    "render_quality",
]

# A class counts as covered when it gets at least this share of its uniform share N / K: a
# quarter tolerates the imbalance of a healthy generator (and of the judge's own errors), while
# a class the generator has all but dropped falls below it.
COVERED_FRACTION = 0.25
# Collapse when fewer than this share of the classes are covered (fewer than half).
MIN_COVERED_CLASSES = 0.5
# Collapse when one class takes more than this share of the samples (with K = 2 classes,
# 1.5 / K = 0.75 applies instead, as half is what a healthy two-class generator produces).
MAX_CLASS_SHARE = 0.5
# Collapse when the samples' spread in the judge's feature space (within predicted classes) is
# under this share of the real images': near-duplicates, a generator that ignores its noise.
MIN_SPREAD_RATIO = 0.25
# Pixel values of float samples may stray this far outside [-1, 1] (rounding) and are clipped.
_FLOAT_TOLERANCE = 1e-3

COLLAPSE_ADVICE = (
    "Against mode collapse: train with the Wasserstein loss and gradient penalty (`model.name: wgan-gp`), "
    "lower the learning rates (e.g. halve `train.optimizer.lr`), add instance noise to the discriminator's "
    "inputs, or use one-sided label smoothing for the real images."
)


class ModeCollapseWarning(UserWarning):
    """The generator's samples cover too few classes, favour one class, or are nearly alike."""


@dataclass
class Judge:
    """A trained classifier and exactly how it reads images.

    ``scale``, ``mean`` and ``std`` come from the judge's ``data.json``: a stored uint8 pixel
    ``v`` becomes ``(v * scale - mean) / std`` per channel, as in its training. ``real`` holds
    uint8 images the judge never trained on (its test split), the reference for the Fréchet
    distance and the spread; ``accuracy`` is the judge's accuracy on them.
    """

    model: nn.Module
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    scale: float
    mean: list[float]
    std: list[float]
    dataset: str = ""
    run_dir: Path | None = None
    accuracy: float | None = None
    real: torch.Tensor | None = None  # uint8 (M, C, H, W)
    real_labels: torch.Tensor | None = None  # int64 (M,)
    real_split: str = "test"
    _real_cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.layer = default_layer(self.model)
        head = dict(self.model.named_modules())[self.layer]
        if not isinstance(head, nn.Linear):
            raise DataError(
                f"judge {self.run_dir or type(self.model).__name__}: its last layer with parameters ({self.layer!r}) is "
                f"a {type(head).__name__}, not a Linear; the features are the input of a final Linear layer. Fix: use "
                "a classification run whose model ends in a dense layer (cnn, mlp, resnet18, ...)."
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_images(self, images: torch.Tensor, what: str = "samples") -> None:
        """A :class:`DataError` unless ``images`` is (N, C, H, W) of the judge's shape in an accepted format:
        float in [-1, 1], or uint8 stored pixel values (at most ``1 / scale``) as in the dataset."""
        if not isinstance(images, torch.Tensor):
            raise DataError(f"{what}: expected a tensor of images (N, C, H, W), got a {type(images).__name__}.")
        c, h, w = self.input_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, h, w) or len(images) == 0:
            raise DataError(
                f"{what}: expected images shaped (N, {c}, {h}, {w}) with N >= 1 (the judge reads {self.dataset or 'its'} "
                f"images at {c}x{h}x{w}), got {tuple(images.shape)}. Fix: generate at the judge's channels and size, "
                "or use a judge trained with the same data.image_size and data.channels."
            )
        if images.dtype == torch.uint8:
            top = round(1 / self.scale)
            if int(images.max()) > top:
                raise DataError(
                    f"{what}: uint8 pixels are read as the dataset stores them (0..{top}, scale 1/{top}), but the "
                    f"largest value is {int(images.max())}. Fix: give float images in [-1, 1], or uint8 values in "
                    f"0..{top}."
                )
        elif images.dtype.is_floating_point:
            if not bool(torch.isfinite(images).all()):
                raise DataError(f"{what}: the images hold NaN or infinite values; the generator has diverged.")
            low, high = float(images.min()), float(images.max())
            if low < -1 - _FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
                raise DataError(
                    f"{what}: float images must lie in [-1, 1] (-1 black, 1 white: a tanh output), got values from "
                    f"{low:.4g} to {high:.4g}. Fix: end the generator in tanh, or map [0, 1] pixels with x * 2 - 1."
                )
        else:
            raise DataError(
                f"{what}: expected float images in [-1, 1] or uint8 pixels, got dtype {images.dtype}."
            )

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's input for ``images`` (checked): float in [-1, 1] is mapped to [0, 1] by ``(x + 1) / 2``,
        uint8 by ``x * scale``; then ``(p - mean) / std`` per channel, float32 on the judge's device."""
        self.check_images(images)
        x = images.to(self.device)
        if x.dtype == torch.uint8:
            pixels = x.to(torch.float32) * self.scale
        else:
            pixels = (x.to(torch.float32).clamp(-1, 1) + 1) / 2
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(shape)
        return (pixels - mean) / std

    def features(self, images: torch.Tensor, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The penultimate features (N, D) float64 and predicted classes (N,) of ``images``, in fp32
        without autocast, the model in eval mode."""
        self.check_images(images)
        head = dict(self.model.named_modules())[self.layer]
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
        feats, preds = [], []
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                for start in range(0, len(images), batch_size):
                    seen.clear()
                    logits = self.model(self.to_input(images[start : start + batch_size]))
                    feats.append(seen[-1].float().flatten(1).cpu())
                    preds.append(logits.float().argmax(1).cpu())
        finally:
            handle.remove()
        return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()

    def real_features(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Features and predictions of the reference images ``real`` (computed once), or None without them."""
        if self.real is None:
            return None
        if self._real_cache is None:
            self._real_cache = self.features(self.real)
        return self._real_cache

    def check_data(self, classes: Sequence[str], input_shape: Sequence[int], where: str = "gan.judge") -> None:
        """A :class:`DataError` unless this judge was trained on ``classes`` at ``input_shape`` (C, H, W)."""
        problems = []
        if list(classes) != list(self.classes):
            problems.append(f"classes {list(self.classes)} (this data: {list(classes)})")
        if tuple(int(s) for s in input_shape) != tuple(self.input_shape):
            c, h, w = self.input_shape
            problems.append(f"images {c}x{h}x{w} (channels x height x width; this data: "
                            f"{'x'.join(str(int(s)) for s in input_shape)})")
        if problems:
            raise DataError(
                f"{where}: the judge {self.run_dir or ''} was trained on {' and '.join(problems)}; it cannot judge "
                "this data. Fix: name a classification run trained on the same dataset with the same "
                f"data.image_size and data.channels, or remove {where} to have deepworks train one."
            )


# ----------------------------------------------------------------------------- the measures


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, ``np.cov``) of (N, D) features, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(f"gaussian_fit: expected features shaped (N >= 2, D), got {f.shape}.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.

    The square root is ``scipy.linalg.sqrtm``. As in the reference FID code, a product that has
    no finite square root (singular covariances) is retried with ``eps`` added to both
    diagonals, and an imaginary part left by rounding (diagonal within 1e-3 of zero) is dropped;
    a larger one is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DataError(
            f"frechet_distance: means and covariances must agree in size, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}."
        )
    from scipy import linalg  # here, not at import: the command line starts without scipy

    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is expected (e.g. identical samples); checked below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise DataError(
                f"frechet_distance: the square root of the covariance product has an imaginary part of up to "
                f"{np.max(np.abs(covmean.imag)):.3g}, beyond rounding. Fix: use more samples (at least as many as "
                f"the {d} feature dimensions)."
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussian fits of two (N, D) feature sets."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def _as_classes(values: Any, num_classes: int, what: str) -> np.ndarray:
    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if v.ndim != 1 or len(v) == 0 or not np.issubdtype(v.dtype, np.integer):
        raise DataError(f"{what}: expected a non-empty 1-D array of class indices, got shape {v.shape}, dtype {v.dtype}.")
    if v.min() < 0 or v.max() >= num_classes:
        raise DataError(f"{what}: class indices must lie in 0..{num_classes - 1}, got {int(v.min())}..{int(v.max())}.")
    return v.astype(np.int64)


def class_coverage(predicted: Any, num_classes: int, covered_fraction: float = COVERED_FRACTION) -> dict[str, Any]:
    """The class histogram of ``predicted`` class indices and what it says about variety.

    Returns ``counts`` (per class), ``classes_covered`` (classes with at least
    ``covered_fraction * N / K`` samples, and at least one), ``coverage`` (that over K),
    ``entropy`` (nats), ``entropy_normalized`` (over ``log K``), ``largest_class`` (index) and
    ``largest_share``.
    """
    if num_classes < 2:
        raise DataError(f"class_coverage: needs at least 2 classes, got {num_classes}.")
    p = _as_classes(predicted, num_classes, "class_coverage")
    counts = np.bincount(p, minlength=num_classes)
    n = int(counts.sum())
    threshold = covered_fraction * n / num_classes
    covered = int(((counts >= threshold) & (counts > 0)).sum())
    shares = counts / n
    nz = shares[shares > 0]
    entropy = max(0.0, float(-(nz * np.log(nz)).sum()))  # not -0.0 for a single class
    largest = int(counts.argmax())
    return {
        "samples": n,
        "counts": counts.tolist(),
        "covered_threshold": threshold,
        "classes_covered": covered,
        "coverage": covered / num_classes,
        "entropy": entropy,
        "entropy_normalized": entropy / math.log(num_classes),
        "largest_class": largest,
        "largest_share": float(shares[largest]),
    }


def label_agreement(predicted: Any, labels: Any, num_classes: int) -> dict[str, Any]:
    """For each label K given to the generator, the share of its samples the judge assigns to K.

    Returns ``per_label`` (K -> share, for the labels that have samples), ``samples_per_label``,
    ``mean`` (over those labels, each counting once) and ``min``.
    """
    p = _as_classes(predicted, num_classes, "label_agreement: predicted")
    y = _as_classes(labels, num_classes, "label_agreement: labels")
    if len(p) != len(y):
        raise DataError(f"label_agreement: {len(p)} predictions for {len(y)} labels; give one label per sample.")
    counts = np.bincount(y, minlength=num_classes)
    agree = np.bincount(y[p == y], minlength=num_classes)
    per_label = {int(k): float(agree[k] / counts[k]) for k in range(num_classes) if counts[k]}
    values = list(per_label.values())
    return {
        "per_label": per_label,
        "samples_per_label": counts.tolist(),
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
    }


def feature_spread(features: np.ndarray, predicted: Any) -> float | None:
    """Root-mean-square distance of the (N, D) features to the mean of their predicted class,
    over the classes with at least two samples (None when no class has two)."""
    f = np.asarray(features, dtype=np.float64)
    p = np.asarray(predicted)
    total, n = 0.0, 0
    for k in np.unique(p):
        group = f[p == k]
        if len(group) >= 2:
            total += float(((group - group.mean(axis=0)) ** 2).sum())
            n += len(group)
    return math.sqrt(total / n) if n else None


def collapse_finding(coverage: dict[str, Any], classes: Sequence[str], spread_ratio: float | None = None) -> dict[str, Any]:
    """``{"collapsed", "reasons", "advice"}`` from :func:`class_coverage`'s result (and the
    samples' spread over the real images', when known); each reason states its figures."""
    k = len(classes)
    reasons = []
    if coverage["classes_covered"] < MIN_COVERED_CLASSES * k:
        reasons.append(
            f"only {coverage['classes_covered']} of {k} classes are covered (a class counts with at least "
            f"{coverage['covered_threshold']:.1f} of the {coverage['samples']} samples, a quarter of its even share)"
        )
    limit = max(MAX_CLASS_SHARE, 1.5 / k)
    if coverage["largest_share"] > limit:
        reasons.append(
            f"class {classes[coverage['largest_class']]!r} takes {coverage['largest_share']:.0%} of the samples "
            f"(more than {limit:.0%})"
        )
    if spread_ratio is not None and spread_ratio < MIN_SPREAD_RATIO:
        reasons.append(
            f"the samples are nearly alike: their spread in the judge's feature space is {spread_ratio:.2f} of the "
            f"real images' (under {MIN_SPREAD_RATIO})"
        )
    return {"collapsed": bool(reasons), "reasons": reasons, "advice": COLLAPSE_ADVICE if reasons else ""}


def judge_generator(
    samples: torch.Tensor,
    judge: Judge,
    *,
    labels: Any = None,
    real: torch.Tensor | None = None,
    batch_size: int = 1024,
    warn: bool = True,
) -> dict[str, Any]:
    """Quality and variety of generated ``samples`` as ``judge`` sees them (a JSON-ready dict).

    ``samples``: (N, C, H, W) at the judge's shape, float in [-1, 1] (a tanh generator's
    output; -1 black) or uint8 stored pixel values as in the dataset (0..255, digits 0..16).
    ``labels``: for a conditional generator, the label each sample was generated for (N,).
    ``real``: the reference images (uint8 or float as above); by default the judge's own held-out
    images (``judge.real``). Without any, the Fréchet distance and spread are left out.

    Keys: ``samples``, ``judge`` ({run, dataset, accuracy, reference}), ``frechet_distance``
    (with ``frechet_real_halves``: between two halves of the reference, a floor for
    comparison), ``coverage``, ``classes_covered``, ``class_counts`` ({class: count}),
    ``entropy``, ``entropy_normalized``, ``largest_class``, ``largest_share``, ``spread_ratio``,
    ``label_agreement`` ({per_label: {class: share}, mean, min}; conditional only) and
    ``collapse``. A collapse also raises a :class:`ModeCollapseWarning` (unless ``warn=False``).
    """
    features, predicted = judge.features(samples, batch_size)
    classes = list(judge.classes)
    cov = class_coverage(predicted, len(classes))
    result: dict[str, Any] = {
        "samples": int(len(predicted)),
        "judge": {
            "run": str(judge.run_dir) if judge.run_dir is not None else None,
            "dataset": judge.dataset,
            "accuracy": judge.accuracy,
            "reference": None,
        },
        "frechet_distance": None,
        "frechet_real_halves": None,
        "coverage": cov["coverage"],
        "classes_covered": cov["classes_covered"],
        "class_counts": dict(zip(classes, cov["counts"])),
        "entropy": cov["entropy"],
        "entropy_normalized": cov["entropy_normalized"],
        "largest_class": classes[cov["largest_class"]],
        "largest_share": cov["largest_share"],
        "spread_ratio": None,
    }
    reference = judge.real_features() if real is None else judge.features(real, batch_size)
    spread_ratio = None
    if reference is not None:
        real_f, real_p = reference
        result["judge"]["reference"] = {"images": int(len(real_f)), "split": judge.real_split if real is None else "given"}
        if len(features) >= 2:
            result["frechet_distance"] = feature_frechet_distance(features, real_f)
        if len(real_f) >= 4:
            order = np.random.default_rng(0).permutation(len(real_f))
            half = len(order) // 2
            result["frechet_real_halves"] = feature_frechet_distance(real_f[order[:half]], real_f[order[half:]])
        gen_spread, real_spread = feature_spread(features, predicted), feature_spread(real_f, real_p)
        if gen_spread is not None and real_spread:
            spread_ratio = gen_spread / real_spread
            result["spread_ratio"] = spread_ratio
    if labels is not None:
        if len(labels) != len(predicted):
            raise DataError(f"labels: {len(labels)} labels for {len(predicted)} samples; give one label per sample.")
        agreement = label_agreement(predicted, labels, len(classes))
        result["label_agreement"] = {
            "per_label": {classes[k]: v for k, v in agreement["per_label"].items()},
            "mean": agreement["mean"],
            "min": agreement["min"],
        }
    result["collapse"] = collapse_finding(cov, classes, spread_ratio)
    if warn and result["collapse"]["collapsed"]:
        warnings.warn(_collapse_message(result), ModeCollapseWarning, stacklevel=2)
    return result


def _collapse_message(result: dict[str, Any]) -> str:
    return f"mode collapse: {'; '.join(result['collapse']['reasons'])}. {result['collapse']['advice']}"


def render_quality(result: dict[str, Any]) -> str:
    """:func:`judge_generator`'s result as a few console lines."""
    j = result["judge"]
    who = f"the classifier in {j['run']}" if j["run"] else "the judge"
    acc = f", test accuracy {j['accuracy']:.3f}" if j.get("accuracy") is not None else ""
    lines = [f"generated samples: {result['samples']}, judged by {who} ({j['dataset'] or 'same data'}{acc})"]
    if result["frechet_distance"] is not None:
        floor = result.get("frechet_real_halves")
        extra = f"; two halves of the real images: {floor:.4g}" if floor is not None else ""
        lines.append(f"  Fréchet distance on the judge's features (not FID): {result['frechet_distance']:.4g} "
                     f"against {j['reference']['images']} real {j['reference']['split']} images{extra}")
    k = len(result["class_counts"])
    lines.append(
        f"  classes covered: {result['classes_covered']}/{k}; entropy {result['entropy']:.3f} nats "
        f"({result['entropy_normalized']:.2f} of the maximum); largest class {result['largest_class']!r} "
        f"{result['largest_share']:.0%}"
        + (f"; spread {result['spread_ratio']:.2f} of the real images'" if result["spread_ratio"] is not None else "")
    )
    if "label_agreement" in result:
        la = result["label_agreement"]
        worst = min(la["per_label"], key=la["per_label"].get)
        shown = ", ".join(f"{name} {v:.2f}" for name, v in la["per_label"].items())
        lines.append(f"  label agreement: mean {la['mean']:.3f}, lowest {la['min']:.3f} ({worst!r}); per label: {shown}")
    if result["collapse"]["collapsed"]:
        lines.append(f"  WARNING {_collapse_message(result)}")
    return "\n".join(lines)
