"""Device choice, seeding and determinism: usable from a hand-written loop too."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import sys
import random
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepworks.errors import ConfigError

__all__ = [
    "available_memory",
    "memory_cap",
    "format_bytes",
    "parse_bytes",
    "resolve_device",
    "seed_everything",
    "set_deterministic",
    "epoch_generator",
    "Precision",
    "resolve_precision",
    "cpu_supports_bf16",
    "has_conv",
    "DistContext",
    "distributed_context",
    "DIST_TIMEOUT_ENV",
    "dist_timeout",
    "parse_master_addr",
    "lost_peer",
    "all_reduce_sum",
    "barrier",
    "shutdown_distributed",
    "broadcast_object",
    "broadcast_module",
    "gather_objects",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} asked for, but no CUDA GPU is visible. Use train.device: auto or cpu.")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' asked for, but Apple's MPS backend is not available. Use auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for bitwise-reproducible kernels (warns, rather than fails, where none exists)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    # use_deterministic_algorithms also fills every new uninitialised tensor with NaN (a
    # debugging aid for kernels that read memory they never wrote). Reproducibility does not
    # need it, and on the CPU it costs a memory pass per allocation: ~15% of a small CNN's step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles epoch ``epoch``: a function of (seed, epoch) alone, so a
    resumed run replays exactly the batches an uninterrupted run would have seen."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Does this CPU run bf16 matrix work natively (AVX-512 BF16 or AMX)?

    Without it bf16 is emulated and slower than fp32, so ``auto`` stays in fp32.
    """
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _gains_from_bf16(model: nn.Module) -> bool:
    return any(getattr(m, "bf16_on_cpu", False) for m in model.modules())  # also inside DDP or a wrapper


@dataclass(frozen=True)
class Precision:
    """How a step runs: the autocast dtype (None = fp32), memory format and loss scaling."""

    name: str  # fp32 | bf16 | fp16
    device_type: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_precision(name: str, device: torch.device, model: nn.Module, channels_last: str = "auto") -> Precision:
    """``auto``: bf16 autocast on GPUs, and on CPUs with native bf16 for convolutional models and
    models that say they gain from it (``bf16_on_cpu``: the fine-tuned text transformer); fp32 elsewhere. (On the CPU, small dense models gain no speed from bf16, and a regression
    model's outputs would lose digits to its 8-bit mantissa.)

    channels_last (``auto``) goes with reduced precision on convolutional models, where
    oneDNN and cuDNN have their fastest kernels for it.
    """
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and cpu_supports_bf16() and (has_conv(model) or _gains_from_bf16(model)):
            name = "bf16"
        else:
            name = "fp32"
    if name == "fp16" and device.type == "cpu" and not hasattr(torch.amp, "GradScaler"):
        raise ConfigError("train.precision: fp16 on the CPU needs a newer torch; use bf16 or fp32.")
    if channels_last == "auto":
        use_cl = name != "fp32" and has_conv(model)
    else:
        use_cl = channels_last == "on"
    return Precision(name, device.type, use_cl)


# ------------------------------------------------------------------ distributed (torchrun + DDP)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (gloo on CPUs, NCCL on GPUs).

    Without ``WORLD_SIZE`` > 1 in the environment this is a single process and nothing is set up.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        timeout = dist_timeout()
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    return DistContext(rank, world, local)


DIST_TIMEOUT_ENV = "DEEPWORKS_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT = 300.0  # seconds


def dist_timeout(value: str | float | None = None, key: str = DIST_TIMEOUT_ENV) -> timedelta:
    """How long a process waits for the others at a collective (an all-reduce, a barrier) before
    it fails: ``value`` in seconds, else ``$DEEPWORKS_DIST_TIMEOUT``, else 300 s. A node that
    stops answering (a crashed machine, a cut network) then ends the others with an error
    instead of leaving them blocked; torch's own defaults are 10 to 30 minutes."""
    if value is None:
        value = os.environ.get(DIST_TIMEOUT_ENV) or DEFAULT_DIST_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}: expected a positive number of seconds (e.g. 300), got {value!r}.")
    return timedelta(seconds=seconds)


DEFAULT_MASTER_PORT = 29500


def parse_master_addr(value: str, key: str = "--master-addr") -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address -> (host, port); the port
    defaults to torch's 29500."""
    text = value.strip()
    expected = (f"{key}: expected HOST or HOST:PORT of node 0 (e.g. 10.0.0.1:29500, a port 1-65535), got "
                f"{value!r}.")
    if text.startswith("["):  # [::1]:29500
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(expected)
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address, no port
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ConfigError(expected) from None
        host, port_text = text, None
    else:
        host, sep, port_text = text.partition(":")
        port_text = port_text if sep else None
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ConfigError(expected)
    if port_text is None:
        return host, DEFAULT_MASTER_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(expected)
    return host, int(port_text)


