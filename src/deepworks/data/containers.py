"""The containers every kind of data is loaded into, in a module that imports no other loader.

:class:`ImageDataset` holds images (uint8 (N, C, H, W)) or feature vectors (float32 (N, F)) with
their labels; the built-in datasets, image folders and CSV files all return one. It lives
apart from :mod:`deepworks.data.datasets` (the registry of loaders) so that every loader can
import it at the top of its file: the registry and the loaders no longer import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepworks.data.images import ImageSpec
from deepworks.data.leakage import sample_hashes
from deepworks.errors import DataError

__all__ = ["ImageDataset", "pixel_sums"]


@dataclass
class ImageDataset:
    """Images (or feature vectors) and labels as tensors, plus the source's official test split when it has one.

    ``x`` is uint8 (N, C, H, W) for images, ``x * scale`` in [0, 1] (``scale`` 1/255 for
    8-bit images), or float32 (N, F) for tabular features; ``features`` names the F columns
    of tabular data (None for images). ``spec`` says how an image file becomes one of these
    samples (folders; predict applies it again) and ``loading`` how the data was loaded.
    ``groups`` (image lists with ``data.group_by``) keeps samples that share a value in one split.
    """

    name: str
    x: torch.Tensor  # uint8 (N, C, H, W) images, or float32 (N, F) features
    y: torch.Tensor  # int64 (N,) in 0..len(classes)-1
    classes: list[str]
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    source: str = ""
    features: list[str] | None = None
    scale: float = 1 / 255
    spec: ImageSpec | None = None
    loading: dict[str, Any] = field(default_factory=dict)
    groups: np.ndarray | None = None  # one data.group_by value per sample of x (an image list's column)

    def __post_init__(self) -> None:
        # catch a malformed dataset here, where its name is known, not as a shape error in training
        _check_xy(self.name, "x", self.x, self.y, len(self.classes))
        if (self.test_x is None) != (self.test_y is None):
            raise DataError(f"dataset {self.name!r}: test_x and test_y must be given together.")
        if self.test_x is not None and self.test_y is not None:
            _check_xy(self.name, "test_x", self.test_x, self.test_y, len(self.classes))
            if tuple(self.test_x.shape[1:]) != tuple(self.x.shape[1:]):
                raise DataError(
                    f"dataset {self.name!r}: test samples have shape {tuple(self.test_x.shape[1:])} but training "
                    f"samples {tuple(self.x.shape[1:])}; they must match."
                )
        if self.features is not None and (self.x.ndim != 2 or len(self.features) != self.x.shape[1]):
            raise DataError(
                f"dataset {self.name!r}: {len(self.features)} feature name(s) for samples shaped "
                f"{tuple(self.x.shape[1:])}; give one name per feature of (N, F) data."
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, what a model is built for: (C, H, W) of an image or (F,) of a feature vector."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def is_tabular(self) -> bool:
        """True for feature vectors (N, F), False for images (N, C, H, W)."""
        return self.x.ndim == 2

    @property
    def has_official_test(self) -> bool:
        return self.test_x is not None

    _sums: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _hashes: np.ndarray | None = field(default=None, repr=False)

    def pixel_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image and channel, the exact int64 sums of stored pixel values and of their squares."""
        if self._sums is None:
            self._sums = pixel_sums(self.x)  # the module's function, not this method
        return self._sums

    def sample_hashes(self) -> np.ndarray:
        """One digest per sample of ``x`` (see :func:`~deepworks.data.leakage.sample_hashes`)."""
        if self._hashes is None:
            self._hashes = sample_hashes(self.x)  # leakage's function, not this method
        return self._hashes


def _check_xy(name: str, what: str, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    if not ((x.ndim == 4 and x.dtype == torch.uint8) or (x.ndim == 2 and x.dtype.is_floating_point)):
        raise DataError(
            f"dataset {name!r}: {what} must be uint8 images (N, C, H, W) or float features (N, F), "
            f"got {x.dtype} {tuple(x.shape)}. Fix: store 8-bit pixels, e.g. (x * 255).round().to(torch.uint8)."
        )
    if y.ndim != 1 or y.dtype != torch.int64:
        raise DataError(f"dataset {name!r}: labels must be int64 (N,), got {y.dtype} {tuple(y.shape)}.")
    if len(x) != len(y):
        kind = "images" if x.ndim == 4 else "samples"
        raise DataError(f"dataset {name!r}: {what} has {len(x)} {kind} but {len(y)} labels; they must match.")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"dataset {name!r}: labels must lie in 0..{num_classes - 1} (one per class), "
            f"got {int(y.min())}..{int(y.max())}."
        )


def pixel_sums(x: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, the exact sums of pixel values and of their squares (int64 (N, C))
    of uint8 images (N, C, H, W), in chunks so no int64 copy of the whole set is made."""
    sums, sqs = [], []
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk].to(torch.int64)
        sums.append(part.sum(dim=(2, 3)))
        sqs.append(part.mul_(part).sum(dim=(2, 3)))
    if not sums:
        return torch.zeros((0, x.shape[1]), dtype=torch.int64), torch.zeros((0, x.shape[1]), dtype=torch.int64)
    return torch.cat(sums), torch.cat(sqs)
