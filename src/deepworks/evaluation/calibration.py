"""Calibration: do the predicted probabilities mean what they say?

A classifier is calibrated when, among the samples it predicts with confidence 0.8, about
80% are right. The reliability diagram bins the samples by their confidence (the top class's
probability) into ``bins`` equal-width intervals ``(lower, upper]`` of [0, 1] and compares
each bin's mean confidence with its accuracy. The expected calibration error (ECE) is the
mean gap weighted by the bins' shares of the samples::

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

>>> import torch
>>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
>>> result = calibration(probs, torch.tensor([0, 1, 1]), bins=2)
>>> [(b["count"], round(b["confidence"], 2), b["accuracy"]) for b in result["bins"]]
[(0, 0.0, 0.0), (3, 0.73, 0.6666666666666666)]
>>> round(result["ece"], 4)
0.0667
"""

from __future__ import annotations

from typing import Any

import torch

from deepworks.errors import DataError

__all__ = ["calibration"]


def calibration(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Reliability bins and the expected (and maximum) calibration error.

    ``probs`` are class probabilities (N, K) (rows summing to 1), ``targets`` class indices
    (N,). Returns ``{"ece", "mce", "bins": [{lower, upper, count, confidence, accuracy}],
    "count"}``; an empty bin has count 0 (and confidence/accuracy 0) and adds nothing.
    """
    if probs.ndim != 2 or targets.ndim != 1 or len(probs) != len(targets):
        raise DataError(
            f"calibration: expected probabilities (N, K) and targets (N,), got {tuple(probs.shape)} and {tuple(targets.shape)}."
        )
    if bins < 1:
        raise DataError(f"calibration: bins must be at least 1, got {bins}.")
    probs = probs.detach().to("cpu", torch.float64)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets.detach().to("cpu").long()).double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins bin 0
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = count.clamp(min=1)
    conf_mean, acc_mean = conf_sum / safe, acc_sum / safe
    gap = (acc_mean - conf_mean).abs()
    n = len(targets)
    ece = float((count / max(n, 1) * gap).sum())
    mce = float(gap[count > 0].max()) if n else 0.0
    return {
        "ece": ece,
        "mce": mce,
        "count": n,
        "bins": [
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": int(count[b]),
                "confidence": float(conf_mean[b]),
                "accuracy": float(acc_mean[b]),
            }
            for b in range(bins)
        ],
    }
