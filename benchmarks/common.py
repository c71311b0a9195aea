"""What the benchmarks share: the data files, the split, the reference CNN and the clocks.

Every framework reads the same idx files (the Debian package's .gz files, extracted once
into a cache root laid out as torchvision expects: ``<root>/FashionMNIST/raw/``), uses the
same split sizes (85% train / 15% validation of the official training set: 51,000 / 9,000)
and the same model, built here by hand for PyTorch and for Keras.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import importlib.metadata as md
import json
import math
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- data files

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEFAULT_DATA_ROOT = Path(tempfile.gettempdir()) / "deepworks-bench-data"

# Fashion-MNIST's usual per-channel statistics (of the 60k training images, pixels in [0, 1])
MEAN, STD = 0.2860, 0.3530
VAL_FRACTION = 0.15  # deepworks' default data.val_fraction
SEED = 0


def prepare_data_root(cache: Path = DEFAULT_DATA_ROOT, subset: int | None = None, source: Path = DEBIAN_FASHION_MNIST) -> Path:
    """A root with ``FashionMNIST/raw/<extracted idx files>``; returns the root.

    With ``subset`` the training files hold only the first ``subset`` images (the test files
    stay whole), so every framework - deepworks included, through ``data.root`` - sees the
    same smaller training set.
    """
    full = cache / "full"
    raw = full / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw / name
        if not target.is_file():
            gz = source / f"{name}.gz"
            if not gz.is_file():
                sys.exit(f"{gz}: missing. Install the Debian package dataset-fashion-mnist (or pass --data-source).")
            tmp = target.with_suffix(".part")
            with gzip.open(gz, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            tmp.replace(target)
    if not subset:
        return full
    root = cache / f"subset-{subset}"
    sub = root / "FashionMNIST" / "raw"
    sub.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = sub / name
        if target.is_file():
            continue
        if name.startswith("train"):
            _truncate_idx(raw / name, target, subset)
        else:
            shutil.copyfile(raw / name, target)
    return root


def _truncate_idx(src: Path, dst: Path, n: int) -> None:
    """Copy the first ``n`` records of an (uint8) idx file."""
    raw = src.read_bytes()
    ndim = raw[3]
    dims = list(struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim]))
    if n > dims[0]:
        sys.exit(f"--subset {n}: the training set has only {dims[0]} images.")
    record = math.prod(dims[1:])
    dims[0] = n
    header = raw[:4] + struct.pack(f">{ndim}I", *dims)
    body_start = 4 + 4 * ndim
    tmp = dst.with_suffix(".part")
    tmp.write_bytes(header + raw[body_start : body_start + n * record])
    tmp.replace(dst)


def split_sizes(n: int) -> tuple[int, int]:
    """(train, val) sizes as deepworks computes them: val = ceil(0.15 n) -> 51,000 / 9,000 of 60,000."""
    val = math.ceil(VAL_FRACTION * n - 1e-9)
    return n - val, val


def split_indices(n: int, seed: int = SEED) -> tuple[list[int], list[int]]:
    """Seeded random train/val indices (``random_split``), shared by the PyTorch, Lightning and Keras runs."""
    import torch
    from torch.utils.data import random_split

    train, val = random_split(range(n), split_sizes(n), generator=torch.Generator().manual_seed(seed))
    return list(train.indices), list(val.indices)


def _normalised_arrays(train: bool, root: Path):
    """The idx files read once (uint8) and normalised once with MEAN/STD: float32 (N, 28, 28), int64 labels."""
    import numpy as np
    from torchvision import datasets

    ds = datasets.FashionMNIST(str(root), train=train, download=False)  # parses the idx files into uint8 tensors
    x = (ds.data.numpy().astype(np.float32) / 255.0 - MEAN) / STD
    return x, ds.targets.numpy().astype(np.int64)


def torch_tensors(root: Path, seed: int = SEED):
    """Normalised float32 NCHW tensors, in memory: ((xtr, ytr), (xva, yva), (xte, yte)).

    The same split indices as Keras' arrays (``split_indices``); what a competent user holds for
    a data set that fits in memory."""
    import numpy as np
    import torch

    x, y = _normalised_arrays(True, root)
    tr, va = (np.asarray(i) for i in split_indices(len(x), seed))
    xte, yte = _normalised_arrays(False, root)
    as_t = lambda a, b: (torch.from_numpy(np.ascontiguousarray(a[:, None])), torch.from_numpy(b))  # noqa: E731
    return as_t(x[tr], y[tr]), as_t(x[va], y[va]), as_t(xte, yte)


def torch_loaders(root: Path, batch_size: int, seed: int = SEED):
    """The idiomatic loaders for in-memory data: ``DataLoader(TensorDataset(...), num_workers=0)``
    over ``torch_tensors`` - no per-sample decode, no worker processes. (train shuffled, val, test)."""
    from torch.utils.data import DataLoader, TensorDataset

    train, val, test = (TensorDataset(*t) for t in torch_tensors(root, seed))
    kw = dict(batch_size=batch_size, num_workers=0)
    return DataLoader(train, shuffle=True, **kw), DataLoader(val, shuffle=False, **kw), DataLoader(test, shuffle=False, **kw)


def numpy_arrays(root: Path, seed: int = SEED):
    """Normalised channels-last float32 arrays for Keras: ((xtr, ytr), (xva, yva), (xte, yte))."""
    import numpy as np

    x, y = _normalised_arrays(True, root)
    tr, va = (np.asarray(i) for i in split_indices(len(x), seed))
    xte, yte = _normalised_arrays(False, root)
    return (x[tr, ..., None], y[tr]), (x[va, ..., None], y[va]), (xte[..., None], yte)  # (N, 28, 28, 1)


# --------------------------------------------------------------------------- the reference CNN

# benchmarks/configs/reference-cnn.yaml, spelled out
FILTERS, DROPOUT, HIDDEN, HEAD_DROPOUT, NUM_CLASSES = (32, 64), 0.25, 128, 0.5, 10
LR, WEIGHT_DECAY, BATCH_SIZE = 1e-3, 0.01, 128


def reference_cnn_torch():
    """Two blocks of conv3x3 'same' (no bias: batch norm follows) -> BN -> ReLU -> MaxPool2 -> Dropout,
    then Flatten -> Linear(64*7*7, 128) -> ReLU -> Dropout -> Linear(128, 10)."""
    return cnn_torch(FILTERS, DROPOUT, HIDDEN, HEAD_DROPOUT)


def cnn_torch(filters, dropout: float, hidden: int, head_dropout: float, num_classes: int = NUM_CLASSES, size: int = 28):
    """deepworks' ``cnn`` (1 conv per block, max-pool 2, batch norm, ReLU, one hidden dense layer)
    written out in plain PyTorch, for a grayscale ``size`` x ``size`` input."""
    from torch import nn

    layers: list = []
    channels = 1
    for f in filters:
        layers += [
            nn.Conv2d(channels, f, 3, padding=1, bias=False),
            nn.BatchNorm2d(f),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
        ]
        channels = f
        size //= 2
    layers += [
        nn.Flatten(),
        nn.Linear(channels * size * size, hidden),
        nn.ReLU(),
        nn.Dropout(head_dropout),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


def reference_cnn_keras():
    """The same network in Keras 3 (channels-last). Batch-norm momentum/epsilon set to torch's
    (Keras' defaults are 0.99 / 1e-3) so that the two are the same model, not just the same shapes."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1))])
    for f in FILTERS:
        model.add(layers.Conv2D(f, 3, padding="same", use_bias=False))
        model.add(layers.BatchNormalization(momentum=0.9, epsilon=1e-5))
        model.add(layers.ReLU())
        model.add(layers.MaxPooling2D(2))
        model.add(layers.Dropout(DROPOUT))
    model.add(layers.Flatten())
    model.add(layers.Dense(HIDDEN, activation="relu"))
    model.add(layers.Dropout(HEAD_DROPOUT))
    model.add(layers.Dense(NUM_CLASSES))
    return model


def torch_evaluate(model, loader) -> tuple[float, float]:
    """(mean loss, accuracy) of a torch model over a DataLoader, in eval mode; leaves it in eval mode."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return loss_sum / n, correct / n


def count_params(model) -> int:
    """Trainable parameters (torch module or Keras model); BN running statistics are not counted."""
    if hasattr(model, "trainable_weights"):
        return int(sum(math.prod(w.shape) for w in model.trainable_weights))
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def check_same_as_deepworks(model, config: Path, builder=None) -> dict[str, Any]:
    """Assert that ``model`` (hand-built torch) is deepworks' model for ``config``: same parameter
    shapes in the same order, and - with deepworks' weights copied in - the same outputs."""
    import torch

    import deepworks

    cfg = deepworks.load_config(config)
    ref = deepworks.create_model(cfg.model.name, input_shape=(1, 28, 28), num_classes=NUM_CLASSES, **cfg.model.params)
    shapes = lambda m: [tuple(t.shape) for t in m.state_dict().values()]  # noqa: E731
    assert shapes(ref) == shapes(model), f"architectures differ:\n{ref}\nvs\n{model}"
    n_ref, n = count_params(ref), count_params(model)
    assert n_ref == n, f"parameter counts differ: deepworks {n_ref}, hand-built {n}"
    copy = (builder or reference_cnn_torch)()
    copy.load_state_dict(dict(zip(copy.state_dict().keys(), ref.state_dict().values())))
    ref.eval(), copy.eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ref(x), copy(x), atol=1e-5), "same weights, different outputs"
    return {"deepworks_params": n_ref, "params": n}


