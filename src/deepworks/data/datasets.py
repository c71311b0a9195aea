"""Datasets by name: the ``DATASETS`` registry, the built-in image datasets (digits, Fashion-MNIST)
and :func:`load_dataset`, which picks a loader by name or by path.

Every image loader returns an :class:`~deepworks.data.containers.ImageDataset` of uint8 images
(N, C, H, W) with the step ``scale`` that maps them to [0, 1] (not normalised: normalisation uses
training-split statistics, which only exist after splitting, and happens a batch at a time on the
device) and int64 labels. Built-in data is read from local files first; the network is the last
resort.

The other loaders register themselves beside the code they call, so this module imports none of
them (and they import it freely): ``folder`` in :mod:`deepworks.data.folders` (an image folder, or
a :class:`~deepworks.data.folders.FolderStream` read from disk when it is over the memory budget),
``image-list`` in :mod:`deepworks.data.imagelist` (a table of image files and labels, loaded as a
folder is), ``csv`` in :mod:`deepworks.data.tabular` (float32 feature vectors (N, F)), ``rotten-tomatoes`` in
:mod:`deepworks.data.text` (raw texts and labels, a :class:`~deepworks.data.text.TextTable`; the
pipeline tokenizes them after splitting) and ``co2`` in :mod:`deepworks.data.series`. Importing
:mod:`deepworks.data` imports them all, so every name is registered before any lookup.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.config import TEXT_DATASETS, is_table_path
from deepworks.data.containers import ImageDataset
from deepworks.data.images import ON_BAD_FILE, _check_channels, _check_size, resize_pixels, to_channels
from deepworks.errors import ConfigError, DataError
from deepworks.registry import Registry

__all__ = [
    "DATASETS",
    "ImageDataset",
    "is_text_dataset",
    "load_dataset",
    "list_datasets",
    "read_idx",
    "data_cache_dir",
    "as_image_size",
    "FASHION_MNIST_CLASSES",
]

DATASETS: Registry = Registry("dataset")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# where `apt-get install dataset-fashion-mnist` puts the files (a module attribute so tests can move it)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# What `deepworks datasets` shows without loading anything. The folder loader is not listed:
# its classes and shapes are whatever the folder holds.
_BUILTIN_INFO: dict[str, dict[str, Any]] = {
    "digits": {"classes": 10, "input_shape": (1, 8, 8), "size": 1797, "official_test": False},
    "fashion-mnist": {
        "classes": 10, "input_shape": (1, 28, 28), "size": 70000, "official_test": True,
        "train_size": 60000, "test_size": 10000,
    },
    # text: the input shape is (data.max_length,) token ids, known once the config is
    "rotten-tomatoes": {"classes": 2, "input": "text", "size": 12808, "official_test": False},
    "co2": {"task": "forecasting", "size": 2284, "time_step": "weekly", "official_test": False},
}


def is_text_dataset(name: str | None) -> bool:
    """Whether the built-in dataset ``name`` holds texts (token ids) rather than images
    (:data:`deepworks.config.TEXT_DATASETS`, which chooses the kind of data)."""
    return name in TEXT_DATASETS


# ----------------------------------------------------------------------------- common


def as_image_size(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``image_size`` as (H, W): an int means a square."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size: Any = (image_size, image_size)
    else:
        size = tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size
    try:
        _check_size(size)
    except ConfigError:
        raise ConfigError(
            f"data.image_size: expected a positive integer or [height, width], got {image_size!r}."
        ) from None
    return size


def _conform(
    x: torch.Tensor, scale: float, size: tuple[int, int] | None, channels: int | None
) -> tuple[torch.Tensor, float]:
    """Resize / change the channels of a built-in dataset's uint8 images when the config asks
    for it; images stored at another step than 1/255 move to 1/255 first when resized."""
    if size is not None and tuple(x.shape[-2:]) != size:
        if scale != 1 / 255:
            x = (x.to(torch.float32) * (scale * 255.0)).round_().clamp_(0, 255).to(torch.uint8)
            scale = 1 / 255
        x = resize_pixels(x, size)  # (N, C, H, W) -> (N, C, *size), antialiased bilinear
    if channels is not None and channels != x.shape[1]:
        x = to_channels(x, channels)
    return x, scale


def data_cache_dir() -> Path:
    """Where downloaded datasets go: $DEEPWORKS_DATA, else ~/.cache/deepworks/datasets."""
    return Path(os.environ.get("DEEPWORKS_DATA") or "~/.cache/deepworks/datasets").expanduser()


# ----------------------------------------------------------------------------- digits


@DATASETS.register("digits", description="8x8 handwritten digits from scikit-learn (1,797 images, no download)")
def _load_digits(*, image_size: tuple[int, int] | None = None, channels: int | None = None, **_: Any) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # (N, 64) with values 0..16 -> uint8 (N, 1, 8, 8), step 1/16
    x = torch.from_numpy(bunch.data.astype(np.uint8)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    x, scale = _conform(x, 1 / 16, image_size, channels)
    return ImageDataset(
        "digits", x, y, [str(i) for i in range(10)], source="sklearn.datasets.load_digits", scale=scale,
    )


# ----------------------------------------------------------------------------- idx files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an idx file (MNIST format, optionally gzipped) into a numpy array.

    The header is two zero bytes, a type code, the number of dimensions and one big-endian
    uint32 per dimension; the data must be exactly as long as the dimensions say.
    """
    path = Path(path)
    fix = "Delete it so it is fetched again, or reinstall the package it came from."
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the idx file ({exc}). {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'none'}). {fix}")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DataError(f"{path}: expected an idx file with {ndim} dimension(s), the header says {dims_n}. {fix}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes). {fix}")
    dims = struct.unpack(f">{dims_n}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupt idx file: dimensions {dims} need {expected} bytes of data, "
            f"found {len(raw) - header}. {fix}"
        )
    # one frombuffer for the whole file: no per-sample Python
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


