"""The run directory: everything a run needs or produces, written atomically, read without pickle.

Layout::

    runs/<name>-<time>/
      config.yaml          resolved config (every default filled in)
      data.json            classes, input shape, normalisation statistics, split sizes
      metrics.jsonl        one JSON object per epoch
      checkpoints/last.safetensors   weights + optimizer + RNG + loop state (one atomic file)
      model.safetensors    the best model by the validation metric
      summary.json         final train/val/test metrics, epochs, wall time, versions
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepworks.errors import CheckpointError

__all__ = [
    "RunDir",
    "new_run_dir",
    "atomic_write",
    "file_sha256",
    "save_tensors",
    "load_tensors",
    "pack_state",
    "unpack_state",
    "rng_state",
    "restore_rng_state",
    "write_checkpoint",
    "read_checkpoint",
    "versions",
    "existing_run",
    "OUTPUTS",
    "default_output",
]

CHECKPOINT_FORMAT = "deepworks-checkpoint-1"

# The one folder, under the working folder, that deepworks writes into unless told otherwise (and the
# one .gitignore names): the runs, and by kind beside them studies/, labs/, compare/, generated/,
# lr-find/ and forecasts/ (see default_output)
OUTPUTS = Path("runs")


def default_output(kind: str, name: str) -> Path:
    """Where a command writes ``name`` of ``kind`` when no ``out`` is given: ``runs/<kind>/<name>``."""
    return OUTPUTS / kind / name


def new_run_dir(name: str, base: str | Path = "runs") -> Path:
    """``base/<name>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    path = base / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{name}-{stamp}-{n}"
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time (what runs record of weights and model files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (tensors are copied to contiguous CPU memory)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; anything else (a pickle, a truncated or edited file) is refused.

    safetensors parses a JSON header and raw tensor bytes only, so no code in the file can run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Is this a deepworks run directory?")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({str(exc).splitlines()[0][:120]}). It may be a "
            "pickle, truncated or edited; it was refused without running anything in it. Restore "
            "the file from a copy, or start the run again."
        ) from None
    return tensors, metadata


def rng_state() -> dict[str, Any]:
    """This process's global random generators (torch CPU, and CUDA where present), for a checkpoint."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved, so a resumed run draws the same numbers."""
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """One safetensors file: the tensors, and the loop's JSON ``state`` in its metadata (atomic)."""
    save_tensors(path, tensors, metadata={"format": CHECKPOINT_FORMAT, "state": json.dumps(state)})


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON state :func:`write_checkpoint` wrote; a missing file, another format or
    damaged state is a :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(
            f"{path}: no checkpoint to resume from (the run stopped before its first checkpoint). "
            "Start the run again."
        )
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a deepworks checkpoint (format {meta.get('format')!r}); refused.")
    try:
        return tensors, json.loads(meta["state"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's state is damaged ({exc}); refused. Start the run again.") from None


# --------------------------------------------------------------- nested state <-> tensors + JSON


def pack_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested dict/list with a reference; collect tensors by key.

    Used for optimizer and loop state so that a checkpoint is one safetensors file whose
    JSON metadata holds the non-tensor parts.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, pack_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [pack_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint at {prefix}")


def unpack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        if set(obj) == {"__items__"}:
            return {k: unpack_state(v, tensors) for k, v in obj["__items__"]}
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


class RunDir:
    """Paths and atomic I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    data = property(lambda self: self.path / "data.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoints" / "last.safetensors")
    best = property(lambda self: self.path / "model.safetensors")
    summary = property(lambda self: self.path / "summary.json")
    gradients = property(lambda self: self.path / "gradients.jsonl")
    predictions = property(lambda self: self.path / "predictions.safetensors")

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing. Is {self.path} a deepworks run directory?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc}); the file was edited or truncated.") from None

    def append_jsonl(self, path: Path, record: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        """The records before the first line cut short (by a kill: everything after it is lost work)."""
        return self.read_jsonl_prefix(path)[0]

    def read_jsonl_prefix(self, path: Path) -> tuple[list[dict[str, Any]], int]:
        """The records (JSON objects) before the first line that is cut short or not an object,
        and the number of non-blank lines in the file: fewer records than lines means the file
        is damaged from line ``len(records) + 1`` on. A missing file gives ``([], 0)``."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], 0
        lines = [line for line in text.splitlines() if line.strip()]
        records: list[dict[str, Any]] = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict):
                break
            records.append(record)
        return records, len(lines)

    def truncate_jsonl(self, path: Path, key: str, last: int) -> list[dict[str, Any]]:
        """Keep the records whose ``key`` is at most ``last`` (what the checkpoint covers)."""
        kept = [r for r in self.read_jsonl(path) if r.get(key, 0) <= last]
        if path.exists():
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.append_jsonl(self.metrics, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.read_jsonl(self.metrics)

    def truncate_metrics(self, epochs: int) -> list[dict[str, Any]]:
        """Keep the records of the first ``epochs`` epochs (those the checkpoint covers)."""
        return self.truncate_jsonl(self.metrics, "epoch", epochs)

    def iter_files(self) -> Iterator[Path]:
        return (p for p in self.path.rglob("*") if p.is_file())


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("deepworks", "torch", "torchvision", "numpy", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def existing_run(run_dir: str | Path) -> RunDir:
    """The run directory ``run_dir``, refused with a CheckpointError when it is missing or is not
    a deepworks run (no config.yaml)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    if not run.config.exists():
        raise CheckpointError(f"{run.path}: not a deepworks run directory (no config.yaml).")
    return run
