"""Expected calibration error and reliability bins against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepworks.errors import DataError
from deepworks.evaluation.calibration import calibration


def test_ece_of_a_small_case_equals_a_hand_computation():
    # confidences 0.9, 0.8, 0.6, 0.55, 0.3 (four classes) in 5 bins of width 0.2:
    #   (0.2, 0.4]: 0.3 right              -> gap |1 - 0.3|      = 0.7,   weight 1/5
    #   (0.4, 0.6]: 0.6 wrong, 0.55 right  -> gap |0.5 - 0.575|  = 0.075, weight 2/5
    #   (0.6, 0.8]: 0.8 right              -> gap |1 - 0.8|      = 0.2,   weight 1/5
    #   (0.8, 1.0]: 0.9 wrong              -> gap |0 - 0.9|      = 0.9,   weight 1/5
    # ECE = (0.7 + 2 * 0.075 + 0.2 + 0.9) / 5 = 0.39; MCE = 0.9
    probs = torch.tensor([
        [0.9, 0.05, 0.03, 0.02],   # predicts 0, is 1: wrong
        [0.1, 0.8, 0.05, 0.05],    # predicts 1, is 1: right
        [0.2, 0.1, 0.6, 0.1],      # predicts 2, is 0: wrong
        [0.55, 0.25, 0.1, 0.1],    # predicts 0, is 0: right
        [0.3, 0.25, 0.25, 0.2],    # predicts 0, is 0: right
    ], dtype=torch.float64)
    targets = torch.tensor([1, 1, 0, 0, 0])
    result = calibration(probs, targets, bins=5)
    assert result["ece"] == pytest.approx(0.39, abs=1e-12)
    assert result["mce"] == pytest.approx(0.9, abs=1e-12)
    assert [b["count"] for b in result["bins"]] == [0, 1, 2, 1, 1]
    assert result["bins"][2]["confidence"] == pytest.approx(0.575) and result["bins"][2]["accuracy"] == 0.5


def test_ece_matches_a_numpy_oracle_on_random_predictions():
    g = np.random.default_rng(0)
    logits = g.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = g.integers(0, 4, size=500)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 11)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            expected += inside.mean() * abs((pred[inside] == targets[inside]).mean() - conf[inside].mean())
    result = calibration(torch.from_numpy(probs), torch.from_numpy(targets), bins=10)
    assert result["ece"] == pytest.approx(expected, abs=1e-12)
    assert sum(b["count"] for b in result["bins"]) == 500


def test_a_perfectly_calibrated_bin_has_no_gap_and_bad_shapes_are_named():
    probs = torch.tensor([[0.75, 0.25]] * 4)  # 75% confident, right 3 times out of 4
    assert calibration(probs, torch.tensor([0, 0, 0, 1]), bins=4)["ece"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError, match="expected probabilities"):
        calibration(torch.ones(3, 2) / 2, torch.zeros(4, dtype=torch.long))