_LOST_PEER_SIGNS = ("connection closed", "connection reset", "timed out", "timeout", "broken pipe", "gloo", "nccl",
                    "socket", "watchdog")


def lost_peer(exc: BaseException) -> str | None:
    """When ``exc`` is a failed collective (a peer process died or stopped answering within
    :func:`dist_timeout`) in a process group: torch's first line of it; else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc).strip()
    if not isinstance(exc, dist.DistError) and not (
        isinstance(exc, RuntimeError) and any(sign in text.lower() for sign in _LOST_PEER_SIGNS)
    ):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = re.sub(r"^\[[^\]]*:\d+\]\s*", "", first)  # [.../gloo/transport/tcp/pair.cc:545]
    first = first.split(". ")[0].rstrip(".")  # its first sentence: what happened, and with whom
    return first if len(first) <= 200 else first[:197] + "..."


def all_reduce_sum(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum of each tensor over all processes (a copy; the inputs are unchanged)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    out = {}
    for key, value in tensors.items():
        t = value.detach().clone()
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        out[key] = t.to(value.device)
    return out


def shutdown_distributed() -> None:
    """Leave the process group (a process that exits without this can abort at shutdown)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (e.g. the run directory rank 0 chose)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: nn.Module, src: int = 0) -> nn.Module:
    """Every parameter and buffer of ``module`` set, in place, to rank ``src``'s values."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return module
    nccl = dist.get_backend() == "nccl"
    with torch.no_grad():
        for t in module.state_dict().values():  # views of the module's own tensors
            box = t.cuda() if nccl and t.device.type == "cpu" else t.contiguous()
            dist.broadcast(box, src=src)
            if box is not t:
                t.copy_(box)
    return module


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


MEMORY_ENV = "DEEPWORKS_MEMORY_AVAILABLE"


def memory_cap() -> int | None:
    """``$DEEPWORKS_MEMORY_AVAILABLE`` (a size such as ``2GB``) in bytes, or None when unset: the
    most memory deepworks counts as available, on any device (tests use it to act out a smaller
    machine; it also keeps a run to its share of a machine others use)."""
    value = os.environ.get(MEMORY_ENV)
    return parse_bytes(value, MEMORY_ENV) if value not in (None, "") else None


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the system's available memory
    (``MemAvailable``), the room left under a cgroup (container) memory limit, the
    address-space limit (``ulimit -v``) minus what is in use, and ``$DEEPWORKS_MEMORY_AVAILABLE``
    (:func:`memory_cap`). Falls back to psutil or 8 GiB where none of these can be read."""
    import resource

    found: list[int] = []
    cap = memory_cap()
    if cap is not None:
        found.append(cap)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < (1 << 60):
                found.append(max(0, int(limit) - int(Path(usage_file).read_text().strip())))
        except (OSError, ValueError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            in_use = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
        except (OSError, ValueError, IndexError):
            in_use = 0
        found.append(max(0, soft - in_use))
    if len(found) == (cap is not None):  # nothing read from the system
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except Exception:
            found.append(8 << 30)
    return min(found)


_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter: allocations from this size are mmap'ed
LARGE_BLOCK = 4 * 2**20


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more with its own mmap, so a
    freed batch's tensors go back to the system at once. By default glibc raises that threshold
    after the first large free and then carves large tensors out of its heap, where the small
    objects made between batches pin them: a process that runs batch after batch (predicting a
    folder) then grows by a few MB per batch, without bound. Fixing the threshold turns that off.
    Returns whether it was set (False off glibc, e.g. macOS or musl). Process-wide and harmless
    to call again; the cost is a page fault per page of each large tensor, a few percent of a
    CNN's forward pass."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # not glibc
        return False


def parse_bytes(value: int | str | None, key: str = "data.memory_budget") -> int | None:
    """``2GB``, ``512 MiB``, ``1e9`` or an int -> bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 2GB or 512MB, got {value!r}.")
    if isinstance(value, (int, float)):
        number, unit = float(value), "b"
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):] or "b"
        try:
            number = float(digits)
        except ValueError:
            number, unit = -1.0, "?"
        if unit not in _UNITS:
            raise ConfigError(f"{key}: expected a size such as 2GB, 512MB or 1GiB, got {value!r}.")
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{key}: expected a positive size such as 2GB or 512MB, got {value!r}.")
    return int(number * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
