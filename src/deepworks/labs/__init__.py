"""Concept labs: one small, real experiment per classic idea of deep learning.

``deepworks lab CONCEPT [--out DIR] [--fast]`` (or :func:`run_lab`) runs the experiment through
the same public functions a user calls (``deepworks.train``, ``inspect``, ``evaluate``,
``importance``, ``export``, ...), prints what it measured in a few plain sentences, and writes
its plots (PNG) and ``lab.json`` (its numbers, sentences and files) to DIR. ``--fast`` shrinks
every experiment (fewer samples and epochs) to a few seconds; the full mode stays under a minute
on a 2-core CPU. ``docs/concepts.md`` explains each idea and names the config keys behind it.

A lab is a function ``run(lab: LabContext) -> None`` registered with :func:`lab`; it lives in
one of the modules imported at the bottom of this file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deepworks.errors import DeepworksError, UnknownNameError
from deepworks.runs import default_output


class MissingPiece(DeepworksError):
    """A lab's optional package is not installed (exit 2, with what to install)."""


@dataclass(frozen=True)
class Lab:
    name: str
    summary: str  # one line for `deepworks lab`
    run: Callable[["LabContext"], None]
    needs: tuple[tuple[str, str], ...] = ()  # (importable module, what to install)


LABS: dict[str, Lab] = {}


def lab(name: str, summary: str, *, needs: Sequence[tuple[str, str]] = ()) -> Callable:
    """Register ``run(lab: LabContext)`` as the lab ``name``. ``needs``: pairs of an optional
    module and the install command that brings it; a missing one stops the lab before it starts."""

    def register(fn: Callable[[LabContext], None]) -> Callable[[LabContext], None]:
        if name in LABS:
            raise ValueError(f"lab {name!r} registered twice")
        LABS[name] = Lab(name, summary, fn, tuple(needs))
        return fn

    return register


@dataclass
class LabContext:
    """What a lab gets: where to write, how big to go, and where to put what it measured."""

    name: str
    out: Path
    fast: bool
    seed: int = 0
    numbers: dict[str, Any] = field(default_factory=dict)
    sentences: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def pick(self, fast: Any, full: Any) -> Any:
        """``fast`` in --fast mode, ``full`` otherwise."""
        return fast if self.fast else full

    def record(self, **numbers: Any) -> None:
        """Keep measured numbers for lab.json (numbers, or lists/dicts of numbers)."""
        for key, value in numbers.items():
            self.numbers[key] = _plain(value)

    def say(self, sentence: str) -> None:
        """Print one plain sentence about what was measured (also kept in lab.json)."""
        self.sentences.append(sentence)
        self.echo(sentence)

    def step(self, text: str) -> None:
        """Progress: what the lab is doing now (printed, not kept)."""
        self.echo(f"  ... {text}")

    @property
    def runs(self) -> Path:
        """Where the lab's training runs go (inside --out)."""
        return self.out / "runs"

    def train(self, config: Mapping[str, Any] | str | Path, run_name: str, **overrides: Any):
        """``deepworks.train`` with the run directory inside --out and no progress bars."""
        import deepworks

        train_over = dict(overrides.pop("train", {}) or {})
        train_over.setdefault("progress", "none")
        run_dir = self.runs / run_name
        if run_dir.is_dir():  # a rerun of the lab into the same --out replaces its own earlier run
            import shutil

            shutil.rmtree(run_dir)
        return deepworks.train(config, run_dir=run_dir, train=train_over, **overrides)

    def figure(self, *args: Any, **kwargs: Any):
        """A new matplotlib figure on the Agg canvas (no display needed): ``fig, ax = lab.figure(1, 2)``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        kwargs.setdefault("constrained_layout", True)
        return plt.subplots(*args, **kwargs)

    def save(self, fig: Any, filename: str) -> Path:
        """Write ``fig`` as DIR/filename (PNG) and close it."""
        import matplotlib.pyplot as plt

        if not filename.endswith(".png"):
            filename += ".png"
        path = self.out / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.figures.append(filename)
        return path


SPLIT_COLOURS = {"train": "tab:gray", "val": "tab:orange", "test": "tab:blue"}


def split_bars(ax: Any, per_split: Mapping[str, Sequence[float]], labels: Mapping[str, str], ylabel: str) -> None:
    """Grouped bars, one group per class and one bar per split (train, val, test)."""
    import numpy as np

    for j, split in enumerate(("train", "val", "test")):
        values = np.asarray(per_split[split], dtype=float)
        ax.bar(np.arange(len(values)) + (j - 1) * 0.27, values, width=0.27, color=SPLIT_COLOURS[split], label=labels[split])
    ax.set_xticks(range(len(per_split["train"])))
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)


def _plain(value: Any) -> Any:
    """Numbers as JSON-ready Python values (tensors and numpy arrays included)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN; run_lab lists it in not_finite


