"""deepworks models inside scikit-learn: a GridSearchCV over a Pipeline(StandardScaler, DeepClassifier)
on digits, timed, with the best model's accuracy on held-out rows beside scikit-learn's own
MLPClassifier and LogisticRegression on the same split.

Digits (1,797 8x8 images as 64 columns) is split 75% / 25% (stratified, seed 0); the grid
search runs 5-fold cross-validation on the 75% over learning rate x hidden layers (6 settings,
30 fits and the refit), and the refitted best pipeline is scored on the 25%.

    OMP_NUM_THREADS=1 python benchmarks/sklearn_grid.py      # -> results/sklearn_grid.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import torch

from deepworks.sklearn import DeepClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GRID = {
    "deepclassifier__lr": [1e-3, 3e-3, 1e-2],
    "deepclassifier__model_params": [{"hidden": [64]}, {"hidden": [128, 64]}],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sklearn_grid.json")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    common.warn_if_busy()

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    pipe = make_pipeline(StandardScaler(), DeepClassifier(epochs=args.epochs, batch_size=64, random_state=0))
    grid = GridSearchCV(pipe, GRID, cv=5)
    started = time.perf_counter()
    grid.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    fits = len(grid.cv_results_["params"]) * grid.n_splits_ + 1

    baselines = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, est in {
            "sklearn_mlp_64": MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0),
            "logistic_regression": LogisticRegression(max_iter=2000),
        }.items():
            t = time.perf_counter()
            model = make_pipeline(StandardScaler(), est).fit(X_train, y_train)
            baselines[name] = {"test_accuracy": round(model.score(X_test, y_test), 4),
                               "fit_seconds": round(time.perf_counter() - t, 2)}

    result = {
        "data": "digits: 1,347 training rows (5-fold CV) / 450 held-out rows, stratified, seed 0",
        "estimator": f"Pipeline(StandardScaler, DeepClassifier(epochs={args.epochs}, batch_size=64, random_state=0))",
        "grid": {k.split("__")[1]: v for k, v in GRID.items()},
        "fits": fits,
        "seconds": round(seconds, 1),
        "seconds_per_fit": round(seconds / fits, 2),
        "best_params": {k.split("__")[1]: v for k, v in grid.best_params_.items()},
        "best_cv_accuracy": round(float(grid.best_score_), 4),
        "cv_accuracy": {
            f"lr={p['deepclassifier__lr']} hidden={p['deepclassifier__model_params']['hidden']}": round(float(s), 4)
            for p, s in zip(grid.cv_results_["params"], grid.cv_results_["mean_test_score"])
        },
        "test_accuracy": round(grid.score(X_test, y_test), 4),
        "baselines": baselines,
        "machine": common.machine(),
        "threads": torch.get_num_threads(),
    }
    result["machine"]["versions"]["scikit-learn"] = common.package_version("scikit-learn")
    common.write_json(args.out, result)
    print({k: v for k, v in result.items() if k != "machine"})


if __name__ == "__main__":
    main()
