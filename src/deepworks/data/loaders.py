"""Batches for the training loop.

Tensors that fit in memory stay on the device and are batched by index: one ``randperm``
per epoch and a gather per batch, no per-sample Python. Images are kept as uint8 and
converted and normalised a whole batch at a time on the device (:class:`ToInput`). Image
folders too large for memory stream from disk (:mod:`deepworks.data.folders`); any other
``Dataset`` goes through a ``DataLoader``; both with the same order. The order of an epoch is a function of (seed, epoch)
only, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deepworks.errors import DataError
from deepworks.runtime import epoch_generator

__all__ = ["as_data", "iterate_batches", "num_samples", "TensorData", "ToInput", "balanced_weights"]


class ToInput:
    """uint8 pixels -> normalised float32 model input, one whole batch at a time on its device:
    ``(x * scale - mean) / std`` per channel, computed as one multiply-add.

    ``scale`` maps the stored integers to [0, 1] (1/255 for 8-bit images); ``mean`` and
    ``std`` are per channel in those [0, 1] units (training-split statistics). Picklable, so
    DataLoader workers and run records can carry it.
    """

    def __init__(self, scale: float, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise DataError(f"ToInput: one positive std per mean is needed, got mean {list(mean)} and std {list(std)}.")
        self.scale, self.mean, self.std = float(scale), [float(m) for m in mean], [float(s) for s in std]
        c = len(self.mean)
        self._mul = torch.tensor([self.scale / s for s in self.std], dtype=torch.float32).view(1, c, 1, 1)
        self._add = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32).view(1, c, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype.is_floating_point:  # already model input
            return x
        single = x.ndim == 3  # one image (C, H, W)
        xb = x.unsqueeze(0) if single else x
        if self._mul.device != xb.device:
            self._mul, self._add = self._mul.to(xb.device), self._add.to(xb.device)
        out = torch.addcmul(self._add, xb.to(torch.float32), self._mul)  # add + x * mul, one pass
        return out[0] if single else out

    def __getstate__(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": self.mean, "std": self.std}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["scale"], state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"ToInput(scale={self.scale:.6g}, mean={self.mean}, std={self.std})"


class TensorData:
    """An in-memory (x, y) pair; the fast path.

    ``weights`` (one per sample, optional) makes shuffled epochs draw samples with those
    relative probabilities, with replacement (``data.sampler: balanced``), instead of a
    permutation. ``transform`` (e.g. :class:`ToInput`) turns a gathered batch of stored
    samples (uint8 images) into model input on the device. ``lengths`` (one per sample, optional:
    a sequence's tokens) makes shuffled epochs draw batches of similar length
    (:func:`bucketed`).
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None, lengths: torch.Tensor | None = None,
    ):
        self.x, self.y, self.weights, self.transform, self.lengths = x, y, weights, transform, lengths

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device), self.weights, self.transform, self.lengths)

    def inputs(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Model input for the samples at ``idx`` (all when None), on the data's device."""
        x = self.x if idx is None else self.x[idx.to(self.x.device)]
        return self.transform(x) if self.transform is not None else x


# bucketed epochs sort the lengths within spans of this many batches: wide enough that a batch's
# sequences are alike, narrow enough that which samples meet in a batch still changes every epoch
BUCKET_SPAN = 50


def bucketed(order: torch.Tensor, lengths: torch.Tensor, unit: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffled epoch ``order`` regrouped into batches of similar length: spans of
    :data:`BUCKET_SPAN` x ``unit`` samples of the order, each sorted by ``lengths`` (stably), cut
    into batches of ``unit`` samples, and the full batches put in a random order (``generator``);
    a last, short batch stays last. Every sample of ``order`` once, and a function of the order
    and the generator's state only, so an epoch is the same whenever it is drawn (resume)."""
    lengths = torch.as_tensor(lengths).cpu()
    order = order.cpu()
    span = unit * BUCKET_SPAN
    parts = []
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        parts.append(chunk[torch.sort(lengths[chunk], stable=True).indices])
    flat = torch.cat(parts) if parts else order
    full = len(flat) // unit
    batches = flat[: full * unit].view(full, unit)[torch.randperm(full, generator=generator)]
    return torch.cat([batches.reshape(-1), flat[full * unit :]])


def evaluation_order(data: Any) -> torch.Tensor | None:
    """The order in which unshuffled (evaluation) batches visit ``data``: for sequences
    (``lengths``) sorted by length (stably), so a batch holds texts of similar length and a model
    that cuts a batch to its longest text runs fewer steps; None (the stored order) otherwise.
    Outputs collected in this order go back to the stored order with ``outputs[order.argsort()]``."""
    lengths = getattr(data, "lengths", None)
    if lengths is None or not isinstance(data, TensorData):
        return None
    return torch.sort(torch.as_tensor(lengths).cpu(), stable=True).indices


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1 / count(class), so every class is drawn equally often."""
    counts = torch.bincount(y.long().cpu())
    return (1.0 / counts.double())[y.long().cpu()]


def as_data(
    data: Any,
    where: str = "data",
    targets: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    *,
    token_ids: bool = False,
) -> TensorData | Dataset:
    """Accept ``(x, y)`` tensors or arrays, a ``TensorDataset`` of two tensors, or a ``Dataset``.

    ``targets`` checks and converts ``y`` for the task (a task's ``targets`` method); by
    default ``y`` must be 1-D integer class indices. Integer ``x`` becomes float32 model input,
    unless ``token_ids`` (a model that reads token ids, e.g. an ``lstm`` built with a
    ``vocab_size``): then ``x`` must be integers and becomes int64.
    """
    if isinstance(data, TensorData) or hasattr(data, "stream"):  # in memory, or streamed from disk
        return data
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        data = tuple(data.tensors)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in data)
        if len(x) != len(y):
            raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}; they must match.")
        if len(x) == 0:
            raise DataError(f"{where}: no samples.")
        if targets is not None:
            y = targets(y, where)
        elif y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
            raise DataError(
                f"{where}: labels must be a 1-D integer tensor of class indices, got dtype "
                f"{y.dtype} and shape {tuple(y.shape)}. Convert with y.long()."
            )
        else:
            y = y.long()
        if token_ids:
            if x.dtype.is_floating_point or x.dtype == torch.bool:
                raise DataError(
                    f"{where}: the model reads token ids, but x has dtype {x.dtype}. "
                    "Fix: pass integer ids (batch, length) padded with 0, e.g. x.long()."
                )
            x = x.long()
        elif not x.dtype.is_floating_point:
            x = x.float()
        return TensorData(x, y)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if len(data) == 0:
            raise DataError(f"{where}: the dataset has no samples.")
        return data
    raise DataError(
        f"{where}: expected (x, y) tensors, a TensorDataset or a torch Dataset, got {type(data).__name__}."
    )


def num_samples(data: TensorData | Dataset) -> int:
    return len(data)


def _given_order(order: Callable[[int, int], Any], epoch: int, n: int) -> torch.Tensor:
    """The indices ``order(epoch, n)`` as an int64 tensor, or a DataError saying what came back."""
    found = torch.as_tensor(order(epoch, n))
    if found.ndim != 1 or found.dtype.is_floating_point or found.dtype == torch.bool or len(found) == 0:
        raise DataError(
            f"order: order(epoch={epoch}, n={n}) must give a non-empty 1-D tensor of integer sample indices, got "
            f"dtype {found.dtype} and shape {tuple(found.shape)}. Fix: return e.g. torch.randperm(n, generator=g)."
        )
    if int(found.min()) < 0 or int(found.max()) >= n:
        raise DataError(
            f"order: order(epoch={epoch}, n={n}) gave indices {int(found.min())}..{int(found.max())}; the data has "
            f"{n} samples, so they must lie in 0..{n - 1}."
        )
    return found.long().cpu()


def iterate_batches(
    data: TensorData | Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int | None = 0,
    rank: int = 0,
    world_size: int = 1,
    order: Callable[[int, int], Any] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``, skipping the first ``start_batch`` batches.

    With ``world_size`` > 1 each process takes every ``world_size``-th sample of the epoch's
    order. Data with ``lengths`` (sequences) is shuffled into batches of similar length
    (:func:`bucketed`; a step's ``batch_size`` x ``world_size`` samples are alike). Shuffled (training) shards are cut to equal length so every process runs the same
    number of steps; unshuffled (evaluation) shards cover every sample exactly once, sequences
    in order of length (:func:`evaluation_order`).
    ``num_workers`` None picks a number for the data (decoding streams use every core).

    ``order``: when shuffling, ``order(epoch, n)`` gives the epoch's sample indices (1-D
    integers in ``0..n-1``; a permutation, or draws) instead of deepworks' own (a permutation
    from :func:`~deepworks.runtime.epoch_generator` ``(seed, epoch)``, or weighted draws). It must
    give the same indices for the same epoch every time it is asked, so that a resumed run skips
    exactly the batches it already trained on.
    """
    n = len(data)
    weights = getattr(data, "weights", None)
    if shuffle and order is not None:
        order = _given_order(order, epoch, n)
    elif shuffle and weights is not None:  # n draws with replacement, e.g. class-balanced
        order = torch.multinomial(weights.double(), n, replacement=True, generator=epoch_generator(seed, epoch))
    elif shuffle:
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(n, generator=generator)
        lengths = getattr(data, "lengths", None)
        if lengths is not None:  # batches of similar length (data.bucket_by_length): each step's samples alike
            order = bucketed(order, lengths, batch_size * world_size, generator)
    else:  # evaluation: the stored order, or sequences sorted by length (evaluation_order)
        order = evaluation_order(data)
        order = torch.arange(n) if order is None else order
    if world_size > 1:
        if shuffle:
            order = order[: n // world_size * world_size]
        order = order[rank::world_size]
    order = order[start_batch * batch_size :]
    if isinstance(data, TensorData):
        order = order.to(data.x.device)
        transform = data.transform
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            xb = data.x[idx]
            yield (transform(xb) if transform is not None else xb), data.y[idx]
        return
    device = torch.device(device)
    if hasattr(data, "stream"):  # an image folder read from disk (deepworks.data.folders)
        yield from data.stream(order, batch_size, device=device, num_workers=num_workers)
        return
    if num_workers is None:
        num_workers = min(4, (os.cpu_count() or 1) // 2)
    # the DataLoader draws a base seed from its generator; a private one keeps the global RNG
    # (dropout, augmentation) on the same sequence as the tensor path
    loader = DataLoader(
        data, batch_size=batch_size, sampler=order.tolist(), pin_memory=device.type == "cuda",
        generator=epoch_generator(seed, epoch), num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
    )
    for xb, yb in loader:
        yb = torch.as_tensor(yb)
        yb = yb if yb.dtype.is_floating_point else yb.long()  # class indices, or regression targets
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
