"""The search space of a study: the config's ``tune.space``, checked against the config schema.

Each entry maps a config key path to the values it may take::

    tune:
      space:
        train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
        model.dropout: {uniform: [0, 0.5]}
        model.activation: {choice: [relu, silu, elu]}
        model.filters: {choice: [[16, 32], [32, 64]]}
        train.epochs: {int: [5, 20], step: 5}

:func:`parse_space` refuses an unknown key, an empty choice, a range with low > high, and any
choice or range end that the key's own schema refuses, each as one line naming
``tune.space.<key>``, before the first trial. A trial's values become ``--set``-style
overrides of the config (:meth:`SearchSpace.suggest`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepworks.config import load_config
from deepworks.errors import ConfigError

__all__ = ["Dimension", "SearchSpace", "parse_space", "KINDS"]

# how a dimension is written in YAML; the value is the list [low, high] or the choices
KINDS = ("choice", "uniform", "log_uniform", "int")
_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Dimension:
    """One tuned key: ``kind`` is choice, uniform, log_uniform or int."""

    key: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None

    @property
    def log(self) -> bool:
        return self.kind == "log_uniform"

    def ends(self) -> list[Any]:
        """The values checked against the schema: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self) -> list[Any] | None:
        """Every value of a discrete dimension (a choice, an int range, a range with a step); None otherwise."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return [round(self.low + i * self.step, 12) for i in range(count)]
        return None

    # choices that Optuna cannot store (lists, mappings) are kept as their one-line YAML
    def encoded(self) -> list[Any]:
        return [_encode(c) for c in self.choices]

    def decode(self, value: Any) -> Any:
        if self.kind != "choice":
            return value
        for choice in self.choices:
            if _encode(choice) == value:
                return choice
        return value

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.key, self.encoded()))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,
                                   step=float(self.step) if self.step is not None else None)


def _encode(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def __getitem__(self, key: str) -> Dimension:
        return next(d for d in self.dimensions if d.key == key)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """A trial's values as key path -> value (the config's own types: lists stay lists)."""
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna's stored params back to config values."""
        return {k: (self[k].decode(v) if k in self.keys else v) for k, v in params.items()}

    def grid(self, where: str = "--sampler grid") -> dict[str, list[Any]]:
        """The grid for Optuna's GridSampler (choices encoded as stored); refuses a continuous range."""
        out = {}
        for d in self.dimensions:
            values = d.grid()
            if values is None:
                raise ConfigError(
                    f"tune.space.{d.key}: {where} needs a finite set of values, but {d.kind}: [{d.low}, {d.high}] "
                    f"is continuous. Fix: add a step (e.g. {{{d.kind}: [{d.low}, {d.high}], step: ...}}) or use choice."
                )
            out[d.key] = [_encode(v) for v in values]
        return out

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid, decoded (for tests and the study's summary)."""
        grid = {d.key: d.grid() or [] for d in self.dimensions}
        return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def parse_space(config: str | Any, overrides: Sequence[str] | Mapping[str, Any] = (), origin: str | None = None) -> SearchSpace:
    """Read and check ``tune.space`` of ``config`` (a YAML path or mapping, with ``--set`` overrides).

    Every key must be a config key path; every choice and both ends of every range are applied
    one at a time through :func:`~deepworks.config.load_config`, so a value the key's schema
    refuses is an error here, before any trial. Raises :class:`ConfigError`, one line per problem.
    """
    base = load_config(config, overrides)
    origin = origin or (str(config) if isinstance(config, (str, Path)) else "config")
    raw = base.tune.space if base.tune is not None else {}
    if not raw:
        raise ConfigError(
            f"{origin}: tune.space is empty: nothing to tune. Fix: add the keys to search, e.g. "
            "tune: {metric: val_accuracy, space: {train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}}}"
        )
    problems: list[str] = []
    dims: list[Dimension] = []
    for key, spec in raw.items():
        try:
            dim = _dimension(str(key), spec)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        problem = _check_values(config, overrides, dim)
        if problem:
            problems.append(problem)
            continue
        dims.append(dim)
    if problems:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in problems))
    return SearchSpace(tuple(dims))


