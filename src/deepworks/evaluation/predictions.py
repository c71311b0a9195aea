"""The model's outputs on the validation and test splits, kept in the run for the report.

At the end of training ``predictions.safetensors`` holds, per split (``val``, ``test``), the
kept model's raw outputs (``<split>.outputs``: logits (N, K) for classification, standardised
values (N, T) for regression) and the targets (``<split>.targets``), in the split's order.
For image classification it also holds the validation images the model got most confidently
wrong (``val.wrong_index``, ``val.wrong_images`` as uint8 (n, C, H, W) pixels), so the report
can show them without reading the data again. A forecasting run adds, per split, the windows'
first target steps (``<split>.origin``, steps of the series), the actual values and the
baselines' forecasts in the targets' units (``actual``, ``last_value``, ``seasonal_naive``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepworks.errors import CheckpointError
from deepworks.runs import load_tensors, save_tensors

__all__ = ["save_predictions", "load_predictions", "confidently_wrong", "display_pixels", "FORMAT"]

FORMAT = "deepworks-predictions-1"


def confidently_wrong(logits: torch.Tensor, targets: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Indices of the (at most ``k``) misclassified samples with the highest top-class
    probability, most confident first."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != targets.long()).flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order[:k]]


def display_pixels(inputs: torch.Tensor, mean: list[float] | None, std: list[float] | None) -> torch.Tensor:
    """Normalised model inputs (n, C, H, W) back to uint8 pixels for display."""
    x = inputs.detach().to("cpu", torch.float32)
    if mean is not None and std is not None:
        c = x.shape[1]
        x = x * torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) + torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    else:  # unknown scaling: stretch each image to [0, 1]
        flat = x.flatten(1)
        low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
        x = (x - low) / (high - low).clamp(min=1e-12)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def save_predictions(
    path: Path,
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    task: str,
    wrong: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``outputs`` (split -> (outputs, targets)) and, for images, ``wrong`` = (indices into
    the validation split, their uint8 pixels); ``extra`` adds named tensors ``<split>.<name>``
    (a forecast's window origins and the baselines' forecasts)."""
    tensors: dict[str, torch.Tensor] = {}
    for split, (out, target) in outputs.items():
        tensors[f"{split}.outputs"] = out.float()
        tensors[f"{split}.targets"] = target
    if wrong is not None:
        tensors["val.wrong_index"] = wrong[0].long()
        tensors["val.wrong_images"] = wrong[1].to(torch.uint8)
    for key, value in (extra or {}).items():
        tensors[key] = value.contiguous()
    save_tensors(path, tensors, metadata={"format": FORMAT, "task": task})


def load_predictions(path: Path) -> dict[str, Any]:
    """``{"task": name, "<split>": {"outputs", "targets", ["wrong_index", "wrong_images"]}}``."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: missing; the run has not finished, or it predates this file.")
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a deepworks predictions file (format {meta.get('format')!r}, expected {FORMAT!r}).")
    result: dict[str, Any] = {"task": meta.get("task")}
    for key, value in tensors.items():
        split, _, name = key.partition(".")
        result.setdefault(split, {})[name] = value
    return result