# ----------------------------------------------------------------------------- fashion-mnist


def _idx_files_in(folder: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in ``folder`` (extracted or .gz), or None if any is missing."""
    found: dict[str, Path] = {}
    for key, base in _FASHION_FILES.items():
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _fashion_from_idx(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {k: read_idx(p, ndim=3 if k.endswith("x") else 1) for k, p in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataError(
                f"{files[f'{split}_x']}: expected uint8 28x28 images, got {images.dtype} {images.shape[1:]}."
            )
        if len(images) != len(labels):
            raise DataError(
                f"{files[f'{split}_x']} has {len(images)} images but {files[f'{split}_y']} has {len(labels)} "
                "labels; the files do not belong together."
            )
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{files[f'{split}_y']}: label {int(labels.max())} is out of range 0..9.")
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _fashion_download(target: Path, looked: list[Path]) -> tuple[np.ndarray, ...]:
    """Fetch through torchvision into ``target``/FashionMNIST/raw; it skips files already there."""
    try:
        from torchvision.datasets import FashionMNIST

        train = FashionMNIST(str(target), train=True, download=True)
        test = FashionMNIST(str(target), train=False, download=True)
    except Exception as exc:  # offline: URLError / RuntimeError / OSError, depending on where it broke
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        places = ", ".join(str(p) for p in looked)
        raise DataError(
            f"fashion-mnist: no local copy found (looked in {places}) and the download through torchvision "
            f"into {target} failed ({reason}). Fix: `apt-get install dataset-fashion-mnist` (installs the files "
            f"in {DEBIAN_FASHION_MNIST}), or set data.root to a folder holding train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (.gz or extracted)."
        ) from exc
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def _fashion_places(root: Path | None = None) -> list[Path]:
    """Where Fashion-MNIST's files are looked for, in order (data.root first)."""
    cache = data_cache_dir()
    places = [root / "FashionMNIST" / "raw", root] if root is not None else []
    return places + [DEBIAN_FASHION_MNIST, cache / "FashionMNIST" / "raw", cache]


def fashion_mnist_on_disk(root: str | Path | None = None) -> bool:
    """Whether Fashion-MNIST's files are already on this machine (so loading it downloads nothing)."""
    return any(_idx_files_in(folder) is not None for folder in _fashion_places(Path(root).expanduser() if root else None))


@DATASETS.register(
    "fashion-mnist",
    description="28x28 grayscale clothing images, 60,000 train + 10,000 official test (Zalando)",
)
def _load_fashion_mnist(
    *, root: str | Path | None = None, image_size: tuple[int, int] | None = None, channels: int | None = None,
    **_: Any,
) -> ImageDataset:
    cache = data_cache_dir()
    if root is not None:
        root = Path(root).expanduser()
    candidates = _fashion_places(root)
    for folder in candidates:
        files = _idx_files_in(folder)
        if files is not None:
            train_x, train_y, test_x, test_y = _fashion_from_idx(files)
            source = str(folder)
            break
    else:
        target = root if root is not None else cache
        train_x, train_y, test_x, test_y = _fashion_download(target, candidates)
        source = f"torchvision download into {target / 'FashionMNIST' / 'raw'}"

    def images(a: np.ndarray) -> torch.Tensor:
        # uint8 (N, 28, 28) -> uint8 (N, 1, 28, 28), kept as stored
        return _conform(torch.from_numpy(a.copy()).unsqueeze(1), 1 / 255, image_size, channels)[0]  # a copy: writable

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return ImageDataset(
        "fashion-mnist", images(train_x), labels(train_y), list(FASHION_MNIST_CLASSES),
        test_x=images(test_x), test_y=labels(test_y), source=source,
    )


# ----------------------------------------------------------------------------- co2
# The co2 loader itself is registered by deepworks.data.series; finding its file needs nothing but the disk.

_CO2_INSTALL = "pip install --no-deps statsmodels"


def co2_file(root: str | Path | None = None) -> Path:
    """The weekly Mauna Loa CO2 file: ``root`` (the file, or a folder holding ``co2.csv``), else
    the copy in the installed ``statsmodels`` package (found without importing it)."""
    import importlib.util

    looked: list[str] = []
    if root is not None:
        root = Path(root).expanduser()
        candidate = root / "co2.csv" if root.is_dir() else root
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    spec = importlib.util.find_spec("statsmodels")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "datasets" / "co2" / "co2.csv"
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    where = f" (looked in {', '.join(looked)})" if looked else " (statsmodels is not installed)"
    raise DataError(
        f"co2: the data file was not found{where}. Fix: `{_CO2_INSTALL}` (its data files hold the series), or set "
        "data.root to a folder holding co2.csv (columns date as YYYYMMDD, co2 in ppm)."
    )


# ----------------------------------------------------------------------------- entry points


def load_dataset(
    name: str | None = None,
    *,
    path: str | Path | None = None,
    root: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    on_bad_file: str = "warn",
    target: str | None = None,
    features: list[str] | None = None,
    resize: str = "auto",
    in_memory: bool | str = "auto",
    memory_budget: int | str | None = None,
    image: str | None = None,
    group_by: str | None = None,
    fingerprint: str | None = None,
) -> Any:
    """Load a dataset by name (``deepworks datasets`` lists them), or an image folder or CSV file given ``path``.

    A ``path`` ending in ``.csv`` (or ``name="csv"``) is tabular data: ``target`` names its
    label column and ``features`` optionally picks the feature columns. Image loaders
    ignore ``target`` and ``features``; CSV files ignore ``image_size``/``channels``/``on_bad_file``.

    An image folder is loaded into memory as uint8 when it fits ``memory_budget`` (bytes or
    a size such as ``"2GB"``; default half the available memory), and otherwise returned as a
    :class:`~deepworks.data.folders.FolderStream` read from disk during training;
    ``in_memory`` True or False forces the choice. ``resize`` (auto, squash or crop) says how
    images of another shape reach ``image_size``.

    With ``image`` (the column of image files), ``path`` is an image list
    (:mod:`deepworks.data.imagelist`): a table of image files and their labels (``target``),
    loaded as an image folder is; ``group_by`` names a column whose rows stay in one split.
    """
    if image is not None:
        if name not in (None, "image-list"):
            raise ConfigError(f"data.image names a column of image files in data.path, but data.dataset is {name!r}: "
                              "remove one of the two.")
        name = "image-list"
    if name is None:
        if path is None:
            raise ConfigError(
                "data: name a built-in dataset (data.dataset: digits), an image folder (data.path: path/to/folder) "
                "or a CSV file (data.path: file.csv with data.target: label_column)."
            )
        name = "csv" if is_table_path(path) else "folder"
    factory = DATASETS.get(name, where="data.dataset")
    if path is not None and name not in ("folder", "csv", "image-list"):
        raise ConfigError(
            f"data.path ({str(path)!r}) is for an image folder or a CSV file, but data.dataset is {name!r}: "
            "remove one of the two."
        )
    if on_bad_file not in ON_BAD_FILE:
        raise ConfigError(
            f"data.on_bad_file: expected 'warn' (skip unreadable files) or 'error' (stop), got {on_bad_file!r}."
        )
    _check_channels(channels)
    return factory(
        path=path, root=root, image_size=as_image_size(image_size), channels=channels, on_bad_file=on_bad_file,
        target=target, features=features, resize=resize, in_memory=in_memory, memory_budget=memory_budget,
        **({"image": image, "group_by": group_by} if image is not None else {}),
        **({"fingerprint": fingerprint} if fingerprint is not None else {}),
    )


def load_from_config(data_config: Any) -> Any:
    """The dataset a config's ``data`` section names (built-in, image folder, image list or CSV)."""
    d = data_config
    return load_dataset(
        d.dataset, path=d.path, root=d.root, image_size=d.image_size, channels=d.channels, on_bad_file=d.on_bad_file,
        target=d.target, features=d.features, resize=d.resize, in_memory=d.in_memory, memory_budget=d.memory_budget,
        image=d.image, group_by=d.group_by, fingerprint=d.fingerprint,
    )


def list_datasets() -> list[dict[str, Any]]:
    """One row per built-in dataset (name, description, classes, input_shape, size, official_test); loads nothing."""
    rows = []
    for name in DATASETS.names():
        info = _BUILTIN_INFO.get(name)
        if info is None:  # the folder and csv loaders: not datasets by themselves
            continue
        rows.append({"name": name, "description": DATASETS.entry(name).description, **info})
    return rows
