"""deepworks: a deep-learning workbench on PyTorch.

>>> import deepworks
>>> model = deepworks.create_model("cnn", input_shape=(1, 8, 8), num_classes=10)
"""

import importlib
import sys
from typing import TYPE_CHECKING

from deepworks.errors import CheckpointError, ConfigError, DataError, DeepworksError, ShapeError, UnknownNameError
from deepworks.version import __version__  # noqa: F401  (deepworks.__version__)

# The public names load on first use (PEP 562), so `import deepworks.cli` (every command, `--version`, each
# shell-completion TAB) does not import torch and the whole API before it knows what it is asked for.
# Each name: the module that defines it and its name there.
_PUBLIC = {
    "Config": ("deepworks.config", "Config"),
    "load_config": ("deepworks.config", "load_config"),
    "create_model": ("deepworks.models", "create_model"),
    "list_models": ("deepworks.models", "list_models"),
    "Callback": ("deepworks.training", "Callback"),
    "EarlyStopping": ("deepworks.training", "EarlyStopping"),
    "Trainer": ("deepworks.training", "Trainer"),
    "Run": ("deepworks.pipeline", "Run"),
    "cross_validate": ("deepworks.pipeline", "cross_validate"),
    "evaluate": ("deepworks.pipeline", "evaluate"),
    "load_run": ("deepworks.pipeline", "load_run"),
    "lr_find": ("deepworks.pipeline", "lr_find"),
    "predict": ("deepworks.pipeline", "predict"),
    "resume": ("deepworks.front", "resume"),
    "train": ("deepworks.front", "train"),
    "Predictor": ("deepworks.predictor", "Predictor"),
    "generate": ("deepworks.generation", "generate"),
    "diagnose": ("deepworks.analysis", "diagnose"),
    "importance": ("deepworks.analysis", "importance"),
    "projection": ("deepworks.analysis", "projection"),
    "permutation_importance": ("deepworks.evaluation.importance", "permutation_importance"),
    "compare": ("deepworks.reporting.compare", "compare"),
    "report": ("deepworks.reporting", "write_report"),  # deepworks.report is this function, as deepworks.evaluate is
    "export": ("deepworks.exporting", "export"),  # deepworks.export is this function too
}

if TYPE_CHECKING:  # the same names for type checkers and the API reference's static reading
    from deepworks.analysis import diagnose, importance, projection  # noqa: F401
    from deepworks.config import Config, load_config  # noqa: F401
    from deepworks.evaluation.importance import permutation_importance  # noqa: F401
    from deepworks.exporting import export  # noqa: F401
    from deepworks.front import resume, train  # noqa: F401
    from deepworks.generation import generate  # noqa: F401
    from deepworks.models import create_model, list_models  # noqa: F401
    from deepworks.pipeline import Run, cross_validate, evaluate, load_run, lr_find, predict  # noqa: F401
    from deepworks.predictor import Predictor  # noqa: F401
    from deepworks.reporting import write_report as report  # noqa: F401
    from deepworks.reporting.compare import compare  # noqa: F401
    from deepworks.training import Callback, EarlyStopping, Trainer  # noqa: F401


def __getattr__(name: str):
    """A public name, imported on first use; a subpackage by its dotted path (``deepworks.evaluation``)."""
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


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
