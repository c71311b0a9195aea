"""scikit-learn estimators: deepworks models in ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``.

``DeepClassifier`` and ``DeepRegressor`` follow scikit-learn's estimator contract: ``__init__``
only stores its arguments, ``fit`` validates them and the data, builds a registered model
(:func:`deepworks.models.create_model`) and trains it with deepworks' :class:`Trainer` (no run
directory, no checkpoints), and returns ``self``; ``predict``, ``predict_proba`` (classifier),
``score``, ``get_params``/``set_params`` and ``clone`` work as for any scikit-learn estimator.

>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)
>>> clf = DeepClassifier(model_params={"hidden": [32]}, epochs=2, random_state=0).fit(X / 16, y)
>>> clf.predict(X[:3] / 16).shape, clf.classes_[:3]
((3,), array([0, 1, 2]))

Inputs are used as given: scale them first (``make_pipeline(StandardScaler(), DeepClassifier())``).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from contextlib import contextmanager
from copy import deepcopy
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from deepworks.errors import ConfigError, ShapeError, close_matches
from deepworks.models.gan import is_adversarial
from deepworks.models.registry import MODELS, create_model, takes_flat_input
from deepworks.runtime import resolve_precision
from deepworks.training.tasks import Classification, Regression
from deepworks.training.trainer import Trainer

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # older releases: the estimator's own method
    def _validate_data(estimator: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)

__all__ = ["DeepClassifier", "DeepRegressor", "EstimatorParamError"]

# TrainConfig keys the estimator's own parameters set, and keys that make no sense here
_OWNED = {
    "epochs": "epochs", "batch_size": "batch_size", "l2": "l2", "early_stopping": "early_stopping",
    "precision": "precision", "device": "device", "progress": "verbose",
}
_REFUSED = {
    "tta": "test-time flips are for image runs of the pipeline",
    "tensorboard": "there is no run directory to write logs into",
    "checkpoint_every_steps": "there is no run directory to write checkpoints into",
}


class EstimatorParamError(ConfigError, ValueError):
    """A constructor parameter of :class:`DeepClassifier`/:class:`DeepRegressor` is invalid.

    A :class:`~deepworks.errors.ConfigError` and a ``ValueError`` (what scikit-learn code expects)."""


def _predictive_models() -> list[str]:
    """The registered models that map an input to outputs (the GANs generate instead)."""
    return [name for name in MODELS.names() if not is_adversarial(name)]


def _plain(message: str, section: str) -> str:
    """A config error in an estimator's terms: keys without their config section, no advice about files."""
    message = message.replace("Fix these keys in the file or in --set.", "").replace("invalid config.", "").strip()
    message = re.sub(r"^(Trainer config|model '[^']*'):\s*", "", message)
    return re.sub(rf"\b{section}\.(?=\w)", "", message)


def _train_param(message: str) -> str:
    """The estimator parameter behind the first ``train.*`` key a config error names."""
    found = re.search(r"train\.([\w.]+)", message)
    key = found.group(1) if found else ""
    if key.startswith("optimizer.name"):
        return "optimizer"
    if key.startswith("optimizer.lr"):
        return "lr"
    if key.startswith("optimizer."):
        return "train_params['optimizer']"
    top = key.split(".")[0]
    return top if top in _OWNED and top != "progress" else "train_params"


