"""The softmax model is multinomial logistic regression: parity with scikit-learn's LogisticRegression.

Same split (deepworks' ``split_dataset``, seed 0), same standardisation (training-split
statistics), same L2 strength. scikit-learn minimises ``C * sum_i CE_i + ||W||^2 / 2``
(biases not penalised); deepworks' trainer minimises ``mean_i CE_i + l2 / 2 * ||W||^2``
over weights (not biases). Dividing the first by ``C * n_train`` gives the second with
``l2 = 1 / (C * n_train)``: the two have the same minimiser.

Checked on the digits as a 64-feature table and on a numeric CSV read by the tabular
loader: test accuracy within 1 point, the same coefficients (correlation > 0.95) and the
same value of the penalised objective (deepworks is not worse than scikit-learn's lbfgs).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from deepworks.data import ImageDataset, channel_stats, load_dataset, normalize, split_dataset
from deepworks.models import create_model
from deepworks.training import Callback, Trainer

C = 1.0  # scikit-learn's inverse regularisation strength (its default)
EPOCHS = 500


class FinalWeights(Callback):
    """Keep the weights of the last step: parity is about the optimiser's end point, not a checkpoint pick."""

    state: dict[str, torch.Tensor] | None = None

    def on_train_end(self, trainer: Trainer) -> None:
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def objective(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    """mean cross-entropy + l2 / 2 * ||W||^2, in float64."""
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + 0.5 * l2 * (w**2).sum())


def fit_both(ds: ImageDataset) -> dict[str, float]:
    s = split_dataset(ds, seed=0)
    (xtr, ytr), (xte, yte) = s.train, s.test
    mean, std = channel_stats(xtr)  # training split only
    xtr, xte = normalize(xtr, mean, std), normalize(xte, mean, std)
    n = len(ytr)
    x64, y_np = xtr.double().numpy(), ytr.numpy()

    sk = LogisticRegression(C=C, max_iter=5000).fit(x64, y_np)  # multinomial, lbfgs
    acc_sk = float(sk.score(xte.double().numpy(), yte.numpy()))

    l2 = 1.0 / (C * n)
    torch.manual_seed(0)
    model = create_model("softmax", input_shape=ds.input_shape, num_classes=len(ds.classes))
    final = FinalWeights()
    trainer = Trainer(
        model,
        {
            "epochs": EPOCHS, "batch_size": n,  # full batch: plain (deterministic) optimisation
            "optimizer": {"name": "adamw", "lr": 0.05, "weight_decay": 0.0},
            "l2": l2, "precision": "fp32", "device": "cpu", "compile": "off", "progress": "none",
            "monitor": "train_loss",
        },
        classes=ds.classes, seed=0, callbacks=[final],
    )
    trainer.fit((xtr, ytr))
    assert final.state is not None
    model.load_state_dict(final.state)
    acc_dw = float(trainer.evaluate((xte, yte))["accuracy"])

    linear = model[1]
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    return {
        "acc_sk": acc_sk,
        "acc_dw": acc_dw,
        "corr": float(np.corrcoef(w.ravel(), sk.coef_.ravel())[0, 1]),
        "obj_sk": objective(sk.coef_, sk.intercept_, x64, y_np, l2),
        "obj_dw": objective(w, b, x64, y_np, l2),
    }


def digits_table() -> ImageDataset:
    images = load_dataset("digits")  # (N, 1, 8, 8) -> (N, 64) features
    features = images.x.reshape(len(images.x), -1).float() * images.scale  # uint8 0..16 -> [0, 1]
    return ImageDataset("digits-table", features, images.y, images.classes)


def numeric_csv(tmp_path: Path) -> ImageDataset:
    x, y = make_classification(
        n_samples=600, n_features=8, n_informative=5, n_redundant=2, n_classes=3, n_clusters_per_class=1,
        random_state=0,
    )
    x = x * np.array([1.0, 10.0, 0.1, 100.0, 1.0, 5.0, 0.5, 2.0]) + np.arange(8) * 3.0  # uneven units
    names = ["setosa", "versicolor", "virginica"]
    path = tmp_path / "numeric.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"f{i}" for i in range(8)] + ["label"])
        writer.writerows([*map(float, row), names[label]] for row, label in zip(x, y))
    ds = load_dataset(path=path, target="label")
    assert ds.input_shape == (8,) and ds.classes == names
    return ds


@pytest.mark.parametrize("source", ["digits", "csv"])
def test_softmax_matches_sklearn_logistic_regression(source, tmp_path):
    ds = digits_table() if source == "digits" else numeric_csv(tmp_path)
    r = fit_both(ds)
    report = ", ".join(f"{k}={v:.5f}" for k, v in r.items())
    assert abs(r["acc_dw"] - r["acc_sk"]) <= 0.01, report
    assert r["corr"] > 0.95, report
    # the same penalised optimum: a lower value than lbfgs's is fine, a clearly higher one is not
    assert r["obj_dw"] <= r["obj_sk"] * (1 + 2e-3), report
