"""What every kind of data shares: the prepared splits, the steps of preparing them that do not
depend on the kind (seed, folds, subset record, class counts, fingerprint), and the interface of
a trained run's inputs (:class:`RunInputs`) that predict, serve and export use."""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.config import Config
from deepworks.data.loaders import TensorData, balanced_weights
from deepworks.data.splits import kfold_indices
from deepworks.errors import ConfigError, DataError
from deepworks.training.tasks import Classification, Task

SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """The three splits, normalised with training statistics, and what predict needs later."""

    train: Any  # TensorData, or StreamedImages for a folder read from disk
    val: Any
    test: Any
    classes: list[str]  # class names; empty for regression
    input_shape: tuple[int, ...]  # (C, H, W) images, (F,) features or sentence embeddings, or (L,) token ids
    info: dict[str, Any]  # data.json: "kind" says which module of deepworks.kinds reads the run's inputs
    task: Task = field(default_factory=Classification)
    # a series: per split, the window origins ("origin", steps of the series), and the baselines'
    # forecasts and the actual values in the targets' units ("last_value", "seasonal_naive", "actual")
    forecasts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    raw: dict[str, list[str]] | None = None  # text: each split's raw strings (for the TF-IDF baseline)
    # what the run's inputs need beside data.json, written into a new run directory (a pretrained tokenizer's files)
    save: Callable[[Path], None] | None = None


def data_seed(config: Config) -> int:
    """The seed of the splits and folds: data.subset.seed with a subset (its samples then do not
    depend on the run's seed), else the run's seed."""
    return config.data.subset.seed if config.data.subset is not None else config.seed


def subset_record(config: Config, classes: list[str]) -> dict[str, Any]:
    """data.json's ``subset``: what data.subset kept (nothing without one)."""
    sub = config.data.subset
    if sub is None:
        return {}
    return {"subset": {"classes": classes if sub.classes is not None else None,
                       "train_per_class": sub.train_per_class, "val_per_class": sub.val_per_class, "seed": sub.seed}}


