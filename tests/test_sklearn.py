"""deepworks.sklearn: DeepClassifier and DeepRegressor under scikit-learn's estimator checks and tools."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from deepworks.errors import ConfigError
from deepworks.sklearn import DeepClassifier, DeepRegressor, EstimatorParamError

SMALL = {"model_params": {"hidden": [16], "dropout": 0.0}, "epochs": 20, "lr": 0.01, "batch_size": 32, "random_state": 0}



# every check scikit-learn runs for these estimators passes: none is marked expected-to-fail
@parametrize_with_checks([DeepClassifier(**SMALL), DeepRegressor(**SMALL)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


def fast(**kw):
    params = {"model_params": {"hidden": [32], "dropout": 0.0}, "epochs": 6, "lr": 0.01, "random_state": 0}
    params.update(kw)
    return params


def test_grid_search_on_digits_in_a_pipeline(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), DeepClassifier(**fast()))
    grid = GridSearchCV(
        pipe,
        {"deepclassifier__lr": [0.003, 0.01], "deepclassifier__model_params": [{"hidden": [16]}, {"hidden": [64]}]},
        cv=3,
    )
    grid.fit(X, y)
    assert len(grid.cv_results_["mean_test_score"]) == 4
    assert not np.isnan(grid.cv_results_["mean_test_score"]).any()
    assert grid.best_score_ > 0.9
    assert grid.best_estimator_.score(X, y) > 0.95


def test_grid_search_over_the_bare_estimator(digits):
    X, y = digits
    grid = GridSearchCV(DeepClassifier(**fast(epochs=3)), {"lr": [0.003, 0.01]}, cv=3).fit(X / 16, y)
    assert set(grid.best_params_) == {"lr"} and grid.best_score_ > 0.8


def test_cross_val_score(digits):
    X, y = digits
    scores = cross_val_score(make_pipeline(StandardScaler(), DeepClassifier(**fast())), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_clone_round_trips_params():
    est = DeepClassifier(model="cnn", model_params={"filters": [8]}, input_shape=(1, 8, 8), epochs=3, lr=0.02,
                         early_stopping=2, train_params={"label_smoothing": 0.1}, random_state=7)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert copy.set_params(lr=0.5).lr == 0.5 and est.lr == 0.02


def test_cnn_reads_digit_rows_as_images(digits):
    X, y = digits
    clf = DeepClassifier(model="cnn", model_params={"filters": [8]}, input_shape=(1, 8, 8), epochs=4, lr=0.01,
                         random_state=0).fit(X[:1200] / 16, y[:1200])
    device = next(clf.model_.parameters()).device  # the GPU when there is one
    assert clf.model_(torch.zeros(2, 1, 8, 8, device=device)).shape == (2, 10)
    assert clf.score(X[1200:] / 16, y[1200:]) > 0.85


def test_string_labels_come_back(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = DeepClassifier(**fast()).fit(X / 16, names[y])
    assert list(clf.classes_) == sorted(names)
    pred = clf.predict(X / 16)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert (pred == names[y]).mean() > 0.9


def test_predict_proba_agrees_with_predict(digits):
    X, y = digits
    clf = DeepClassifier(**fast()).fit(X / 16, y)
    proba = clf.predict_proba(X / 16)
    assert proba.shape == (len(X), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X / 16))
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[:20] / 16)), proba[:20], rtol=1e-12)


def test_cross_val_score_in_worker_processes(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), DeepClassifier(**fast(epochs=3)))
    scores = cross_val_score(pipe, X, y, cv=2, n_jobs=2)  # the estimator is pickled to each worker
    np.testing.assert_array_equal(scores, cross_val_score(pipe, X, y, cv=2))


def test_same_random_state_same_predictions(digits):
    X, y = digits
    a = DeepClassifier(**fast(epochs=2)).fit(X / 16, y).predict_proba(X / 16)
    b = DeepClassifier(**fast(epochs=2)).fit(X / 16, y).predict_proba(X / 16)
    c = DeepClassifier(**fast(epochs=2, random_state=1)).fit(X / 16, y).predict_proba(X / 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_the_global_generators_alone(digits):
    X, y = digits
    np.random.seed(3)
    expected = np.random.rand()
    np.random.seed(3)
    DeepClassifier(**fast(epochs=1)).fit(X / 16, y)
    assert np.random.rand() == expected


def test_pickle_round_trip(digits):
    X, y = digits
    clf = DeepClassifier(**fast(epochs=2, early_stopping=1)).fit(X / 16, y)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X / 16), clf.predict_proba(X / 16))
    reg = DeepRegressor(**fast(epochs=2)).fit(X / 16, y.astype(float))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reg)).predict(X / 16), reg.predict(X / 16))


def test_early_stopping_holds_out_rows_and_stops(digits):
    X, y = digits
    clf = DeepClassifier(**fast(epochs=200, early_stopping=2, validation_fraction=0.2)).fit(X / 16, y)
    assert clf.n_iter_ < 200 and "val_accuracy" in clf.history_[-1]


def test_dataframe_feature_names(digits):
    X, y = digits
    frame = pd.DataFrame(X / 16, columns=[f"px{i}" for i in range(64)])
    clf = DeepClassifier(**fast(epochs=1)).fit(frame, y)
    assert list(clf.feature_names_in_) == list(frame.columns) and clf.n_features_in_ == 64


def test_regressor_learns_scaled_targets_and_several_outputs():
    X, y = make_regression(n_samples=400, n_features=8, n_targets=2, noise=1.0, random_state=0)
    y = y * 1000 + 5000  # far from standardised: the estimator standardises and maps back
    reg = DeepRegressor(model_params={"hidden": [32], "dropout": 0.0}, epochs=60, lr=0.01, random_state=0).fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == (400, 2) and reg.n_outputs_ == 2
    assert reg.score(X, y) > 0.9
    one = DeepRegressor(**fast(epochs=2)).fit(X, y[:, 0])
    assert one.predict(X).shape == (400,)


@pytest.mark.parametrize(
    "params, names",
    [
        ({"model": "mpl"}, ["model=", "unknown", "'mlp'"]),
        ({"model": "dcgan"}, ["model=", "GAN"]),
        ({"model_params": {"hiden": [8]}}, ["model_params=", "hiden"]),
        ({"epochs": 0}, ["epochs=", ">= 1"]),
        ({"lr": -1.0}, ["lr=", "> 0"]),
        ({"model": "cnn"}, ["input_shape=", "(1, 8, 8)"]),
        ({"input_shape": (1, 7, 7)}, ["input_shape=", "64 features"]),
        ({"early_stopping": 3, "validation_fraction": 1.5}, ["validation_fraction=", "between 0 and 1"]),
        ({"train_params": {"epochs": 3}}, ["train_params=", "DeepClassifier(epochs=...)"]),
        ({"optimizer": "adamm"}, ["optimizer=", "adamw"]),
        ({"train_params": {"optimizer": {"momentum": 0.9}}}, ["train_params['optimizer']=", "weight_decay"]),
        ({"precision": "fp8"}, ["precision=", "fp32"]),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_fix(digits, params, names):
    X, y = digits
    est = DeepClassifier(**{**fast(epochs=1), **params})  # __init__ only stores
    with pytest.raises(EstimatorParamError) as err:
        est.fit(X[:100], y[:100])
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    for name in names:
        assert name in str(err.value), str(err.value)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="only one class"):
        DeepClassifier(**fast(epochs=1)).fit(np.ones((10, 3)), np.zeros(10))
