"""Baselines on the same split and features as the network: did the network pay off?

Classification: the majority class of the training split, and scikit-learn's
``LogisticRegression``. Regression: the training mean, and ``Ridge``. Both are fitted on the
encoded training features (the same matrix the network sees) and scored with the same metric
code as the network (:func:`classification_report`, :class:`RegressionAccumulator`), so the
numbers line up with ``summary.json``'s ``val`` and ``test``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from deepworks.evaluate.metrics import classification_report
from deepworks.evaluate.regression import RegressionAccumulator

__all__ = ["tabular_baselines"]

_CLASSIFICATION_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
_REGRESSION_KEYS = ("mae", "rmse", "r2")


def _classification_scores(pred: np.ndarray, true: np.ndarray, k: int) -> dict[str, float]:
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)  # rows true, columns predicted
    report = classification_report(confusion, [str(i) for i in range(k)])
    return {key: report[key] for key in _CLASSIFICATION_KEYS}


def _regression_scores(pred: np.ndarray, true: np.ndarray, mean: list[float], std: list[float]) -> dict[str, float]:
    acc = RegressionAccumulator(true.shape[1], mean=mean, std=std)
    acc.update(torch.from_numpy(pred), torch.from_numpy(true))
    scores = acc.compute()
    return {key: scores[key] for key in _REGRESSION_KEYS}


def tabular_baselines(
    task: Any,
    train: tuple[torch.Tensor, torch.Tensor],
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    seed: int = 0,
) -> dict[str, Any]:
    """``{baseline: {split: metrics}}`` for ``splits`` (e.g. val and test), fitted on ``train``.

    ``task`` is the run's task; regression targets are standardised and the metrics are in
    the target's units, like the network's.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    xtr, ytr = (t.detach().cpu().numpy() for t in train)
    parts = {name: (x.detach().cpu().numpy(), y.detach().cpu().numpy()) for name, (x, y) in splits.items()}
    out: dict[str, Any] = {}
    if task.name == "classification":
        k = task.output_size()
        majority = int(np.bincount(ytr, minlength=k).argmax())
        out["majority_class"] = {
            name: _classification_scores(np.full(len(y), majority), y, k) for name, (x, y) in parts.items()
        }
        model = LogisticRegression(max_iter=2000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the score says how it did
            model.fit(xtr, ytr)
        out["logistic_regression"] = {
            name: _classification_scores(model.predict(x), y, k) for name, (x, y) in parts.items()
        }
    elif task.name == "regression":
        ytr = ytr.reshape(len(ytr), -1)
        mean = ytr.mean(axis=0)
        out["training_mean"] = {
            name: _regression_scores(np.tile(mean, (len(y), 1)), y.reshape(len(y), -1), task.mean, task.std)
            for name, (x, y) in parts.items()
        }
        model = Ridge(alpha=1.0)
        model.fit(xtr, ytr)
        out["ridge"] = {
            name: _regression_scores(model.predict(x).reshape(len(y), -1), y.reshape(len(y), -1), task.mean, task.std)
            for name, (x, y) in parts.items()
        }
    return out