def class_counts(ys: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """Samples per class in each split (for the report's data section)."""
    return {name: torch.bincount(y.long().cpu().flatten(), minlength=k).tolist() for name, y in ys.items()}


def apply_fold(
    idx: dict[str, np.ndarray], y: np.ndarray, fold: tuple[int, int | None], stratify: bool,
    groups: np.ndarray | None, seed: int, what: str,
) -> dict[str, np.ndarray]:
    """Train/val indices of fold ``i`` of ``k`` over the non-test rows (train + val)."""
    k, i = fold
    rest = np.sort(np.concatenate([idx["train"], idx["val"]]))
    if i is None:  # the final model of a cross-validation: all non-test data, no validation
        return {"train": rest, "val": rest[:0]}
    folds = kfold_indices(y[rest], k, stratify=stratify, groups=groups[rest] if groups is not None else None,
                          seed=seed, what=what)
    tr, va = folds[i]
    return {"train": rest[tr], "val": rest[va]}


def fingerprint(idx: dict[str, np.ndarray], *per_split: Any) -> str:
    """SHA-256 of the split positions and, per split, each of ``per_split``'s arrays (a callable
    of the split's name): what ``resume`` and ``evaluate`` compare to see the data is the same."""
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(np.ascontiguousarray(idx[name], dtype=np.int64).tobytes())
        for part in per_split:
            digest.update(part(name))
    return digest.hexdigest()


def tensor_splits(xs: dict[str, torch.Tensor], ys: dict[str, torch.Tensor]) -> list[TensorData]:
    return [TensorData(xs[name], ys[name]) for name in SPLITS]


def balance_classes(config: Config, data: PreparedData) -> None:
    """Warn about strong class imbalance; draw class-balanced batches with data.sampler: balanced."""
    if data.task.name != "classification":
        if config.data.sampler == "balanced":
            raise ConfigError("data.sampler: balanced is for classification; this is a regression run. Fix: remove it.")
        return
    counts = torch.bincount(data.train.y.long().cpu(), minlength=len(data.classes))
    largest, smallest = int(counts.max()), int(counts.min())
    if smallest == 0 or largest > 10 * smallest:
        rare = data.classes[int(counts.argmin())]
        warnings.warn(
            f"the training split is imbalanced: the largest class has {largest} samples, {rare!r} only {smallest}. "
            "Per-class metrics are in test_report.json; consider train.class_weights: balanced or "
            "data.sampler: balanced.",
            stacklevel=3,
        )
    if config.data.sampler == "balanced":
        data.train.weights = balanced_weights(data.train.y)


# ----------------------------------------------------------------------------- a trained run's inputs


@dataclass
class Batch:
    """Model inputs for some of a call's inputs: ``x`` (the kind's raw form: uint8 pixels, token
    ids, features; :meth:`RunInputs.to_model` finishes them on the device), where each row came
    from (``names``), and the inputs refused on the way (``errors``: name -> reason)."""

    x: torch.Tensor | None
    names: list[dict[str, Any]]
    errors: list[tuple[dict[str, Any], str]] = field(default_factory=list)


class RunInputs:
    """A trained run's fitted input path: the only code that turns raw inputs (files, in-memory
    values, an HTTP request's body) into the model's input, for predict, serve and export alike.
    One subclass per kind of data; :func:`deepworks.kinds.inputs_for_run` picks it from data.json."""

    kind = ""
    reads = ""  # what a user gives it, for messages: "images", "table rows", "texts", "histories"
    #: the keys that say where a row came from (a prediction file's first columns)
    source_keys: tuple[str, ...] = ("file", "index")
    #: the JSON body key the server reads (None: the server takes an upload, or does not serve the kind)
    json_key: str | None = None
    #: the model input's dtype, and the raw batches' when they are stored smaller (uint8 pixels)
    input_dtype = torch.float32
    stored_dtype: torch.dtype | None = None
    #: inputs (N, C, H, W) that a convolutional model reads fastest as channels_last
    channels_last = False
    #: the exported graph's input axes that vary between calls (the batch; a text's length when batches are
    #: padded to their longest text)
    dynamic_axes: dict[int, str] = {0: "batch"}

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        self.run_dir, self.info = Path(run_dir), info
        self.shape = tuple(int(v) for v in info["input_shape"])

    def load(self) -> None:
        """Load what is slow to load (a sentence encoder), once; the rest is read in ``__init__``."""

    # -- raw inputs -> batches --
    def batches(self, inputs: Any, batch_size: int, on_error: str = "raise", workers: int = 0) -> Iterator[Batch]:
        """``inputs`` (whatever the kind takes) as batches of at most ``batch_size`` rows."""
        raise NotImplementedError

    def count(self, inputs: Any) -> int | None:
        """How many rows ``inputs`` will give, when known without reading them (for progress)."""
        return None

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A batch's raw form -> the model's input (on x's device)."""
        return x

    # -- the server --
    def from_upload(self, data: bytes, max_pixels: int | None) -> torch.Tensor:
        raise DataError(f"this run ({self.run_dir.name}) reads {self.reads}, not uploaded files.")

    def from_json(self, items: list[Any]) -> torch.Tensor:
        raise DataError(f"this run ({self.run_dir.name}) reads {self.reads}, not JSON.")

    def json_example(self) -> str:
        return '{"rows": [...]}'

    def warmup(self) -> torch.Tensor:
        """One input row of the right shape and dtype (the server's warm-up batch)."""
        return torch.zeros((1, *self.shape), dtype=torch.float32)

    # -- ONNX --
    def onnx_feed(self, x: torch.Tensor) -> np.ndarray:
        """A batch's raw form -> what the exported graph takes (see :meth:`export_graph`)."""
        return x.cpu().numpy()

    def export_graph(self, model: torch.nn.Module, cfg: Config) -> tuple[str, torch.nn.Module, str, dict[str, Any]]:
        """(input kind, the module to export, its input's name, the sidecar's ``meaning`` and
        ``preprocessing``)."""
        raise NotImplementedError

    def parity_inputs(self, split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the graph's input, the PyTorch model's input) for samples ``idx`` of a prepared split,
        which the export's parity check compares."""
        x = split.inputs(idx).cpu()
        return x, x

    def parity_extra(self, split: Any) -> list[tuple[str, torch.Tensor]]:
        """More (label, input) cases for the parity check, beyond batches of real samples."""
        return []


ON_ERROR = ("raise", "skip")


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DataError(f"predict: on_error expected 'raise' or 'skip', got {on_error!r}.")


def refuse_or_keep(batch: Batch, name: dict[str, Any], reason: str, on_error: str) -> None:
    """A bad input: raise (``on_error="raise"``) naming it, or note it in the batch."""
    if on_error == "raise":
        raise DataError(reason)
    batch.errors.append((name, reason))


def expand_paths(inputs: Iterable[Any], suffixes: Sequence[str] | None, what: str) -> list[str]:
    """File paths, folders (searched recursively, hidden entries skipped) and glob patterns ->
    the files' paths as strings, in order (a folder's sorted); ``suffixes`` keeps a folder's files
    with those suffixes (lower case). A folder or pattern that gives no file is an error naming it.
    Strings, not Path objects: a list of many thousand files stays small, and decoding workers
    that read it copy no pages."""
    files: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _walk(str(path), suffixes)
            if not found:
                raise DataError(f"{path}: the folder holds no {what} (looked for {', '.join(suffixes or ['any file'])}, "
                                "in subfolders too). Fix: give the folder that holds them, or the files themselves.")
            files += found
        elif not path.exists() and any(ch in text for ch in "*?["):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"{text}: the pattern matches no file. Fix: check the pattern (relative paths start at "
                                f"{Path.cwd()}).")
            files += found
        else:
            files.append(str(path))
    return files


def _walk(root: str, suffixes: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(folder, n) for n in sorted(names)
                if not n.startswith(".") and (suffixes is None or os.path.splitext(n)[1].lower() in suffixes)]
    return sorted(out)
