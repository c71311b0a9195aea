"""deepworks: a deep-learning workbench on PyTorch.

>>> import deepworks
>>> model = deepworks.create_model("cnn", input_shape=(1, 8, 8), num_classes=10)
"""

import sys

from deepworks.config import Config, load_config
from deepworks.errors import CheckpointError, ConfigError, DataError, DeepworksError, ShapeError, UnknownNameError
from deepworks.models import create_model, list_models
from deepworks.training import Callback, EarlyStopping, Trainer
from deepworks.pipeline import Run, cross_validate, evaluate, load_run, lr_find, predict
from deepworks.front import resume, train
from deepworks.predictor import Predictor
from deepworks.generation import generate
from deepworks.analysis import diagnose, importance, projection
from deepworks.evaluation.importance import permutation_importance
from deepworks.reporting.compare import compare
from deepworks.reporting import write_report as report  # deepworks.report is this function, as deepworks.evaluate is
from deepworks.exporting import export  # deepworks.export is this function too, as deepworks.report is
from deepworks.version import __version__  # noqa: F401  (deepworks.__version__)

__all__ = [
    "Config",
    "load_config",
    "create_model",
    "list_models",
    "Trainer",
    "Callback",
    "EarlyStopping",
    "Run",
    "train",
    "cross_validate",
    "resume",
    "evaluate",
    "predict",
    "Predictor",
    "generate",
    "load_run",
    "lr_find",
    "importance",
    "projection",
    "diagnose",
    "permutation_importance",
    "compare",
    "report",
    "export",
    "DeepworksError",
    "ConfigError",
    "DataError",
    "ShapeError",
    "CheckpointError",
    "UnknownNameError",
]

# code that imports the renamed subpackages by their old names still works, with a DeprecationWarning,
# and never rebinds the public functions of those names (deepworks/renamed.py)
from deepworks import renamed as _renamed  # noqa: E402

_renamed.install(sys.modules[__name__])
