"""How much memory a batch needs, worked out before it is allocated.

A model is priced on the ``meta`` device (shapes and dtypes, no memory, no arithmetic), so a
model for six-megapixel photos is measured without allocating it. One pass of a batch (for
training: forward, the loss and backward) runs under a dispatch mode that follows every
storage from the op that allocates it until it is freed (:class:`MemoryProfile`): its peak is
the peak of the real pass, at the level of torch's operators, with the tensors kept for
backward, the gradient buffers of the backward pass and the parameters' gradients included.
Sequence models whose forward reads values (their inputs' lengths) are measured the same way
on the CPU at batch sizes 1 and 2 instead. To that come:

* **inputs**: the stored batch (uint8 images, token ids, ...) and the model's input;
* **parameters**, and for training their **gradients** and the **optimizer state**
  (Adam/AdamW 2x the parameters, SGD with momentum and RMSprop 1x, L-BFGS its history);
* **workspace**: what kernels and the allocator take below torch's operators (convolution
  scratch and reorders, the optimizer's multi-tensor temporaries), calibrated shares.

The estimate is checked against the measured peak memory of real training steps and of
inference (``tests/test_memory.py``: a CNN and an MLP, within 30%).

:func:`check_batch_memory` is the check before training (``train.batch_size`` too large is one
error naming the largest size that fits and what else would help; ``train.batch_size: auto``
picks the size); :func:`inference_batch_size` is the batch size of evaluation and prediction;
:func:`counting_batch` makes an image folder's data budget count a training batch.

The memory available is the device's (:func:`device_memory`): for the CPU
:func:`~deepworks.runtime.available_memory`, for a CUDA GPU its free memory; both capped by
``$DEEPWORKS_MEMORY_AVAILABLE`` (e.g. ``2GB``: tests use it to act out a smaller machine).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deepworks.errors import ConfigError, DeepworksError
from deepworks.runtime import available_memory, distributed_context, format_bytes, memory_cap, resolve_device
from deepworks.training.optim import FULL_BATCH

__all__ = [
    "AUTO_BATCH_CAP",
    "BATCH_SHARE",
    "BatchMemory",
    "MemoryProfile",
    "check_batch_memory",
    "counting_batch",
    "device_memory",
    "estimate_batch_bytes",
    "inference_batch_size",
    "optimizer_state_factor",
]

# train.batch_size: auto never goes above this: 64 is the default batch size, the size most
# recipes are tuned for; a larger batch changes the optimisation (fewer, noisier-free steps
# that need a larger learning rate), so memory alone should not choose it
AUTO_BATCH_CAP = 64
# the share of the available memory one batch may take: the rest covers the estimate's error
# (within 30% on the models checked), the allocator's slack and the rest of the process
BATCH_SHARE = 0.8
# evaluation and prediction: at most this many samples per forward pass
INFERENCE_CAP = 512
# kernels' scratch memory (convolution workspaces, the optimizer's multi-tensor temporaries,
# the allocator's rounding), as a share of the activations and of the parameters; calibrated
# against measured peaks (tests/test_memory.py)
_WORKSPACE_ACTIVATIONS = 0.25
_WORKSPACE_PARAMETERS = 1.5
_WORKSPACE_INFERENCE = 0.05  # without gradients the kernels' scratch is smaller


def optimizer_state_factor(name: str, params: dict[str, Any] | None = None) -> float:
    """The optimizer's state as a multiple of the trainable parameters' bytes: Adam/AdamW 2
    (3 with amsgrad), SGD 1 with momentum and 0 without, RMSprop 1 (+1 with momentum, +1
    centered), Adagrad 1, L-BFGS ``2 * history_size + 3``; an optimizer not known here 2."""
    p = params or {}
    name = name.lower()
    if name in ("adam", "adamw"):
        return 3.0 if p.get("amsgrad") else 2.0
    if name == "sgd":
        return 1.0 if p.get("momentum", 0.9) else 0.0
    if name == "rmsprop":
        return 1.0 + (1.0 if p.get("momentum", 0.0) else 0.0) + (1.0 if p.get("centered") else 0.0)
    if name == "adagrad":
        return 1.0
    if name == "lbfgs":
        return 2.0 * int(p.get("history_size", 100)) + 3.0
    return 2.0


@dataclass(frozen=True)
class BatchMemory:
    """Bytes a batch of ``batch_size`` needs, by what holds them."""

    batch_size: int
    inputs: int
    activations: int
    parameters: int
    gradients: int
    optimizer_state: int
    workspace: int

    @property
    def total(self) -> int:
        return self.inputs + self.activations + self.parameters + self.gradients + self.optimizer_state + self.workspace

    def __int__(self) -> int:
        return self.total

    def parts(self) -> str:
        """``inputs 1.2 GB, activations 30.1 GB, ...``: the non-zero parts, largest first."""
        named = [("inputs", self.inputs), ("activations", self.activations), ("parameters", self.parameters),
                 ("gradients", self.gradients), ("optimizer state", self.optimizer_state),
                 ("workspace", self.workspace)]
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in sorted(named, key=lambda t: -t[1]) if n)


class MemoryProfile:
    """A model on inputs of one shape, priced at any batch size by :meth:`batch`.

    Each batch size is simulated once on the meta device (and remembered): a forward pass
    (and for training the loss and the backward pass) under a dispatch mode that follows every
    tensor's storage from the op that allocates it until it is freed, so the peak it reports is
    the peak of the real pass, transient buffers and the gradients accumulated in backward
    included, without allocating any of it.
    """

    def __init__(
        self, model: nn.Module | Callable[[], nn.Module], input_shape: Sequence[int], *,
        input_dtype: torch.dtype = torch.float32, stored_dtype: torch.dtype | None = None,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise ValueError(f"input_shape: expected positive sizes such as (3, 224, 224), got {self.input_shape}")
        self.input_dtype = input_dtype
        self.stored_dtype = stored_dtype or input_dtype
        self._factory = model if callable(model) and not isinstance(model, nn.Module) else None
        if self._factory is not None:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                model = self._factory()
        self.model = model
        self._line: tuple[int, int] | None = None  # (peak at 1, growth per sample) when measured on the CPU
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        self.parameters = sum(t.numel() * t.element_size() for t in (*params.values(), *buffers.values()))
        self.trainable = sum(p.numel() * p.element_size() for p in params.values() if p.requires_grad)
        self._peaks: dict[tuple[int, bool], int] = {}

    @classmethod
    def of(cls, model: nn.Module | Callable[[], nn.Module], input_shape: Sequence[int], **kw: Any) -> MemoryProfile:
        return cls(model, input_shape, **kw)

    def peak(self, batch_size: int, *, training: bool) -> int:
        """Simulated peak bytes of one pass on a batch (the model input, activations, transient
        buffers and, for training, the gradients; not the parameters or optimizer state)."""
        key = (int(batch_size), bool(training))
        if key not in self._peaks:
            try:
                self._peaks[key] = _simulate(self.model, self.input_shape, self.input_dtype, key[0], training=key[1])
            except DeepworksError:
                raise
            except Exception:  # noqa: BLE001 - an op that needs values (sequence lengths): measure on the CPU
                self._peaks[key] = self._cpu_peak(key[0], key[1])
        return self._peaks[key]

    def _cpu_peak(self, batch_size: int, training: bool) -> int:
        """The peak of real passes on the CPU at batch sizes 1 and 2, extended along the line
        they give: for models the meta device cannot run (sequence models read their inputs'
        lengths). Their inputs are small; a model built on the meta device is built again."""
        model = self.model
        if any(p.is_meta for p in model.parameters()):
            assert self._factory is not None
            with torch.random.fork_rng(devices=[]):
                model = self._factory()
        one, two = (_simulate(model, self.input_shape, self.input_dtype, b, training=training, device="cpu")
                    for b in (1, 2))
        return one + (batch_size - 1) * max(0, two - one)

    def batch(self, batch_size: int, *, training: bool, optimizer: str = "adamw",
              optimizer_params: dict[str, Any] | None = None) -> BatchMemory:
        """The memory of one batch of ``batch_size`` samples (training: a whole step, forward,
        backward and the optimizer's update; inference: a forward pass without gradients)."""
        b = int(batch_size)
        numel = math.prod(self.input_shape)
        model_input = b * numel * _itemsize(self.input_dtype)
        stored = b * numel * _itemsize(self.stored_dtype) if self.stored_dtype != self.input_dtype else 0
        peak = self.peak(b, training=training)  # model input + activations (+ gradients)
        if not training:
            activations = max(0, peak - model_input)
            return BatchMemory(b, stored + model_input, activations, self.parameters, 0, 0,
                               int(_WORKSPACE_INFERENCE * activations))
        gradients = self.trainable
        state = int(optimizer_state_factor(optimizer, optimizer_params) * self.trainable)
        # the pass's peak holds the gradients accumulated so far; the update after it holds all of
        # them and the optimizer's temporaries: the larger of the two is the step's peak
        step = gradients + model_input + int(_WORKSPACE_PARAMETERS * self.trainable)
        activations = max(0, peak - model_input - gradients)
        workspace = max(0, max(peak, step) - model_input - gradients - activations) + int(
            _WORKSPACE_ACTIVATIONS * activations)
        return BatchMemory(b, stored + model_input, activations, self.parameters, gradients, state, workspace)

    def largest_batch(self, available: int, *, training: bool, cap: int, optimizer: str = "adamw",
                      optimizer_params: dict[str, Any] | None = None, powers_of_two: bool = False) -> int:
        """The largest batch size up to ``cap`` whose :meth:`batch` fits ``available`` bytes: ``cap``
        itself when it fits, else (with ``powers_of_two``) the largest power of two below it that
        fits; 0 when not even one sample fits."""
        def fits(b: int) -> bool:
            return self.batch(b, training=training, optimizer=optimizer, optimizer_params=optimizer_params).total <= available

        cap = max(1, int(cap))
        if fits(cap):
            return cap
        if powers_of_two:
            size = 1 << (cap.bit_length() - 1)
            while size >= 1 and not fits(size):
                size //= 2
            return size if size >= 1 else 0
        if not fits(1):
            return 0
        low, high = 1, cap
        while high - low > 1:  # the need grows with the batch: the last size that fits
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class _Tracker(TorchDispatchMode):
    """Follows every storage an op allocates until it is freed: the live bytes and their peak."""

    def __init__(self, ignore: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.ignore = {t.untyped_storage()._cdata for t in ignore}  # the parameters (a view of one is no new memory)
        self.live: dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in self.ignore:
            return
        n = storage.nbytes()

        def freed(_: Any, key: int = key, n: int = n) -> None:
            if self.live.pop(key, None) is not None:
                self.current -= n

        self.live[key] = weakref.ref(storage, freed)
        self.current += n
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _first_tensor(value: Any) -> torch.Tensor | None:
    for t in tree_flatten(value)[0]:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    return None


def _loss(out: torch.Tensor) -> torch.Tensor:
    """A loss of the model's output as training computes one: cross-entropy of (B, K) logits
    (in fp32), a mean squared value otherwise."""
    if out.ndim == 2:
        target = torch.zeros(out.shape[0], dtype=torch.int64, device=out.device)
        return nn.functional.cross_entropy(out.float(), target)
    return out.float().pow(2).mean()


def _simulate(
    model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, batch: int, *, training: bool, device: str = "meta",
) -> int:
    """Peak live bytes of one pass of ``model`` on a batch of ``batch`` on ``device`` (the meta
    device: no memory, no arithmetic). Stand-ins take the place of the model's parameters and
    buffers (empty on meta, copies on the CPU), so the model itself is left untouched."""
    from torch.func import functional_call

    def stand_in(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t, device="meta") if device == "meta" else t.detach().clone()

    params = {name: stand_in(p).requires_grad_(p.requires_grad and training) for name, p in model.named_parameters()}
    buffers = {name: stand_in(b) for name, b in model.named_buffers()}
    was_training = model.training
    model.train(training)
    tracker = _Tracker([*params.values(), *buffers.values()])
    try:
        with tracker:
            if device == "meta":
                x = torch.empty((batch, *shape), dtype=dtype, device="meta")
            else:  # values a model accepts: token id 1 (unknown) for integer inputs, zeros otherwise
                x = torch.ones if not dtype.is_floating_point else torch.zeros
                x = x((batch, *shape), dtype=dtype)
            tracker.track(x)
            if not training:
                with torch.no_grad():
                    out = functional_call(model, {**params, **buffers}, (x,))
                del out
            else:
                out = _first_tensor(functional_call(model, {**params, **buffers}, (x,)))
                if out is not None and out.requires_grad:
                    loss = _loss(out)
                    out = None
                    loss.backward()
    finally:
        model.train(was_training)
    return tracker.peak


def estimate_batch_bytes(
    model: nn.Module | Callable[[], nn.Module], input_shape: Sequence[int], batch_size: int, *, training: bool,
    input_dtype: torch.dtype = torch.float32, optimizer: str = "adamw", stored_dtype: torch.dtype | None = None,
    optimizer_params: dict[str, Any] | None = None,
) -> int:
    """Bytes one batch of ``batch_size`` samples of ``input_shape`` needs: inputs, activations,
    parameters and, with ``training``, gradients and the optimizer's state (see the module
    docstring). ``stored_dtype``: the dtype the batch is kept in before it becomes the model's
    input (uint8 images), when that differs from ``input_dtype``."""
    profile = MemoryProfile(model, input_shape, input_dtype=input_dtype, stored_dtype=stored_dtype)
    return profile.batch(batch_size, training=training, optimizer=optimizer, optimizer_params=optimizer_params).total


# ----------------------------------------------------------------------------- the memory a device has


def device_memory(device: torch.device | str = "cpu") -> int:
    """Bytes a batch can still use on ``device``: for the CPU :func:`~deepworks.runtime.available_memory`;
    for a CUDA GPU its free memory plus what torch's allocator holds unused; both at most
    ``$DEEPWORKS_MEMORY_AVAILABLE`` (:func:`~deepworks.runtime.memory_cap`)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        cap = memory_cap()
        return int(free if cap is None else min(free, cap))
    return available_memory()


def _resident(model: nn.Module | Callable[[], nn.Module]) -> bool:
    """Are the model's parameters already allocated (so not part of what a batch adds)?"""
    if not isinstance(model, nn.Module):
        return False
    return any(not p.is_meta for p in model.parameters())


def _input_of(train_data: Any) -> tuple[tuple[int, ...], torch.dtype, torch.dtype]:
    """(sample shape, model input dtype, stored dtype) of a training split: one sample's model
    input (``inputs``: TensorData or a streamed folder) and the dtype the split keeps. A split whose
    batches vary in shape (texts padded to each batch's longest) gives its largest as ``max_shape``."""
    sample = train_data.inputs(torch.arange(1))
    stored = getattr(train_data, "x", None)
    stored_dtype = stored.dtype if isinstance(stored, torch.Tensor) else torch.uint8  # streamed: uint8 pixels
    shape = getattr(train_data, "max_shape", None) or sample.shape[1:]
    return tuple(int(s) for s in shape), sample.dtype, stored_dtype


def _describe(shape: Sequence[int], b: int) -> str:
    dims = "x".join(str(s) for s in shape)
    return f"a batch of {b} images of {dims}" if len(shape) == 3 else f"a batch of {b} samples of shape {dims}"


# ----------------------------------------------------------------------------- before training


def check_batch_memory(
    cfg: Any, model: nn.Module | Callable[[], nn.Module], train_data: Any, *, available: int | None = None,
    world_size: int = 1,
) -> Any:
    """Refuse a training batch that cannot fit the memory, or pick ``train.batch_size: auto``.

    ``cfg`` is the run's :class:`~deepworks.config.Config` (or only its ``train`` section);
    ``model`` the model, or a zero-argument function that builds it (then built on the meta
    device: nothing is allocated, so a model too large for the machine is refused before it
    exists); ``train_data`` the training split. ``available`` (bytes) replaces the device's
    free memory (:func:`device_memory`; ``$DEEPWORKS_MEMORY_AVAILABLE`` caps that too). A
    batch may take :data:`BATCH_SHARE` of it.

    Returns ``cfg`` with ``train.batch_size`` a number (auto resolved and logged); raises
    :class:`ConfigError` naming ``train.batch_size``, the largest size that fits and what else
    would help, when the configured batch does not fit.
    """
    t = getattr(cfg, "train", cfg)
    n = len(train_data) // max(1, world_size)
    if n == 0:
        return cfg if t.batch_size != "auto" else _with_batch(cfg, AUTO_BATCH_CAP)
    device = resolve_device(t.device)
    shape, input_dtype, stored_dtype = _input_of(train_data)
    profile = MemoryProfile(model, shape, input_dtype=input_dtype, stored_dtype=stored_dtype)
    resident = profile.parameters if _resident(model) else 0
    free = device_memory(device) if available is None else int(available)
    limit = int(BATCH_SHARE * free) + resident  # the parameters already allocated are not new memory
    where = f"{format_bytes(limit - resident)} is available ({BATCH_SHARE:.0%} of the {format_bytes(free)} free on {device})"
    opt, opt_params = t.optimizer.name, dict(t.optimizer.params)

    def need(b: int) -> BatchMemory:
        return profile.batch(b, training=True, optimizer=opt, optimizer_params=opt_params)

    if opt in FULL_BATCH:  # the whole training split is one batch
        est = need(n)
        if est.total > limit:
            raise ConfigError(
                f"train.optimizer: {opt} takes the whole training split as one batch: {_describe(shape, n)} needs about "
                f"{format_bytes(est.total - resident)} ({est.parts()}) but {where}. Fix: an optimizer that takes "
                "mini-batches, e.g. train.optimizer: adamw, with train.batch_size: auto."
            )
        return cfg if t.batch_size != "auto" else _with_batch(cfg, AUTO_BATCH_CAP)
    if t.batch_size == "auto":
        cap = min(AUTO_BATCH_CAP, n)
        size = profile.largest_batch(limit, training=True, cap=cap, optimizer=opt, optimizer_params=opt_params,
                                     powers_of_two=True)
        if size == 0:
            raise ConfigError(
                f"train.batch_size: auto, but even {_describe(shape, 1)} needs about {format_bytes(need(1).total - resident)} "
                f"({need(1).parts()}) and {where}. Fix: {_fixes(cfg, profile, shape, need(1), 0, limit)}."
            )
        est = need(size)
        why = (f"the largest power of two up to {AUTO_BATCH_CAP} that fits" if size < cap else
               f"{'the default' if cap == AUTO_BATCH_CAP else 'the whole training split'}, and it fits")
        if distributed_context().is_main:
            print(f"train.batch_size: auto -> {size} ({why}: about {format_bytes(est.total - resident)} of the "
                  f"{format_bytes(limit - resident)} available on {device})", flush=True)
        return _with_batch(cfg, size)
    b = int(t.batch_size)
    est = need(b)
    if est.total <= limit:
        return cfg
    fits = profile.largest_batch(limit, training=True, cap=b - 1, optimizer=opt, optimizer_params=opt_params) if b > 1 else 0
    one = "" if fits or b == 1 else f" (even a batch of 1 needs about {format_bytes(need(1).total - resident)})"
    raise ConfigError(
        f"train.batch_size: {_describe(shape, b)} needs about {format_bytes(est.total - resident)} ({est.parts()}) but "
        f"{where}{one}. Fix: {_fixes(cfg, profile, shape, est, fits, limit)}."
    )


def _with_batch(cfg: Any, size: int) -> Any:
    if hasattr(cfg, "train"):
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": int(size)})})
    return cfg.model_copy(update={"batch_size": int(size)})


def _fixes(cfg: Any, profile: MemoryProfile, shape: Sequence[int], est: BatchMemory, fits: int, limit: int) -> str:
    """What would make the batch fit, in order of how little it changes: a smaller batch (when
    one fits), smaller inputs (when the activations or inputs are a large part), and for a CNN
    whose parameters alone take a large part of the memory, model.global_pool (the dense head
    then reads one value per feature map instead of every pixel)."""
    fixes = [f"train.batch_size: {fits} (the largest that fits) or auto"] if fits else []
    per_sample = est.inputs + est.activations
    if per_sample >= 0.2 * est.total:
        if len(shape) == 3:
            fixes.append("a smaller data.image_size (the activations grow with the pixels)")
        else:
            fixes.append("smaller inputs (fewer features or a shorter data.max_length)")
    model_cfg = getattr(cfg, "model", None)
    fixed = est.parameters + est.gradients + est.optimizer_state
    cnn_head = model_cfg is not None and model_cfg.name == "cnn" and not any(
        isinstance(m, nn.AdaptiveAvgPool2d) for m in profile.model.modules())  # no global_pool, set or by default
    if cnn_head and (fixed >= 0.2 * est.total or fixed >= 0.25 * limit):
        head = _largest_linear(profile.model)
        fixes.append(f"model.global_pool: true (the dense head after the conv blocks holds {format_bytes(head)} of "
                     "weights, and as much again in gradients and twice that in optimizer state)")
    elif fixed >= 0.5 * est.total:
        fixes.append(f"a smaller model (its parameters, gradients and optimizer state alone take {format_bytes(fixed)})")
    if not fixes:
        fixes.append("a smaller model or smaller inputs")
    return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 1 else "") + fixes[-1]


def _largest_linear(model: nn.Module) -> int:
    sizes = [m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear)]
    return max(sizes, default=0)


