"""Image folders of any size: one scan, a memory budget that picks the path, and streaming from disk.

A folder is planned from the files' headers alone (sizes and colour modes, no pixels): that
fixes the training size and channels (:class:`~deepworks.data.images.ImageSpec`) and the
bytes the in-memory path would need as uint8. Within the budget (half the memory actually
available, or ``data.memory_budget``; the pixels, the decoding buffers and, when the trainer
says what it needs, one training batch count in it) every file is decoded once, spread over the cores, into
one uint8 tensor. Beyond it (or with ``data.in_memory: false``) the same scan only verifies
the files, hashes them and sums their pixels (for duplicates and normalisation statistics);
training then decodes each batch in persistent ``DataLoader`` worker processes
(:class:`FolderSource`). Both paths decode with :func:`~deepworks.data.images.load_pixels`,
so they produce the same pixels, the same statistics and, for a seed, the same batches.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from deepworks.data.images import (
    ImageInfo,
    ImageSpec,
    check_on_bad_file,
    decode_image,
    is_grayscale_mode,
    load_pixels,
    probe_image,
    reason_of,
    report_bad_files,
    walk_image_folder,
)
from deepworks.data.containers import ImageDataset, pixel_sums
from deepworks.data.datasets import DATASETS
from deepworks.data.leakage import sample_hashes
from deepworks.data.splits import STD_FLOOR
from deepworks.errors import ConfigError, DataError
from deepworks.runtime import available_memory, format_bytes, parse_bytes

__all__ = [
    "DEFAULT_PHOTO_SIZE",
    "FolderPlan",
    "FolderSource",
    "FolderStream",
    "StreamedImages",
    "TrainingBatch",
    "counting_training_batch",
    "decoding_bytes",
    "pixel_stats",
    "open_plan",
    "plan_files",
    "plan_folder",
    "scan_image_folder",
]

# photos larger than LARGE_SIDE on their shorter side train at DEFAULT_PHOTO_SIZE unless data.image_size says otherwise
LARGE_SIDE = 256
DEFAULT_PHOTO_SIZE = 224
BUDGET_SHARE = 0.5  # of the available memory, when data.memory_budget is not set
SCAN_BATCH = 16  # files per decoding batch of a scan
SCAN_PREFETCH = 4  # decoding batches each worker process has in flight


@dataclass(frozen=True)
class TrainingBatch:
    """What one training batch needs in host memory, for a folder's memory budget. The data
    layer builds no models: the trainer's side supplies this (``deepworks.training.memory.counting_batch``)
    around loading, and :func:`open_folder` counts it with the pixels and decoding buffers."""

    batch_size: int | None  # samples per training batch; None: the whole training split (L-BFGS)
    key: str  # the config key that sets it, for messages
    need: Callable[[tuple[int, ...], int, int], int]  # (input shape, classes, batch size) -> bytes
    # (input shape, classes, batch size, bytes left for the batch) -> a change of the model that
    # would let a batch fit them (e.g. "model.global_pool: true with train.batch_size: 4"), or None
    model_fix: Callable[[tuple[int, ...], int, int, int], str | None] = lambda shape, classes, batch, room: None


_TRAINING_BATCH: ContextVar[TrainingBatch | None] = ContextVar("deepworks_training_batch", default=None)


@contextmanager
def counting_training_batch(batch: TrainingBatch | None) -> Iterator[None]:
    """Folders opened inside this context count ``batch`` in their memory budget."""
    token = _TRAINING_BATCH.set(batch)
    try:
        yield
    finally:
        _TRAINING_BATCH.reset(token)


def decoding_bytes(plan: FolderPlan, workers: int) -> int:
    """Memory the decoding of a folder takes on top of the pixels it keeps: per decoding process
    (``workers``, or the main process when 0) the largest file decoded at full resolution twice
    (the decoded image and one converted or resized copy) and its output at the training size,
    plus the batches in flight (each worker prefetches :data:`SCAN_PREFETCH` batches of
    :data:`SCAN_BATCH` files at the training size)."""
    if not plan.infos:
        return 0
    largest = max(info.size[0] * info.size[1] for info in plan.infos)
    per_process = 2 * 4 * largest + plan.spec.nbytes()  # up to 4 channels (RGBA) while decoding
    processes = max(1, workers)
    in_flight = min(len(plan.infos), (workers * SCAN_PREFETCH if workers else 1) * SCAN_BATCH) * plan.spec.nbytes()
    return processes * per_process + in_flight


# ----------------------------------------------------------------------------- planning


@dataclass
class FolderPlan:
    """What the headers of a folder's (or an image list's) files say: the files, classes and the training spec."""

    root: Path  # the folder, or the table that lists the files
    infos: list[ImageInfo]  # files whose header could be read, in sorted order
    classes: list[str]
    class_where: list[str]  # how messages name each class ("photos/cat: class folder 'cat'")
    bad: list[tuple[Path, str]]  # (path, reason) of files whose header could not be read
    spec: ImageSpec
    note: str | None = None  # what the log says about a size chosen by default
    groups: np.ndarray | None = None  # one data.group_by value per entry of infos (image lists)

    def estimate_bytes(self) -> int:
        """Bytes of all images as uint8 at the training size: what the in-memory path holds."""
        return len(self.infos) * self.spec.nbytes()


def plan_folder(
    path: str | os.PathLike[str], *, image_size: tuple[int, int] | None = None, channels: int | None = None,
    resize: str = "auto", on_bad_file: str = "warn",
) -> FolderPlan:
    """Walk a folder of class subfolders and read every file's header (no pixels) to fix the
    training size, channels and resize method (see :func:`plan_files`)."""
    check_on_bad_file(on_bad_file)
    root = Path(path)
    files, classes, class_dirs = walk_image_folder(root)
    where = [f"{d}: class folder {d.name!r}" for d in class_dirs]
    return plan_files(root, files, classes, where, image_size=image_size, channels=channels, resize=resize)


def plan_files(
    root: Path, files: list[tuple[Path, int]], classes: list[str], class_where: list[str], *,
    bad: list[tuple[Path, str]] | None = None, groups: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None, channels: int | None = None, resize: str = "auto",
) -> FolderPlan:
    """Read the header of every ``(path, label)`` in ``files`` (no pixels) to fix the training
    size, channels and resize method. ``bad`` holds files already known to be unreadable (an
    image list's missing files); ``groups`` one group value per file.

    Without ``image_size`` the size is the most common one, unless its shorter side is over
    256 pixels (photos): then images are scaled so the shorter side is 224 and the centre
    224x224 is cut out (``resize: crop``), and :attr:`FolderPlan.note` says so.
    """
    infos: list[ImageInfo] = []
    bad = list(bad or [])
    total = len(files) + len(bad)
    kept: list[int] = []
    for position, (file, label) in enumerate(files):
        try:
            infos.append(probe_image(file, label))
            kept.append(position)
        except DataError as exc:
            bad.append((file, reason_of(file, exc)))
    if not infos:
        first = sorted(bad)[0]
        raise DataError(
            f"{root}: none of its {total} image file(s) can be "
            f"read (first: {first[0]}, {first[1].rstrip('.')}). Check that they are PNG, JPEG, GIF, BMP, TIFF or WebP "
            "images."
        )
    note = None
    method = "squash" if resize == "auto" else resize
    if image_size is None:
        common, count = Counter(info.size for info in infos).most_common(1)[0]
        if min(common) > LARGE_SIDE:
            image_size = (DEFAULT_PHOTO_SIZE, DEFAULT_PHOTO_SIZE)
            method = "crop" if resize == "auto" else resize
            how = "shorter side scaled to 224, centre crop" if method == "crop" else "squashed to 224x224"
            note = (
                f"data: the images are large (most common size {common[0]}x{common[1]}, {count} of {len(infos)}); "
                f"training at 224x224 ({how}). Set data.image_size (and data.resize: squash|crop) to change it."
            )
        else:
            image_size = common
    if channels is None:
        channels = 1 if all(is_grayscale_mode(info.mode) for info in infos) else 3
    kept_groups = None if groups is None else np.asarray(groups)[np.asarray(kept, dtype=np.int64)]
    return FolderPlan(root, infos, classes, class_where, bad, ImageSpec(channels, tuple(image_size), method), note,
                      kept_groups)


# ----------------------------------------------------------------------------- decoding in worker processes


class DecodeFiles(Dataset):
    """Decode files with :func:`load_pixels` in DataLoader workers; a file that fails gives its
    reason instead of pixels, never an exception.

    ``stats``: also the file's digest and exact pixel sums (computed in the worker);
    ``keep`` False: the pixels are not sent back (a scan of a folder that streams);
    ``spec`` None: decode only (verify that the file is readable).
    """

    def __init__(self, paths: list[Path], spec: ImageSpec | None, *, stats: bool = False, keep: bool = True):
        self.paths, self.spec, self.stats, self.keep = paths, spec, stats, keep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        try:
            x = load_pixels(path, self.spec) if self.spec is not None else decode_image(path)
        except DataError as exc:
            return {"i": i, "bad": reason_of(path, exc)}
        except Exception as exc:  # anything else a changed or odd file raises: skipped, not fatal
            return {"i": i, "bad": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        out: dict[str, Any] = {"i": i, "bad": None}
        if self.stats:
            s, q = pixel_sums(x[None])
            out.update(hash=sample_hashes(x[None])[0], sum=s[0], sq=q[0])
        if self.keep and self.spec is not None:
            out["x"] = x
        return out


def collate_decoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch of decoded files, stacked in the worker (one shared-memory tensor to pass back)."""
    good = [it for it in items if it["bad"] is None]
    out: dict[str, Any] = {
        "index": [it["i"] for it in good],
        "x": torch.stack([it["x"] for it in good]) if good and "x" in good[0] else None,
        "bad": [(it["i"], it["bad"]) for it in items if it["bad"] is not None],
    }
    if good and "hash" in good[0]:
        out.update(hash=[it["hash"] for it in good], sum=torch.stack([it["sum"] for it in good]),
                   sq=torch.stack([it["sq"] for it in good]))
    return out


def _workers(n_files: int, requested: int | None = None) -> int:
    if requested is not None:
        return max(0, int(requested))
    if n_files < 32:
        return 0  # starting processes costs more than decoding a few files
    return min(8, os.cpu_count() or 1)


class FileProgress:
    """A progress bar on a terminal for long work over ``total`` files (or rows: ``unit``); a start
    and an end line otherwise. ``stderr``: both go to stderr (a command whose stdout is its answer)."""

    def __init__(self, total: int, what: str, enabled: bool, *, unit: str = "files", stderr: bool = False):
        self.total, self.what, self.done, self.unit = total, what, 0, unit
        self.bar = None
        self.enabled = enabled
        self.out = sys.stderr if stderr else sys.stdout
        self.t0 = time.perf_counter()
        if not enabled:
            return
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                console=Console(stderr=stderr),
            )
            self.bar.start()
            self.task = self.bar.add_task(what, total=total)
        else:
            print(f"{what}: {total} {unit} ...", file=self.out, flush=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.enabled:
            print(f"{self.what}: {self.total} {self.unit} in {time.perf_counter() - self.t0:.1f} s", file=self.out,
                  flush=True)
            self.enabled = False


@dataclass
class ScanResult:
    """What one decoding pass over a folder's files learnt."""

    good: np.ndarray  # int64 positions (into the files scanned) that decoded
    bad: list[tuple[int, str]]  # (position, reason) of those that did not
    hashes: np.ndarray  # one digest per good file (of its training pixels)
    sums: torch.Tensor  # int64 (n_good, C): per image and channel, the sum of pixel values
    sqs: torch.Tensor  # int64 (n_good, C): the sum of squared pixel values
    x: torch.Tensor | None = None  # uint8 (n_good, C, H, W) when kept


def pixel_stats(
    sums: torch.Tensor, sqs: torch.Tensor, pixels_per_image: int, scale: float
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std, in [0, 1] units (``scale`` per stored step), of
    the images whose exact integer sums are given. Computed in integers, so the in-memory
    and the streaming path, which sum the same pixels, get bit-identical statistics."""
    n = int(sums.shape[0]) * pixels_per_image
    if n == 0:
        raise DataError("channel statistics need at least one training image.")
    means, stds = [], []
    for c in range(sums.shape[1]):
        s, ss = int(sums[:, c].sum()), int(sqs[:, c].sum())
        means.append(s / n * scale)
        var = (n * ss - s * s) / (n * n)  # exact integers, one correctly rounded division
        stds.append(max(math.sqrt(max(var, 0.0)) * scale, STD_FLOOR))
    return means, stds


def scan_files(
    paths: list[Path], spec: ImageSpec | None, *, keep: bool, workers: int | None = None,
    progress: bool | None = None, what: str = "decoding images",
) -> ScanResult:
    """Decode every file once with :func:`load_pixels`, spread over worker processes: its
    digest and exact pixel sums always, its pixels too with ``keep`` (filled into one uint8
    tensor). ``spec`` None only checks that every file decodes (no digests or sums)."""
    n = len(paths)
    workers = _workers(n, workers)
    bar = FileProgress(n, what, n >= 500 if progress is None else progress)
    stats = spec is not None
    c = spec.channels if spec is not None else 0
    x = torch.empty((n, *spec.input_shape), dtype=torch.uint8) if keep and spec is not None else None
    hashes = np.empty(n, dtype=object)
    sums = torch.zeros((n, c), dtype=torch.int64)
    sqs = torch.zeros((n, c), dtype=torch.int64)
    ok = np.zeros(n, dtype=bool)
    bad: list[tuple[int, str]] = []
    loader = DataLoader(
        DecodeFiles(paths, spec, stats=stats, keep=keep), batch_size=SCAN_BATCH, num_workers=workers, collate_fn=collate_decoded,
        prefetch_factor=SCAN_PREFETCH if workers else None, generator=torch.Generator().manual_seed(0),
    )
    try:
        for batch in loader:
            bad += batch["bad"]
            if batch["index"]:
                idx = torch.tensor(batch["index"], dtype=torch.int64)
                ok[idx.numpy()] = True
                if x is not None:
                    x[idx] = batch["x"]
                if stats:
                    sums[idx], sqs[idx] = batch["sum"], batch["sq"]
                    hashes[idx.numpy()] = batch["hash"]
            bar.advance(len(batch["index"]) + len(batch["bad"]))
    finally:
        bar.close()
    good = np.flatnonzero(ok)
    if x is not None and len(good) < n:
        x = x[torch.from_numpy(good)]
    g = torch.from_numpy(good)
    return ScanResult(good, sorted(bad), hashes[good].astype(str), sums[g], sqs[g], x)


# ----------------------------------------------------------------------------- streaming


class _Plan:
    """A batch sampler whose batches are set before each pass, so one persistent DataLoader
    (and its worker processes) serves every epoch and every split."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FolderSource:
    """The files of an image folder, decoded batch by batch from disk during training.

    Decoding runs in persistent DataLoader worker processes that prefetch the next batches
    (pinned memory on CUDA); batches come back in order as uint8, so an epoch's batches are
    a function of (seed, epoch) as on the in-memory path. A file that fails to decode now
    (changed on disk since the scan) is left out of its batch with one warning, and counted
    in :attr:`skipped`; it never stops training.
    """

    def __init__(self, root: Path, paths: list[Path], labels: np.ndarray, spec: ImageSpec):
        self.root, self.paths, self.spec = root, list(paths), spec
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.skipped: dict[str, str] = {}
        self._loader: DataLoader | None = None
        self._plan = _Plan()
        self._loader_key: tuple[int, bool] | None = None

    def _skip(self, bad: list[tuple[int, str]]) -> None:
        for i, reason in bad:
            path = str(self.paths[i])
            if path not in self.skipped:
                self.skipped[path] = reason
                warnings.warn(
                    f"{path}: could not be decoded during training ({reason.rstrip('.')}); skipped. It decoded when "
                    "the folder was scanned, so it changed on disk since. The count is in summary.json (data.skipped_files).",
                    stacklevel=2,
                )

    def _get_loader(self, workers: int, pin: bool) -> DataLoader:
        if self._loader is None or self._loader_key != (workers, pin):
            self._loader = DataLoader(
                DecodeFiles(self.paths, self.spec), batch_sampler=self._plan, num_workers=workers,
                collate_fn=collate_decoded, pin_memory=pin, persistent_workers=True, prefetch_factor=4,
                # a private generator: starting a pass must not draw from the global RNG, which
                # drives dropout and augmentation and is restored exactly on resume
                generator=torch.Generator().manual_seed(0),
            )
            self._loader_key = (workers, pin)
        return self._loader

    def batches(
        self, index_batches: list[list[int]], device: torch.device, num_workers: int | None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``(positions that decoded, uint8 batch on device)`` for each list of file positions."""
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        if workers == 0:
            decoder = DecodeFiles(self.paths, self.spec)
            for batch in index_batches:
                out = collate_decoded([decoder[i] for i in batch])
                self._skip(out["bad"])
                if out["x"] is not None:
                    yield out["index"], out["x"].to(device)
            return
        loader = self._get_loader(workers, device.type == "cuda")
        self._plan.batches = index_batches
        for out in loader:
            self._skip(out["bad"])
            if out["x"] is not None:
                yield out["index"], out["x"].to(device, non_blocking=True)

    def __getstate__(self) -> dict[str, Any]:  # worker processes and loaders do not travel
        state = dict(self.__dict__)
        state.update(_loader=None, _loader_key=None, _plan=_Plan())
        return state


class StreamedImages:
    """One split (positions into a :class:`FolderSource`) of a folder streamed from disk; the
    trainer batches it like in-memory data (``iterate_batches`` calls :meth:`stream`).

    ``label_map`` (one entry per class of the folder) turns the folder's labels into the run's
    (``data.subset`` keeps some classes and numbers them 0..k-1)."""

    def __init__(
        self, source: FolderSource, indices: np.ndarray, transform: Any = None, label_map: torch.Tensor | None = None
    ):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_map = label_map
        self.y = self._labels(torch.from_numpy(self.indices))
        self.transform = transform
        self.weights: torch.Tensor | None = None  # data.sampler: balanced sets it

    def __len__(self) -> int:
        return len(self.indices)

    def stream(
        self, order: torch.Tensor, batch_size: int, *, device: torch.device, num_workers: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        files = self.indices[order.cpu().numpy()]
        batches = [files[s : s + batch_size].tolist() for s in range(0, len(files), batch_size)]
        for decoded, xb in self.source.batches(batches, device, num_workers):
            yb = self._labels(torch.tensor(decoded, dtype=torch.int64)).to(device, non_blocking=True)
            yield (self.transform(xb) if self.transform is not None else xb), yb

    def _labels(self, files: torch.Tensor) -> torch.Tensor:
        """The run's labels of the folder's files at positions ``files``."""
        labels = self.source.labels[files]
        return labels if self.label_map is None else self.label_map[labels]

    def inputs(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Model input for the samples at ``idx`` (all when None), decoded now."""
        order = torch.arange(len(self)) if idx is None else idx.cpu()
        parts = [xb for xb, _ in self.stream(order, 256, device=torch.device("cpu"), num_workers=0)]
        return torch.cat(parts)


@dataclass
class FolderStream:
    """An image folder that stays on disk: labels, digests and pixel sums from the scan;
    pixels decoded during training. The streaming counterpart of ``ImageDataset``."""

    name: str
    source: str
    classes: list[str]
    y: torch.Tensor  # int64 (N,)
    files: FolderSource
    hashes: np.ndarray
    sums: torch.Tensor
    sqs: torch.Tensor
    spec: ImageSpec
    loading: dict[str, Any] = field(default_factory=dict)
    groups: np.ndarray | None = None  # an image list's data.group_by value per file
    scale: float = 1 / 255
    test_x: None = None
    test_y: None = None
    features: None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def is_tabular(self) -> bool:
        return False

    @property
    def has_official_test(self) -> bool:
        return False

    def sample_hashes(self) -> np.ndarray:
        return self.hashes

    def pixel_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sums, self.sqs

    def take(
        self, idx: dict[str, np.ndarray], transform: Any, label_map: torch.Tensor | None = None
    ) -> dict[str, StreamedImages]:
        """The splits at positions ``idx``; ``label_map`` as in :class:`StreamedImages`."""
        return {name: StreamedImages(self.files, rows, transform, label_map) for name, rows in idx.items()}


# ----------------------------------------------------------------------------- the public scan


def scan_image_folder(
    path: str | os.PathLike[str], on_bad_file: str = "warn"
) -> tuple[list[tuple[Path, int]], list[str], list[tuple[Path, str]]]:
    """Find and verify the images of a folder with one subfolder per class.

    Every file's header is read and every file is decoded (spread over the cores, with a
    progress bar on large folders). Returns ``(good, classes, bad)``: ``(path, label)`` for
    every decodable image, the class names (sorted subfolder names) and ``(path, reason)``
    for every unreadable one. ``on_bad_file="warn"`` warns once naming every bad file and
    skips them; ``"error"`` raises :class:`DataError` naming them.
    """
    plan = plan_folder(path, on_bad_file=on_bad_file)
    _, good, bad = _scan_plan(plan, None, keep=False, on_bad_file=on_bad_file, what="checking images")
    return [(g.path, g.label) for g in good], plan.classes, bad


def _scan_plan(
    plan: FolderPlan, spec: ImageSpec | None, *, keep: bool, on_bad_file: str, what: str, workers: int | None = None
) -> tuple[ScanResult, list[ImageInfo], list[tuple[Path, str]]]:
    """Decode every file the headers let through; the files that decoded, and every bad file
    (header or pixels) reported once, as data.on_bad_file says."""
    result = scan_files([i.path for i in plan.infos], spec, keep=keep, workers=workers, what=what)
    bad = sorted(plan.bad + [(plan.infos[i].path, reason) for i, reason in result.bad])
    good = [plan.infos[i] for i in result.good]
    report_bad_files(plan.root, bad, on_bad_file, [g.label for g in good], plan.class_where)
    return result, good, bad


def _batch_need(batch: TrainingBatch | None, shape: tuple[int, ...], classes: int, size: int) -> int:
    """Bytes of one training batch (0 without a :class:`TrainingBatch`, or when its model cannot
    be built for ``shape``: building the model later names that problem)."""
    if batch is None or size < 1:
        return 0
    try:
        return int(batch.need(tuple(shape), classes, size))
    except Exception:  # noqa: BLE001 - a model that does not fit the shape is refused when it is built
        return 0


def _loading_fixes(plan: FolderPlan, batch: TrainingBatch | None, batch_size: int, decoding: int, budget: int) -> str:
    """``, a smaller data.image_size ([500, 750] fits), train.batch_size: 8, model.global_pool: true``:
    the changes that would let the folder and a training batch fit ``budget``, each on its own."""
    n, classes = len(plan.infos), len(plan.classes)
    c, (h, w) = plan.spec.channels, plan.spec.size
    fixes = []
    for halvings in range(1, 8):  # the largest image size, halving both sides, that fits
        hs, ws = max(1, h >> halvings), max(1, w >> halvings)
        total = n * c * hs * ws + decoding + _batch_need(batch, (c, hs, ws), classes, batch_size)
        if total <= budget:
            fixes.append(f"a smaller data.image_size ([{hs}, {ws}] needs about {format_bytes(total)})")
            break
    pixels = plan.estimate_bytes()
    if batch is not None and batch.batch_size is not None and batch_size > 1:
        size = batch_size // 2
        while size >= 1 and pixels + decoding + _batch_need(batch, plan.spec.input_shape, classes, size) > budget:
            size //= 2
        if size >= 1:
            fixes.append(f"train.batch_size: {size}")
    if batch is not None:
        try:
            fix = batch.model_fix(plan.spec.input_shape, classes, batch_size, budget - pixels - decoding)
        except Exception:  # noqa: BLE001 - a hint only
            fix = None
        if fix:
            fixes.append(fix)
    return "".join(f", {f}" for f in fixes)


def open_folder(
    path: str | os.PathLike[str], *, image_size: tuple[int, int] | None = None, channels: int | None = None,
    resize: str = "auto", on_bad_file: str = "warn", in_memory: bool | str = "auto",
    memory_budget: int | str | None = None, workers: int | None = None,
) -> Any:
    """Plan, scan and load an image folder: an ``ImageDataset`` of uint8 images when they fit
    the memory budget (or ``in_memory=True``), a :class:`FolderStream` otherwise.

    What must fit the budget is the pixels, the decoding buffers (:func:`decoding_bytes`) and,
    inside :func:`counting_training_batch`, one training batch; ``in_memory=True`` beyond it is
    refused before any pixel is decoded, naming what would fit."""
    check_loading(in_memory, memory_budget)
    plan = plan_folder(path, image_size=image_size, channels=channels, resize=resize, on_bad_file=on_bad_file)
    return open_plan(plan, on_bad_file=on_bad_file, in_memory=in_memory, memory_budget=memory_budget, workers=workers)


def check_loading(in_memory: bool | str, memory_budget: int | str | None) -> None:
    """Refuse bad data.in_memory and data.memory_budget values before any file is read."""
    if in_memory not in ("auto", True, False):
        raise ConfigError(f"data.in_memory: expected auto, true or false, got {in_memory!r}.")
    parse_bytes(memory_budget)


def open_plan(
    plan: FolderPlan, *, on_bad_file: str = "warn", in_memory: bool | str = "auto",
    memory_budget: int | str | None = None, workers: int | None = None, name: str = "folder",
) -> Any:
    """Scan and load the planned files (:func:`plan_folder`, or an image list's
    :func:`plan_files`) as :func:`open_folder` describes; an image list's groups go with the
    files that decoded (``groups`` of the result)."""
    check_loading(in_memory, memory_budget)
    budget_given = parse_bytes(memory_budget)
    if plan.note:
        print(plan.note, flush=True)
    pixels = plan.estimate_bytes()
    n_workers = _workers(len(plan.infos), workers)
    decoding = decoding_bytes(plan, n_workers)
    batch = _TRAINING_BATCH.get()
    batch_size = (batch.batch_size or len(plan.infos)) if batch is not None else 0
    batch_bytes = _batch_need(batch, plan.spec.input_shape, len(plan.classes), batch_size)
    need = pixels + decoding + batch_bytes
    available = available_memory()
    budget = budget_given if budget_given is not None else int(BUDGET_SHARE * available)
    spec = plan.spec
    shape = "x".join(str(s) for s in spec.input_shape)
    what = f"{len(plan.infos)} images at {shape} need {format_bytes(pixels)} as uint8"
    largest = max(plan.infos, key=lambda i: i.size[0] * i.size[1]).size
    extra = (
        f" + {format_bytes(decoding)} to decode them ({max(1, n_workers)} process(es); the largest file, "
        f"{largest[1]}x{largest[0]}, at full resolution)"
        + (f" + {format_bytes(batch_bytes)} for a training batch of {batch_size} ({batch.key})" if batch_bytes else "")
        + f" = {format_bytes(need)}"
    )
    limit = (
        f"data.memory_budget {format_bytes(budget)}" if budget_given is not None
        else f"the budget of {format_bytes(budget)}, half the {format_bytes(available)} of memory available"
    )
    if in_memory is True and need > budget:
        fixes = _loading_fixes(plan, batch, batch_size, decoding, budget)
        raise DataError(
            f"data.in_memory: true, but {plan.root}: {what}{extra}, over {limit}. Fix: data.in_memory: auto (streams "
            f"the folder from disk){fixes}, or a larger data.memory_budget."
        )
    stream = in_memory is False or need > budget
    loading = {
        "path": "stream" if stream else "memory",
        "estimate_bytes": pixels,
        "decoding_bytes": decoding,
        "batch_bytes": batch_bytes,
        "budget_bytes": budget,
        "available_bytes": available,
        "forced": in_memory != "auto",
    }
    how = "streaming from disk (data.in_memory: false)" if in_memory is False else (
        f"streaming from disk (over {limit})" if stream else "loading into memory"
    )
    print(f"data: {what}{extra}; {how}.", flush=True)
    result, infos, bad = _scan_plan(
        plan, spec, keep=not stream, on_bad_file=on_bad_file, workers=workers,
        what="checking images" if stream else "loading images",
    )
    labels = np.array([i.label for i in infos], dtype=np.int64)
    source = str(plan.root.resolve())
    loading["skipped_at_scan"] = len(bad)
    groups = None if plan.groups is None else plan.groups[result.good]
    if not stream:
        assert result.x is not None
        ds = ImageDataset(name, result.x, torch.from_numpy(labels), plan.classes, source=source, groups=groups)
        ds.spec, ds.loading = spec, loading
        ds._sums = (result.sums, result.sqs)
        ds._hashes = result.hashes
        return ds
    files = FolderSource(plan.root, [i.path for i in infos], labels, spec)
    return FolderStream(
        name, source, plan.classes, torch.from_numpy(labels), files, result.hashes, result.sums, result.sqs,
        spec, loading, groups=groups,
    )


@DATASETS.register("folder", description="an image folder with one subfolder per class (data.path)")
def _load_folder(
    *, path: str | Path | None = None, image_size: tuple[int, int] | None = None, channels: int | None = None,
    on_bad_file: str = "warn", resize: str = "auto", in_memory: bool | str = "auto",
    memory_budget: int | str | None = None, **_: Any,
) -> Any:
    if path is None:
        raise ConfigError("data.path: the folder dataset needs a path to a folder with one subfolder per class.")
    return open_folder(
        path, image_size=image_size, channels=channels, resize=resize, on_bad_file=on_bad_file,
        in_memory=in_memory, memory_budget=memory_budget,
    )
