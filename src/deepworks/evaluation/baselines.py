"""Baselines on the same split and features as the network: did the network pay off?

Classification: the majority class of the training split, and scikit-learn's
``LogisticRegression``; for text, on TF-IDF features of the raw training texts
(``TfidfVectorizer``: :func:`text_baselines`). Regression: the training mean, and ``Ridge``. Both are fitted on the
encoded training features (the same matrix the network sees) and scored with the same metric
code as the network (:func:`classification_report`, :class:`RegressionAccumulator`), so the
numbers line up with ``summary.json``'s ``val`` and ``test``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deepworks.evaluation.metrics import classification_report
from deepworks.evaluation.regression import RegressionAccumulator

__all__ = ["tabular_baselines", "text_baselines", "TFIDF_PARAMS", "TFIDF_LOGISTIC_PARAMS"]

# the text baseline: scikit-learn's TF-IDF of words (its defaults: lower-cased words of 2+ letters,
# l2-normalised rows) and a logistic regression. C = 10 was the best of 1, 3 and 10 (and of word
# pairs or sublinear tf) on the rotten-tomatoes validation split
TFIDF_PARAMS: dict[str, Any] = {"ngram_range": (1, 1), "sublinear_tf": False, "lowercase": True}
TFIDF_LOGISTIC_PARAMS: dict[str, Any] = {"C": 10.0, "max_iter": 2000}

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


# the linear baselines are fitted on at most this many training rows (a seeded sample beyond it) and
# predict this many rows at a time: on a table of millions of rows they stay seconds and megabytes
MAX_FIT_ROWS = 100_000
PREDICT_CHUNK = 50_000


def tabular_baselines(
    task: Any,
    train: tuple[torch.Tensor, torch.Tensor],
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    seed: int = 0,
    *,
    features: Callable[[np.ndarray], Any] | None = None,
    max_fit_rows: int = MAX_FIT_ROWS,
) -> dict[str, Any]:
    """``{baseline: {split: metrics}}`` for ``splits`` (e.g. val and test), fitted on ``train``.

    ``task`` is the run's task; regression targets are standardised and the metrics are in
    the target's units, like the network's. ``features`` turns rows of the model's input into
    the features the linear models read (a table's slots into its one-hot features, dense or
    sparse); by default the input itself. The linear model is fitted on at most
    ``max_fit_rows`` training rows (a sample seeded by ``seed`` beyond that); the majority
    class and the training mean count every training row.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    xtr, ytr = (t.detach().cpu().numpy() for t in train)
    parts = {name: (x.detach().cpu().numpy(), y.detach().cpu().numpy()) for name, (x, y) in splits.items()}
    prepare = features or (lambda a: a)
    fit_rows = np.arange(len(ytr))
    if len(ytr) > max_fit_rows:
        fit_rows = np.sort(np.random.default_rng(seed).choice(len(ytr), max_fit_rows, replace=False))

    def predict(model: Any, x: np.ndarray) -> np.ndarray:
        return np.concatenate([model.predict(prepare(x[i:i + PREDICT_CHUNK])) for i in range(0, len(x), PREDICT_CHUNK)])

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
            model.fit(prepare(xtr[fit_rows]), ytr[fit_rows])
        out["logistic_regression"] = {
            name: _classification_scores(predict(model, x), y, k) for name, (x, y) in parts.items()
        }
    elif task.name == "regression":
        ytr = ytr.reshape(len(ytr), -1)
        mean = ytr.mean(axis=0)
        out["training_mean"] = {
            name: _regression_scores(np.tile(mean, (len(y), 1)), y.reshape(len(y), -1), task.mean, task.std)
            for name, (x, y) in parts.items()
        }
        model = Ridge(alpha=1.0)
        model.fit(prepare(xtr[fit_rows]), ytr[fit_rows])
        out["ridge"] = {
            name: _regression_scores(predict(model, x).reshape(len(y), -1), y.reshape(len(y), -1), task.mean, task.std)
            for name, (x, y) in parts.items()
        }
    return out


def text_baselines(
    task: Any,
    train: tuple[list[str], torch.Tensor],
    splits: dict[str, tuple[list[str], torch.Tensor]],
    seed: int = 0,
) -> dict[str, Any]:
    """``{"majority_class": ..., "tfidf_logistic": ...}``, each ``{split: metrics}``, for text
    classification: fitted on the raw training texts (``train`` = (texts, labels)), scored on
    ``splits`` with the network's metric code. The TF-IDF vocabulary and weights come from
    the training texts only (:data:`TFIDF_PARAMS`, :data:`TFIDF_LOGISTIC_PARAMS`). For a
    regression on texts (standardised targets): ``training_mean`` and ``tfidf_ridge`` (scikit-learn's
    ``Ridge``, alpha 1, on the same TF-IDF features)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    texts, y = list(train[0]), train[1].detach().cpu().numpy()
    parts = {name: (list(t), v.detach().cpu().numpy()) for name, (t, v) in splits.items() if len(t)}
    if task.name == "regression":
        y = y.reshape(len(y), -1)
        mean = y.mean(axis=0)
        vectorizer = TfidfVectorizer(**TFIDF_PARAMS)
        ridge = Ridge(alpha=1.0).fit(vectorizer.fit_transform(texts), y)
        return {
            "training_mean": {name: _regression_scores(np.tile(mean, (len(v), 1)), v.reshape(len(v), -1), task.mean,
                                                       task.std) for name, (t, v) in parts.items()},
            "tfidf_ridge": {name: _regression_scores(ridge.predict(vectorizer.transform(t)).reshape(len(v), -1),
                                                     v.reshape(len(v), -1), task.mean, task.std)
                            for name, (t, v) in parts.items()},
        }
    k = task.output_size()
    majority = int(np.bincount(y, minlength=k).argmax())
    out: dict[str, Any] = {
        "majority_class": {name: _classification_scores(np.full(len(v), majority), v, k) for name, (t, v) in parts.items()}
    }
    vectorizer = TfidfVectorizer(**TFIDF_PARAMS)
    model = LogisticRegression(**TFIDF_LOGISTIC_PARAMS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the score says how it did
        model.fit(vectorizer.fit_transform(texts), y)
    out["tfidf_logistic"] = {
        name: _classification_scores(model.predict(vectorizer.transform(t)), v, k) for name, (t, v) in parts.items()
    }
    return out
