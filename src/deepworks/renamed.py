"""The old names of four subpackages, kept working with a DeprecationWarning.

``deepworks.evaluate``, ``deepworks.report``, ``deepworks.export`` and ``deepworks.train`` were both
public functions and subpackages: after ``import deepworks`` the name is the function, so a dotted path
such as ``deepworks.evaluate.diagnosis.diagnose`` failed. The subpackages are ``deepworks.evaluation``,
``deepworks.reporting``, ``deepworks.exporting`` and ``deepworks.training`` now; the four names are the
functions only.

Code written for the old paths still imports (``from deepworks.evaluate.metrics import
classification_report``, ``import deepworks.train.trainer``): a finder at the front of
``sys.meta_path`` answers each old module name with the new module itself (one module object, so its
state is shared) and warns. Python binds a freshly imported submodule onto its parent package; the
package's class (:class:`Package`) refuses to let a module replace one of the four functions there.
(``import deepworks.evaluate.diagnosis as dg`` never worked, ``deepworks.evaluate`` being the function
when Python looks the chain up; ``from deepworks.evaluate import diagnosis as dg`` works and warns.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

RENAMED = {
    "deepworks.evaluate": "deepworks.evaluation",
    "deepworks.report": "deepworks.reporting",
    "deepworks.export": "deepworks.exporting",
    "deepworks.train": "deepworks.training",
}


def new_name(name: str) -> str | None:
    """The module's name now, for a name under one of the old subpackages; None for any other."""
    for old, new in RENAMED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``deepworks.evaluate...`` and loads it as the module ``deepworks.evaluation...``."""

    def find_spec(self, name, path=None, target=None):
        if new_name(name) is None:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        return None  # a placeholder: exec_module puts the real module in its place in sys.modules

    def exec_module(self, module) -> None:
        old = module.__spec__.name
        new = new_name(old)
        # stacklevel 2: the import statement (warnings skips the import machinery's own frames)
        warnings.warn(f"{old} is renamed {new}: import {new} instead (the old name will go)",
                      DeprecationWarning, stacklevel=2)
        sys.modules[old] = importlib.import_module(new)  # the import statement returns what is here


class Package(types.ModuleType):
    """``deepworks`` itself: a module bound to one of the old names (by the import system, after an
    import of an old path) is ignored, so ``deepworks.evaluate`` stays the function."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and f"{self.__name__}.{name}" in RENAMED:
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    """Called once by ``deepworks/__init__.py`` with the package."""
    package.__class__ = Package
    if not any(isinstance(finder, OldNames) for finder in sys.meta_path):
        sys.meta_path.insert(0, OldNames())