def check_keras_params(model, config: Path) -> dict[str, Any]:
    """Assert that the Keras model has deepworks' parameters: the same sizes, tensor by tensor, in order
    (layouts differ - Keras kernels are (kh, kw, in, out) - so sizes, not shapes, are compared)."""
    import deepworks

    cfg = deepworks.load_config(config)
    ref = deepworks.create_model(cfg.model.name, input_shape=(1, 28, 28), num_classes=NUM_CLASSES, **cfg.model.params)
    ref_sizes = [p.numel() for p in ref.parameters()]
    sizes = [int(math.prod(w.shape)) for w in model.trainable_weights]
    assert ref_sizes == sizes, f"parameter tensors differ: deepworks {ref_sizes}, keras {sizes}"
    n_ref, n = count_params(ref), count_params(model)
    assert n_ref == n, f"parameter counts differ: deepworks {n_ref}, keras {n}"
    return {"deepworks_params": n_ref, "params": n}


# --------------------------------------------------------------------------- clocks and records


class EpochClock:
    """Wall time of each epoch: ``start()`` when it begins, ``stop()`` when its validation is done."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        assert self._t0 is not None, "stop() without start()"
        self.seconds.append(time.perf_counter() - self._t0)
        self._t0 = None
        return self.seconds[-1]


def epoch_stats(seconds: list[float]) -> dict[str, Any]:
    rest = seconds[1:]
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "s_per_epoch": round(sum(seconds) / len(seconds), 3),
        "first_epoch_s": round(seconds[0], 3),
        "s_per_epoch_after_first": round(sum(rest) / len(rest), 3) if rest else None,
    }


def package_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in ("deepworks", "torch", "torchvision", "numpy", "lightning", "keras")},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def warn_if_busy(threshold: float = 0.5) -> None:
    load = os.getloadavg()[0]
    if load > threshold:
        print(f"warning: the 1-minute load average is {load:.2f}; timings need an otherwise idle machine.", file=sys.stderr)


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