# ----------------------------------------------------------------------------- evaluation and prediction


def inference_batch_size(
    model: nn.Module | Callable[[], nn.Module], input_shape: Sequence[int], available: int, cap: int = INFERENCE_CAP,
    *, input_dtype: torch.dtype = torch.float32, stored_dtype: torch.dtype | None = None,
    profile: MemoryProfile | None = None,
) -> int:
    """The batch size for evaluation or prediction: the largest up to ``cap`` whose forward pass
    (no gradients) fits :data:`BATCH_SHARE` of ``available`` bytes (e.g. :func:`device_memory`),
    the model's parameters not counted when they are already allocated. At least 1: a model
    whose single sample does not fit is refused before training (:func:`check_batch_memory`)."""
    profile = profile or MemoryProfile(model, input_shape, input_dtype=input_dtype, stored_dtype=stored_dtype)
    resident = profile.parameters if _resident(model) else 0
    return max(1, profile.largest_batch(int(BATCH_SHARE * available) + resident, training=False, cap=cap))


# ----------------------------------------------------------------------------- the data budget


def counting_batch(
    cfg: Any, model_for: Callable[[tuple[int, ...]], Any] | None = None
) -> contextlib.AbstractContextManager[None]:
    """A context in which loading an image folder (``data.in_memory``) counts one training batch
    of this config in its memory budget (:class:`deepworks.data.folders.TrainingBatch`): the
    model of ``cfg.model`` (or ``model_for(input_shape)``'s, where the image size chooses it) for
    the folder's image size and classes, built on the meta device. On a GPU only the batch's host
    side counts (the stored batch and its pinned copy)."""
    from deepworks.data.folders import TrainingBatch, counting_training_batch
    from deepworks.models.cnn import global_pool_default
    from deepworks.models.registry import model_from_config

    t = cfg.train
    device = resolve_device(t.device)
    opt, opt_params = t.optimizer.name, dict(t.optimizer.params)
    profiles: dict[tuple[tuple[int, ...], int, bool], MemoryProfile] = {}
    model_of = model_for or (lambda shape: cfg.model)

    def profile(shape: tuple[int, ...], classes: int, global_pool: bool = False) -> MemoryProfile:
        key = (tuple(shape), int(classes), global_pool)
        if key not in profiles:
            model_cfg = model_of(tuple(shape))
            if global_pool:
                model_cfg = type(model_cfg).model_validate({**model_cfg.model_dump(), "global_pool": True})
            profiles[key] = MemoryProfile(lambda: model_from_config(model_cfg, shape, classes), shape,
                                          stored_dtype=torch.uint8)
        return profiles[key]

    def need(shape: tuple[int, ...], classes: int, batch: int) -> int:
        if device.type != "cpu":  # the batch lives on the device; the host holds it as uint8, and pinned
            return 2 * batch * math.prod(shape)
        return profile(shape, classes).batch(batch, training=True, optimizer=opt, optimizer_params=opt_params).total

    def model_fix(shape: tuple[int, ...], classes: int, batch: int, room: int) -> str | None:
        """model.global_pool: true for a CNN without it, with the largest batch (halving) that
        then fits ``room`` bytes: its dense head then reads one value per feature map."""
        model_cfg = model_of(tuple(shape))
        if device.type != "cpu" or model_cfg.name != "cnn":
            return None
        pools = model_cfg.params.get("global_pool")
        if pools or (pools is None and global_pool_default(shape)):  # already reads one value per feature map
            return None
        pooled = profile(shape, classes, True)
        b = max(1, batch)
        while b >= 1:
            total = pooled.batch(b, training=True, optimizer=opt, optimizer_params=opt_params).total
            if total <= room:
                smaller = f" with train.batch_size: {b}" if b < batch else ""
                return f"model.global_pool: true{smaller} (a batch then needs about {format_bytes(total)})"
            b //= 2
        return None

    full_batch = opt in FULL_BATCH
    size = None if full_batch else (1 if t.batch_size == "auto" else int(t.batch_size))
    key = f"train.optimizer: {opt} (the whole split is one batch)" if full_batch else (
        "train.batch_size: auto (counted at 1)" if t.batch_size == "auto" else "train.batch_size")
    return counting_training_batch(TrainingBatch(size, key, need, model_fix))
