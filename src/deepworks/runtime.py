"""Device choice, seeding and determinism: usable from a hand-written loop too."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from deepworks.errors import ConfigError

__all__ = ["resolve_device", "seed_everything", "set_deterministic", "epoch_generator"]


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
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles epoch ``epoch``: a function of (seed, epoch) alone, so a
    resumed run replays exactly the batches an uninterrupted run would have seen."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