def _dimension(key: str, spec: Any) -> Dimension:
    at = f"tune.space.{key}"
    example = "{choice: [a, b]}, {uniform: [low, high]}, {log_uniform: [low, high]} or {int: [low, high]}"
    if key == "tune" or key.startswith("tune."):
        raise ConfigError(f"{at}: the tune section cannot tune itself. Fix: name a key below data, model or train.")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{at}: expected one of {example} (given: {spec!r}).")
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "step"]
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{at}: expected exactly one of {', '.join(KINDS)} (and an optional step), "
                          f"e.g. {example} (given: {_flow(spec)}).")
    kind = kinds[0]
    value, step = spec[kind], spec.get("step")
    if kind == "choice":
        if step is not None:
            raise ConfigError(f"{at}: step is for ranges, not choice. Fix: remove step.")
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{at}: choice needs a non-empty list of values, e.g. {{choice: [relu, silu]}} "
                              f"(given: {_flow(value)}).")
        encoded = [_encode(v) for v in value]
        if len(set(map(repr, encoded))) != len(encoded):
            raise ConfigError(f"{at}: choice lists a value twice (given: {_flow(value)}). Fix: list each value once.")
        return Dimension(key, kind, choices=tuple(value))
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"{at}: {kind} needs [low, high], two numbers (given: {_flow(value)}).")
    low, high = value
    if low > high:
        raise ConfigError(f"{at}: {kind} range has low > high ({low} > {high}). Fix: write [{high}, {low}].")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{at}: int needs whole numbers (given: {_flow(value)}). Fix: use uniform for fractions.")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{at}: log_uniform needs low > 0 (given: {low}). Fix: e.g. [1.0e-4, {high}], or use uniform.")
    if step is not None:
        if kind == "log_uniform":
            raise ConfigError(f"{at}: log_uniform takes no step. Fix: remove step, or use uniform with a step.")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
            raise ConfigError(f"{at}: step must be a positive number (given: {step!r}).")
        if kind == "int" and not float(step).is_integer():
            raise ConfigError(f"{at}: an int range needs a whole step (given: {step!r}).")
    if kind == "int":
        return Dimension(key, kind, low=int(low), high=int(high), step=int(step) if step is not None else None)
    return Dimension(key, kind, low=float(low), high=float(high), step=float(step) if step is not None else None)


def _check_values(config: Any, overrides: Any, dim: Dimension) -> str | None:
    """Apply each choice or range end to the config; the first refusal as one line, else None."""
    base = dict(_pairs(overrides))
    for value in dim.ends():
        try:
            load_config(config, {**base, dim.key: value, "tune": None})
        except ConfigError as exc:
            return f"tune.space.{dim.key}: {_reason(exc, dim.key, value)}"
    return None


def _pairs(overrides: Any) -> list[tuple[str, Any]]:
    from deepworks.config import parse_overrides

    if isinstance(overrides, Mapping):
        return list(overrides.items())
    return parse_overrides(list(overrides or []))


def _reason(exc: ConfigError, key: str, value: Any) -> str:
    """The schema's complaint about ``key: value``, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    found = [ln for ln in lines if ln.startswith(f"{key}:") or ln.startswith(f"{key}.")]
    if found and found[0].startswith(f"{key}:") and "unknown key" in found[0]:
        return found[0][len(key) + 1:].strip().replace(" (given: None)", "")
    detail = (found or [ln for ln in lines[1:] if ln and not ln.startswith("Fix these keys")] or lines)[0]
    if detail.startswith(f"{key}:"):
        detail = detail[len(key) + 1:].strip()
    return f"the value {_flow(value)} is refused: {detail}"


def _flow(value: Any) -> str:
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
    except yaml.YAMLError:
        return repr(value)