@contextmanager
def _global_rngs_kept():
    """Training seeds Python's, NumPy's and torch's global generators (and torch's determinism
    flag); put them back afterwards so a fit does not change what the caller draws next."""
    py, np_state, deterministic = random.getstate(), np.random.get_state(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class _DeepEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the model, training, the forward pass."""

    def __init__(
        self,
        model: str = "mlp",
        model_params: dict | None = None,
        *,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 1e-3,
        optimizer: str = "adamw",
        l2: float = 0.0,
        early_stopping: int | None = None,
        validation_fraction: float = 0.1,
        input_shape: tuple[int, ...] | None = None,
        precision: str = "auto",
        device: str = "auto",
        train_params: dict | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ):
        self.model = model
        self.model_params = model_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.l2 = l2
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.precision = precision
        self.device = device
        self.train_params = train_params
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters

    def _error(self, param: str, message: str) -> EstimatorParamError:
        return EstimatorParamError(f"{type(self).__name__}({param}=...): {message}")

    def _check_params(self, n_features: int) -> tuple[tuple[int, ...], dict[str, Any]]:
        """Validate the constructor parameters; the model's input shape and the Trainer config."""
        name = type(self).__name__
        models = _predictive_models()
        if not isinstance(self.model, str) or self.model not in models:
            hint = close_matches(str(self.model), models)
            guess = f" Did you mean {hint[0]!r}?" if hint else ""
            what = "a GAN, which generates images and predicts nothing" if is_adversarial(str(self.model)) else "unknown"
            raise self._error(
                "model", f"model {self.model!r} is {what}.{guess} Choose a registered model: {', '.join(models)} "
                f"(e.g. {name}(model='mlp'))."
            )
        if self.model_params is not None and not isinstance(self.model_params, Mapping):
            raise self._error(
                "model_params", f"expected a dict of the model's own keys or None, got {self.model_params!r} "
                f"(e.g. {name}(model='mlp', model_params={{'hidden': [64]}}))."
            )
        for param, low in (("epochs", 1), ("batch_size", 1)):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise self._error(param, f"expected a whole number >= {low}, got {value!r}.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, Real) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise self._error("lr", f"expected a learning rate > 0 (e.g. 1e-3), got {self.lr!r}.")
        if isinstance(self.l2, bool) or not isinstance(self.l2, Real) or not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise self._error("l2", f"expected a penalty >= 0 (0 turns it off), got {self.l2!r}.")
        es = self.early_stopping
        if es is not None and (isinstance(es, bool) or not isinstance(es, Integral) or es < 1):
            raise self._error(
                "early_stopping", f"expected None (off) or a patience in epochs >= 1 (e.g. 5), got {es!r}."
            )
        vf = self.validation_fraction
        if es is not None and (isinstance(vf, bool) or not isinstance(vf, Real) or not 0 < vf < 1):
            raise self._error(
                "validation_fraction", f"early stopping holds out this share of the training rows; expected a "
                f"number between 0 and 1 (e.g. 0.1), got {vf!r}."
            )
        if isinstance(self.verbose, bool) or not isinstance(self.verbose, Integral) or self.verbose < 0:
            raise self._error("verbose", f"expected 0 (silent) or 1 (one line per epoch), got {self.verbose!r}.")
        if self.train_params is not None and not isinstance(self.train_params, Mapping):
            raise self._error("train_params", f"expected a dict of further train.* keys or None, got {self.train_params!r}.")

        shape = self._input_shape(n_features)
        config: dict[str, Any] = {}
        extra = dict(self.train_params or {})
        for key in extra:
            if key in _OWNED:
                raise self._error(
                    "train_params", f"{key!r} is set by the estimator's own parameter {_OWNED[key]}. "
                    f"Fix: {name}({_OWNED[key]}=...) instead."
                )
            if key in _REFUSED:
                raise self._error("train_params", f"{key!r} is not available in an estimator: {_REFUSED[key]}.")
        extra_opt = dict(extra.pop("optimizer", None) or {})
        for key, param in (("name", "optimizer"), ("lr", "lr")):
            if key in extra_opt:
                raise self._error(
                    "train_params", f"optimizer {key!r} is set by the estimator's parameter {param}. "
                    f"Fix: {name}({param}=...) instead."
                )
        config.update(extra)
        config.update(
            epochs=int(self.epochs), batch_size=int(self.batch_size), l2=float(self.l2),
            optimizer={"name": self.optimizer, "lr": float(self.lr), **extra_opt},
            early_stopping={"patience": int(es)} if es is not None else None,
            precision=self.precision, device=self.device, progress="log" if self.verbose else "none",
        )
        if es is None:  # no validation rows: keep the final weights unless train_params says otherwise
            config.setdefault("monitor", "last")
        return shape, config

    def _input_shape(self, n_features: int) -> tuple[int, ...]:
        name = type(self).__name__
        if self.input_shape is None:
            if not takes_flat_input(self.model):
                raise self._error(
                    "input_shape", f"model {self.model!r} reads images (channels, height, width), and rows of "
                    f"{n_features} features need a shape for them. Fix: {name}(model={self.model!r}, "
                    f"input_shape=(1, H, W)) with 1 * H * W = {n_features}, e.g. (1, 8, 8) for 64 features."
                )
            return (n_features,)
        try:
            shape = tuple(int(s) for s in self.input_shape)
            ok = all(s >= 1 and s == t for s, t in zip(shape, self.input_shape)) and len(shape) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise self._error(
                "input_shape", f"expected None (flat rows) or a tuple of whole numbers such as (1, 8, 8), got "
                f"{self.input_shape!r}."
            )
        if math.prod(shape) != n_features:
            raise self._error(
                "input_shape", f"{shape} holds {math.prod(shape)} values, but each row of X has {n_features} "
                "features. Fix: a shape whose product is the number of columns."
            )
        return shape

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:  # scikit-learn's meaning: a different run each time
            return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(0, 2**31 - 1))
        if isinstance(rs, bool) or not isinstance(rs, Integral) or rs < 0:
            raise self._error("random_state", f"expected None, a whole number >= 0 or a RandomState, got {rs!r}.")
        return int(rs)

    # ------------------------------------------------------------------ training and the forward pass

    def _train(self, X: np.ndarray, y: np.ndarray, task: Any, num_outputs: int, stratify: bool) -> None:
        """Build the model and train it with the Trainer; sets ``model_``, ``history_``, ``n_iter_``."""
        shape, config = self._check_params(X.shape[1])
        seed = self._seed()
        val = None
        if self.early_stopping is not None:
            strata = y if stratify and np.unique(y, return_counts=True)[1].min() >= 2 else None
            try:
                X, X_val, y, y_val = train_test_split(
                    X, y, test_size=self.validation_fraction, random_state=seed, stratify=strata
                )
            except ValueError as exc:
                raise self._error(
                    "validation_fraction", f"cannot hold out {self.validation_fraction} of {len(X)} rows for early "
                    f"stopping ({exc}). Fix: more rows, another validation_fraction, or early_stopping=None."
                ) from None
            val = (self._tensor(X_val, shape), torch.as_tensor(y_val))
        with _global_rngs_kept():
            torch.manual_seed(seed)
            try:
                model = create_model(self.model, input_shape=shape, num_classes=num_outputs, **dict(self.model_params or {}))
            except ShapeError as exc:  # the model cannot read rows of this shape
                raise self._error("input_shape" if self.input_shape is not None else "model", str(exc)) from None
            except ConfigError as exc:
                raise self._error("model_params", _plain(str(exc), "model")) from None
            try:
                trainer = Trainer(model, config, task=task, seed=seed)
            except ConfigError as exc:
                raise self._error(_train_param(str(exc)), _plain(str(exc), "train")) from None
            self.history_ = trainer.fit((self._tensor(X, shape), torch.as_tensor(y)), val)
        self.model_ = model.eval()
        self.n_iter_ = len(self.history_)
        self._shape, self._eval_batch_size = shape, trainer.eval_batch_size()

    def _tensor(self, X: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(np.asarray(X, dtype=np.float32)).reshape(len(X), *shape)  # a copy: X may be read-only

    def _outputs(self, X: Any) -> torch.Tensor:
        """The fitted model's raw outputs on X (logits, or standardised targets), float32 on the CPU."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        model = self.model_
        device = next(model.parameters()).device
        precision = resolve_precision(self.precision, device, model, "off")
        shape = self._shape
        outputs = []
        with torch.no_grad():
            for start in range(0, len(X), self._eval_batch_size):
                xb = self._tensor(X[start:start + self._eval_batch_size], shape).to(device)
                with precision.autocast():
                    outputs.append(model(xb).float().cpu())
        return torch.cat(outputs) if outputs else torch.zeros(0, 0)

    def _fit_data(self, X: Any, y: Any, multi_output: bool) -> tuple[np.ndarray, np.ndarray]:
        return _validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=multi_output, y_numeric=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the model's weights on the CPU, so it unpickles on machines without the GPU;
        the device it was fitted on goes with it, and unpickling returns there when it exists."""
        state = super().__getstate__()
        if "model_" in state and next(state["model_"].parameters()).device.type != "cpu":
            device = next(state["model_"].parameters()).device
            state = {**state, "model_": deepcopy(state["model_"]).to("cpu"), "_fitted_device": str(device)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        device = state.pop("_fitted_device", None)
        super().__setstate__(state)
        if device is not None and "model_" in state and _available(torch.device(device)):
            self.model_.to(device)  # the same device, so the same predictions as before pickling

    def _tags_update(self, tags: Any) -> Any:
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.random_state is None
        return tags


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return device.type == "cpu"


class DeepClassifier(ClassifierMixin, _DeepEstimator):
    """A deepworks model as a scikit-learn classifier.

    Parameters
    ----------
    model : a registered model name (``deepworks.list_models()``): ``mlp`` (default) and ``softmax``
        read the rows as they are; ``cnn`` (and the other image models) need ``input_shape``.
    model_params : the model's own keys, e.g. ``{"hidden": [64], "dropout": 0.1}`` for ``mlp``.
    epochs, batch_size, lr, optimizer, l2 : ``train.epochs``, ``train.batch_size``,
        ``train.optimizer.lr``, ``train.optimizer.name`` (adamw, adam, sgd, rmsprop, lbfgs) and ``train.l2``.
    early_stopping : None (train all epochs, keep the final weights) or a patience in epochs: then
        ``validation_fraction`` of the rows (stratified) are held out, training stops when the
        validation loss has not improved for that many epochs, and the weights of the epoch with
        the best validation accuracy are kept.
    input_shape : None, or the shape one row is reshaped to, e.g. ``(1, 8, 8)`` for a ``cnn`` on
        8x8 images stored as 64 columns.
    precision, device : ``train.precision`` and ``train.device`` (auto: the GPU when there is one).
    train_params : further ``train.*`` keys, e.g. ``{"schedule": {"name": "cosine"}, "label_smoothing": 0.1}``
        or ``{"optimizer": {"weight_decay": 0.01}}``.
    random_state : a whole number seeds the weights, the shuffling and the validation split (the
        same number, the same predictions); None draws a fresh seed each fit.
    verbose : 1 prints one line per epoch.

    Attributes
    ----------
    classes_ : the labels, sorted (any labels: strings, integers); ``predict`` returns them.
    model_ : the trained ``nn.Module``; history_ : the Trainer's per-epoch metrics; n_iter_ : epochs run;
    n_features_in_, feature_names_in_ (for DataFrames with string column names).
    """

    def fit(self, X: Any, y: Any) -> DeepClassifier:
        X, y = self._fit_data(X, y, multi_output=False)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise self._error_data(
                f"y holds only one class ({classes[0]!r}); a classifier needs at least two. Fix: training rows "
                "of two or more classes."
            )
        task = Classification(classes=[str(c) for c in classes])
        self._train(X, encoder.transform(y).astype(np.int64), task, len(classes), stratify=True)
        self.classes_ = classes  # set once training succeeded: a failed fit leaves nothing that looks fitted
        return self

    def _error_data(self, message: str) -> ValueError:
        return ValueError(f"{type(self).__name__}.fit: {message}")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``; rows sum to 1."""
        logits = self._outputs(X).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return torch.log_softmax(self._outputs(X).double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as one of ``classes_``."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self) -> Any:
        return self._tags_update(super().__sklearn_tags__())

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"allow_nan": False, "non_deterministic": self.random_state is None}


class DeepRegressor(RegressorMixin, _DeepEstimator):
    """A deepworks model as a scikit-learn regressor; one target (y of shape (n,)) or several ((n, t)).

    The network learns the standardised targets (each target's training mean and standard
    deviation, with deepworks' regression task: MSE, or Huber with ``train_params={"loss": "huber"}``)
    and ``predict`` maps its outputs back to the targets' units. Parameters as for
    :class:`DeepClassifier`; with ``early_stopping`` the kept weights are those of the epoch with
    the lowest validation loss. ``predict`` returns (n,) when y was 1-D, else (n, t).
    """

    def fit(self, X: Any, y: Any) -> DeepRegressor:
        X, y = self._fit_data(X, y, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        y2 = y[:, None] if y.ndim == 1 else y
        mean, std = y2.mean(axis=0), y2.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant target: learn zeros, predict the constant
        outputs = y2.shape[1]
        task = Regression(targets=[f"y{i}" for i in range(outputs)], mean=mean.tolist(), std=std.tolist())
        self._train(X, ((y2 - mean) / std).astype(np.float32), task, outputs, stratify=False)
        self.n_outputs_, self._task, self._y_1d = outputs, task, y.ndim == 1
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the targets' units: (n,) for a 1-D training y, (n, t) otherwise."""
        check_is_fitted(self)
        values = self._task.unscale(self._outputs(X)).numpy()
        return values[:, 0] if self._y_1d else values

    def __sklearn_tags__(self) -> Any:
        tags = self._tags_update(super().__sklearn_tags__())
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"allow_nan": False, "multioutput": True, "non_deterministic": self.random_state is None}
