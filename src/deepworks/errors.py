"""User-facing errors.

Every error a user can cause derives from :class:`DeepworksError`. Its message is one
paragraph that names the file, key or column, says what was expected and what was given,
and how to fix it. The command line prints the message (no traceback) and exits with
``exit_code`` (2 for user errors). Anything else is an internal error and exits 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DeepworksError",
    "ConfigError",
    "DataError",
    "UnknownNameError",
    "CheckpointError",
    "ShapeError",
    "ModelImportError",
    "TrainingError",
    "DistributedError",
    "close_matches",
]


class DeepworksError(Exception):
    """Base class of errors caused by user input; the CLI exits with ``exit_code``."""

    exit_code = 2


class ConfigError(DeepworksError):
    """A configuration key is missing, unknown or has a value of the wrong kind."""


class DataError(DeepworksError):
    """A data file, folder, column or label is missing, unreadable or inconsistent."""


class ShapeError(ConfigError):
    """A model cannot be built or run for the shapes of the data it was given."""


class ModelImportError(ConfigError):
    """A model named by import path (``package.module:factory``) or by an installed package's entry
    point cannot be imported, or what it names is not a model factory.

    ``name`` is the model's name, ``problem`` says what went wrong and ``fix`` what to do; the message
    is ``"{where}: {problem}. Fix: {fix}"``, so a caller that knows more (the run being loaded) can say
    it again with its own ``where``.
    """

    def __init__(self, name: str, problem: str, fix: str, where: str = "model.name"):
        self.name, self.problem, self.fix, self.where = name, problem, fix, where
        super().__init__(f"{where}: {problem}. Fix: {fix}")

    def at(self, where: str) -> ModelImportError:
        """The same error, said of ``where``."""
        return ModelImportError(self.name, self.problem, self.fix, where)


class CheckpointError(DeepworksError):
    """A run directory or checkpoint is missing, incomplete, tampered with or not ours."""


class TrainingError(DeepworksError):
    """Training cannot go on (e.g. the loss became NaN); the message says where and what to change."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Names in ``choices`` that look like ``name`` (best first)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


class UnknownNameError(ConfigError):
    """A name looked up in a registry (model, dataset, optimizer, ...) does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], where: str | None = None):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        hint = close_matches(name, self.choices)
        place = f"{where}: " if where else ""
        msg = f"{place}unknown {kind} {name!r}."
        if hint:
            msg += f" Did you mean {' or '.join(repr(h) for h in hint)}?"
        msg += f" Known {kind}s: {', '.join(self.choices)}."
        super().__init__(msg)


class DistributedError(DeepworksError):
    """A training process lost contact with the others (a peer process or node ended, or did not
    answer within the collective timeout). Not the user's input: exit status 1."""

    exit_code = 1
