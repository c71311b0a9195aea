"""Image files: read one into a tensor, and scan a folder of class subfolders.

Every file of a folder is decoded once by :func:`scan_image_folder` before any training
starts, so a corrupt file stops (or is skipped) in the first second, not in epoch 7.
:func:`read_image` is also what ``predict`` uses, so training and prediction see pixels
converted the same way.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from deepworks.errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "ON_BAD_FILE", "read_image", "scan_image_folder", "is_grayscale_mode"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ON_BAD_FILE = ("warn", "error")

# single-channel PIL modes; everything else (RGB, RGBA, P, CMYK, YCbCr, ...) counts as colour
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# what PIL raises for a file that is not an image, is truncated or is otherwise broken
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def is_grayscale_mode(mode: str) -> bool:
    """True for PIL modes with one colour channel (``L``, ``LA``, 16-bit, ...)."""
    return mode in _GRAY_MODES


def _decode(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (raises DataError), upright per its EXIF orientation."""
    if not path.exists():
        raise DataError(f"{path}: no such image file. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an image file (png, jpg, bmp, gif, webp or tif).")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes). Re-export the image or remove the file.")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            upright = _upright(img)
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot be decoded as an image ({reason}). Re-export it as PNG or JPEG, or remove the file."
        ) from None
    return upright


def _upright(img: Image.Image) -> Image.Image:
    """A copy turned upright per the EXIF orientation phone photos carry; unchanged if that tag is broken."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a decodable image unreadable
        upright = None
    return img.copy() if upright is None or upright is img else upright


def _flatten_alpha(img: Image.Image, base: str) -> Image.Image:
    """Composite a transparent image over white, as viewers show it, instead of keeping hidden colours."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert(base)


def _to_array(img: Image.Image, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """PIL image -> float32 array (H, W, C) in [0, 1] with the requested channels and size."""
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        # 16/32-bit grayscale: scale to [0, 1] in float ("F") so no precision is lost before resizing
        arr = np.asarray(img).astype(np.float32)
        if mode == "F":
            scale = 255.0 if arr.size and float(arr.max()) > 1.0 else 1.0
        else:
            scale = 65535.0 if mode.startswith("I;16") or (arr.size and float(arr.max()) > 255.0) else 255.0
        img = Image.fromarray(np.clip(arr / scale, 0.0, 1.0).astype(np.float32), mode="F")
        gray, depth = True, 1.0
    else:
        has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
        gray = is_grayscale_mode(mode)
        if has_alpha:
            img = _flatten_alpha(img, "L" if gray else "RGB")
        else:
            img = img.convert("L" if gray else "RGB")
        depth = 255.0
    want = channels if channels is not None else (1 if gray else 3)
    if want == 1 and img.mode == "RGB":
        img = img.convert("L")  # ITU-R 601-2 luma, as PIL does
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL takes (W, H)
    arr = np.asarray(img, dtype=np.float32) / depth
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    if want == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)  # grayscale -> (H, W, 3)
    return np.clip(arr, 0.0, 1.0)


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"data.channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}.")


def _check_size(size: tuple[int, int] | None) -> None:
    if size is None:
        return
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    )
    if not ok:
        raise ConfigError(f"image size: expected (height, width) as two positive integers, got {size!r}.")


def read_image(
    path: str | os.PathLike[str], *, channels: int | None = None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Read an image file as a float32 tensor (C, H, W) in [0, 1].

    ``channels`` 1 gives grayscale, 3 RGB, None keeps grayscale images at 1 channel and
    turns everything else into RGB. Transparent images are composited over white.
    ``size=(H, W)`` resizes with PIL's bilinear filter.
    """
    _check_channels(channels)
    _check_size(size)
    img = _decode(Path(path))
    arr = _to_array(img, channels, tuple(size) if size is not None else None)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (H, W, C) -> (C, H, W)


@dataclass(frozen=True)
class ImageInfo:
    """What the scan learnt about a good file, so the loader need not open it twice to plan."""

    path: Path
    label: int
    mode: str
    size: tuple[int, int]  # (H, W) after EXIF orientation


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _class_files(folder: Path) -> list[Path]:
    """Image files under a class folder (nested folders included, hidden ones skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def scan_folder_info(
    path: str | os.PathLike[str], on_bad_file: str = "warn"
) -> tuple[list[ImageInfo], list[str], list[tuple[Path, str]]]:
    """Like :func:`scan_image_folder`, but returns each good file's mode and size too."""
    if on_bad_file not in ON_BAD_FILE:
        raise ConfigError(
            f"data.on_bad_file: expected 'warn' (skip unreadable files) or 'error' (stop), got {on_bad_file!r}."
        )
    root = Path(path)
    layout = f"one subfolder of images per class, e.g. {root / 'cat' / '001.png'} and {root / 'dog' / '001.png'}"
    if not root.exists():
        raise DataError(f"{root}: image folder not found. data.path must be a folder with {layout}.")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, but data.path must be a folder with {layout}.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not class_dirs:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        extra = f" It has {len(loose)} image file(s) directly inside; move them into class subfolders." if loose else ""
        raise DataError(f"{root}: has no class subfolders; expected {layout}.{extra}")
    if len(class_dirs) < 2:
        raise DataError(
            f"{root}: found 1 class folder ({class_dirs[0].name}); a classifier needs at least 2. "
            f"Expected {layout}."
        )
    classes = [d.name for d in class_dirs]
    files: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_dirs):
        found = _class_files(folder)
        if not found:
            exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise DataError(
                f"{folder}: class folder {folder.name!r} has no image files (looked for {exts}). "
                "Add images to it or remove the folder."
            )
        files += [(f, label) for f in found]

    good: list[ImageInfo] = []
    bad: list[tuple[Path, str]] = []
    for file, label in files:
        try:
            img = _decode(file)
        except DataError as exc:
            # the message starts with the path; keep only the reason
            bad.append((file, str(exc).removeprefix(f"{file}: ")))
            continue
        good.append(ImageInfo(file, label, img.mode, (img.height, img.width)))
        img.close()

    if bad:
        listing = "; ".join(f"{p} ({reason.rstrip('.')})" for p, reason in bad)
        if on_bad_file == "error":
            raise DataError(
                f"{root}: {len(bad)} image file(s) cannot be read: {listing}. "
                "Remove or fix them, or set data.on_bad_file: warn to skip them."
            )
        warnings.warn(
            f"{root}: skipped {len(bad)} unreadable image file(s): {listing}. "
            "Remove or fix them (data.on_bad_file: error stops on them instead).",
            stacklevel=3,
        )
        counts = np.bincount([g.label for g in good], minlength=len(classes))
        for label, n in enumerate(counts):
            if n == 0:
                raise DataError(
                    f"{class_dirs[label]}: class folder {classes[label]!r} has no readable images left after "
                    "skipping the unreadable ones above. Add readable images or remove the folder."
                )
    return good, classes, bad


def scan_image_folder(
    path: str | os.PathLike[str], on_bad_file: str = "warn"
) -> tuple[list[tuple[Path, int]], list[str], list[tuple[Path, str]]]:
    """Find and verify the images of a folder with one subfolder per class.

    Returns ``(good, classes, bad)``: ``(path, label)`` for every decodable image, the
    class names (sorted subfolder names) and ``(path, reason)`` for every unreadable one.
    ``on_bad_file="warn"`` warns once naming every bad file and skips them; ``"error"``
    raises :class:`DataError` naming them.
    """
    infos, classes, bad = scan_folder_info(path, on_bad_file)
    return [(i.path, i.label) for i in infos], classes, bad