def list_labs() -> list[dict[str, str]]:
    """Every lab: name and one line."""
    return [{"name": x.name, "summary": x.summary} for x in LABS.values()]


def missing_pieces(name: str) -> list[tuple[str, str]]:
    """The lab's optional modules that are not installed, with what to install."""
    return [(module, fix) for module, fix in get_lab(name).needs if importlib.util.find_spec(module) is None]


def get_lab(name: str) -> Lab:
    if name not in LABS:
        raise UnknownNameError("lab", name, LABS, where="deepworks lab")
    return LABS[name]


def lab_dir(name: str, out: str | Path | None = None) -> Path:
    """Where the lab writes: ``out``, or ``runs/labs/<name>`` under the working directory."""
    return Path(out) if out is not None else default_output("labs", name)


def run_lab(
    name: str, out: str | Path | None = None, *, fast: bool = False, seed: int = 0, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the lab ``name``; write its PNGs and lab.json to ``out`` (default ``runs/labs/<name>``) and
    return what lab.json holds."""
    spec = get_lab(name)
    missing = missing_pieces(name)
    if missing:
        fixes = "; ".join(f"{module} ({fix})" for module, fix in missing)
        raise MissingPiece(f"lab {name} needs what is not installed: {fixes}. Install it and run the lab again.")
    path = lab_dir(name, out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeepworksError(f"--out {path}: cannot be the lab's folder ({exc.strerror}). Fix: give a folder "
                             "that is new or already a folder, e.g. --out runs/labs/{name}.".replace("{name}", name)) from None
    ctx = LabContext(name=name, out=path, fast=fast, seed=seed, echo=echo)
    start = time.perf_counter()
    spec.run(ctx)
    seconds = time.perf_counter() - start
    bad = [key for key, value in _numbers(ctx.numbers) if value is None or not math.isfinite(value)]
    if not ctx.figures or not ctx.numbers:
        raise RuntimeError(f"lab {name} wrote no figure or no numbers")  # a bug in the lab, not a user error
    record = {
        "lab": name,
        "summary": spec.summary,
        "fast": fast,
        "seed": seed,
        "seconds": round(seconds, 2),
        "numbers": ctx.numbers,
        "sentences": ctx.sentences,
        "figures": ctx.figures,
        "not_finite": bad,
    }
    (path / "lab.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _numbers(value: Any, key: str = "") -> list[tuple[str, float]]:
    """Every number inside ``value`` with its dotted key; None stands for a non-finite number (strings are skipped)."""
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in _numbers(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _numbers(v, f"{key}[{i}]")]
    if value is None:
        return [(key, None)]  # a non-finite number recorded by the lab (see _plain)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(key, float(value))]
    return []


def _import_labs() -> None:
    """Each module of this package holds one lab (or a few) and registers it on import."""
    import importlib
    import pkgutil

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not module.startswith("_"):
            importlib.import_module(f"{__name__}.{module}")


_import_labs()
