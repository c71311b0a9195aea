"""Image files: decode one to uint8 pixels, and walk and probe a folder of class subfolders.

:func:`load_pixels` turns a file into the uint8 (C, H, W) pixels a model is trained on
(decoded, upright, channels converted, resized per an :class:`ImageSpec`); training from
memory, training streamed from disk, ``predict`` and ``evaluate`` all go through it, so they
see the same pixels. :mod:`deepworks.data.folders` walks and scans whole folders with it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from deepworks.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ON_BAD_FILE",
    "ImageSpec",
    "decode_image",
    "pixels_to_uint8",
    "is_grayscale_mode",
    "load_pixels",
    "read_image",
    "resize_pixels",
    "to_channels",
    "walk_image_folder",
]

JPEG_MAGIC = b"\xff\xd8\xff"  # the first bytes of every JPEG file (start of image, then a marker)
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


def _check_file(path: Path) -> None:
    """A DataError naming ``path`` when it is missing, a folder, unreadable or empty."""
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


def _decode(path: Path) -> Image.Image:
    """Open and fully decode ``path`` with Pillow (raises DataError), upright per its EXIF orientation."""
    _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            upright = _upright(img)
    except _DECODE_ERRORS as exc:
        raise _undecodable(path, exc) from None
    return upright


def _undecodable(path: Path, exc: BaseException) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(
        f"{path}: cannot be decoded as an image ({reason}). Re-export it as PNG or JPEG, or remove the file."
    )


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
    ``size=(H, W)`` resizes (bilinear, antialiased; see :func:`resize_pixels`). The pixels
    are those of :func:`load_pixels` divided by 255.
    """
    _check_channels(channels)
    _check_size(size)
    x = decode_image(path)
    if channels is not None:
        x = to_channels(x, channels)
    if size is not None:
        x = resize_pixels(x, tuple(size))
    return x.float().div_(255.0)


def _decode_jpeg(path: Path) -> torch.Tensor | None:
    """A JPEG decoded by torchvision (libjpeg-turbo) as uint8 (C, H, W), upright; None when
    torchvision cannot take it (the caller falls back to PIL). A broken file raises DataError."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without its image decoders: Pillow decodes
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    return _decode_jpeg_bytes(raw, str(path))


def _decode_jpeg_bytes(raw: bytes, where: str) -> torch.Tensor | None:
    """:func:`_decode_jpeg` on a JPEG's bytes; ``where`` names it in errors."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without its image decoders: Pillow decodes
        return None

    try:
        with warnings.catch_warnings():
            # torchvision 0.29 announces these decoders' move to TorchCodec, whose decode_jpeg
            # cannot yet apply the EXIF orientation; Pillow takes over if they are removed
            warnings.simplefilter("ignore", DeprecationWarning)
            data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
            x = decode_jpeg(data, mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
            if x.shape[0] not in (1, 3):  # CMYK and other colour models: let libjpeg convert them
                x = decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as exc:
        message = str(exc)
        if "not supported" in message or "Unsupported" in message:
            return None
        reason = message.strip().splitlines()[-1].split(", ")[-1] if message.strip() else "RuntimeError"
        raise DataError(
            f"{where}: cannot be decoded as an image ({reason}). Re-export it as PNG or JPEG, or remove the file."
        ) from None
    return x


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than the caller accepts (checked before decoding)."""


def decode_image_bytes(data: bytes, where: str = "image", max_pixels: int | None = None) -> torch.Tensor:
    """An image file's bytes (an upload) decoded to uint8 (C, H, W) exactly as :func:`decode_image`
    decodes the same file: JPEGs by torchvision, the rest by Pillow, upright, alpha over white.

    ``max_pixels`` bounds width x height as the header declares it, before any pixel is decoded
    (:class:`ImageTooLarge`); empty, truncated or undecodable bytes raise :class:`DataError`
    naming ``where``."""
    import io

    if not data:
        raise DataError(f"{where}: empty (0 bytes); expected the bytes of an image file (PNG, JPEG, ...).")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(
                    f"{where}: declares {width}x{height} = {width * height} pixels, more than the limit of "
                    f"{max_pixels} pixels. Fix: send a smaller image (resize it first)."
                )
            # JPEG by its first bytes, as decode_image decides for a file (Pillow names some camera JPEGs "MPO")
            fmt = "JPEG" if data[:len(JPEG_MAGIC)] == JPEG_MAGIC else img.format
            if fmt != "JPEG":
                img.load()  # decode now: a truncated file fails here, not later
                upright = _upright(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{where}: too many pixels to decode safely ({exc}). Fix: send a smaller image.") from None
    except ImageTooLarge:
        raise
    except _DECODE_ERRORS as exc:
        raise _undecodable(Path(where), exc) from None
    if fmt == "JPEG":
        x = _decode_jpeg_bytes(data, where)
        if x is not None:
            return x
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                upright = _upright(img)
        except _DECODE_ERRORS as exc:
            raise _undecodable(Path(where), exc) from None
    try:
        return _pil_to_uint8(upright)
    finally:
        upright.close()


def _pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 (C, H, W): 1 channel for grayscale modes, 3 for colour, transparency over white.

    16- and 32-bit grayscale is scaled to 0..255 (a 16-bit file loses its low 8 bits, as any
    uint8 pipeline does).
    """
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            scale = 255.0 if arr.size and float(arr.max()) > 1.0 else 1.0
        else:
            scale = 65535.0 if mode.startswith("I;16") or (arr.size and float(arr.max()) > 255.0) else 255.0
        arr = np.rint(np.clip(arr / scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
        base = "L" if is_grayscale_mode(mode) else "RGB"
        img = _flatten_alpha(img, base) if has_alpha else img.convert(base)
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    # (H, W, C) -> (C, H, W); copied only when not already contiguous and writable (Pillow's arrays are read-only)
    return torch.from_numpy(np.require(arr.transpose(2, 0, 1), requirements=["C", "W"]))


def pixels_from_pil(img: Image.Image) -> torch.Tensor:
    """An in-memory PIL image as uint8 (C, H, W), as :func:`decode_image` gives its file: upright
    per its EXIF orientation, 1 channel for grayscale modes and 3 otherwise, alpha over white."""
    upright = _upright(img)
    try:
        return _pil_to_uint8(upright)
    finally:
        upright.close()


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to uint8 (C, H, W), upright per its EXIF orientation.

    C is 1 for grayscale files and 3 for everything else; transparent pixels are composited
    over white, as viewers show them. JPEGs (photos: the files that cost the time) go through
    torchvision's decoder (libjpeg-turbo); PNG, GIF, BMP, TIFF and WebP through Pillow. The
    decoder is chosen by the file's first bytes, whatever its name says, as
    :func:`decode_image_bytes` chooses for an upload.
    Raises :class:`DataError` naming the file for a missing, empty or undecodable one.
    """
    path = Path(path)
    _check_file(path)
    try:
        with path.open("rb") as f:
            head = f.read(len(JPEG_MAGIC))
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    if head == JPEG_MAGIC:  # by content, not by name: a PNG saved as .jpg decodes as the PNG it is
        x = _decode_jpeg(path)
        if x is not None:
            return x
    img = _decode(path)
    try:
        return _pil_to_uint8(img)
    finally:
        img.close()


_LUMA = (19595, 38470, 7471)  # ITU-R 601-2 luma in 16-bit fixed point, as Pillow's "RGB" -> "L"


def pixels_to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Image values as the 8-bit pixels a file stores: uint8 as they are, whole numbers in 0..255,
    or floats in [0, 1] (as ``ToTensor`` gives them) rounded to 8 bits. Anything else is a
    :class:`DataError` starting with ``where``. What ``deepworks.train(source=...)`` and a
    trained run's ``predict`` both do with arrays of images."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{where}: image pixels must be numbers, got dtype {x.dtype}.")
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer pixels must lie in 0..255, got {lo:g}..{hi:g}. Fix: give 8-bit pixels.")
        return x.astype(np.uint8)
    if not np.isfinite(x).all() or lo < 0 or hi > 1:
        raise DataError(
            f"{where}: float pixels must lie in [0, 1] (as ToTensor gives them), got {lo:.3g}..{hi:.3g}. Fix: give the "
            "pixels before any normalisation (deepworks normalises with the training split's statistics), or uint8."
        )
    return np.rint(x * 255.0).astype(np.uint8)  # stored as an 8-bit file's pixels are


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (..., C, H, W) with C 1 or 3 -> ``channels`` channels: gray repeated to RGB,
    or RGB to Pillow's luma (bit for bit what ``Image.convert("L")`` gives)."""
    have = x.shape[-3]
    if have == channels:
        return x
    if channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    r, g, b = (x.select(-3, i).to(torch.int32) for i in range(3))
    luma = (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 0x8000) >> 16
    return luma.to(torch.uint8).unsqueeze(-3)


RESIZE_METHODS = ("squash", "crop")


def resize_pixels(x: torch.Tensor, size: tuple[int, int], method: str = "squash") -> torch.Tensor:
    """uint8 images (..., C, H, W) -> (..., C, *size), bilinear with antialiasing (torchvision's
    uint8 kernels, within 1 of Pillow's bilinear filter).

    ``squash`` resizes to ``size`` whatever the aspect ratio; ``crop`` scales the image so
    it covers ``size`` (the shorter side fits) and cuts the centre out, keeping the aspect.
    """
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if method == "crop":
        scale = max(size[0] / h, size[1] / w)
        cover = [max(size[0], round(h * scale)), max(size[1], round(w * scale))]
        if cover != [h, w]:
            x = resize_pixels(x, tuple(cover))
        return TF.center_crop(x, list(size)).contiguous()
    if method != "squash":
        raise ConfigError(f"data.resize: expected one of {', '.join(RESIZE_METHODS)}, got {method!r}.")
    try:
        return TF.resize(x, list(size), antialias=True)
    except RuntimeError:  # the uint8 kernel refuses a few tiny outputs (3 channels to 1x1): same filter in float
        out = torch.nn.functional.interpolate(
            x.reshape(-1, *x.shape[-3:]).float(), size=tuple(size), mode="bilinear", antialias=True
        )
        return out.round_().clamp_(0, 255).to(torch.uint8).reshape(*x.shape[:-2], *size)


@dataclass(frozen=True)
class ImageSpec:
    """How an image file becomes model input: its channels, size and resize method.

    Stored in a run's ``data.json`` (``image``) so that ``predict``, ``evaluate`` and
    serving turn a photo of any size into exactly the pixels training saw.
    """

    channels: int
    size: tuple[int, int]  # (H, W)
    resize: str = "squash"

    def __post_init__(self) -> None:
        _check_channels(self.channels)
        _check_size(self.size)
        if self.resize not in RESIZE_METHODS:
            raise ConfigError(f"data.resize: expected one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": list(self.size), "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        return cls(int(d["channels"]), (int(d["size"][0]), int(d["size"][1])), str(d.get("resize", "squash")))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def nbytes(self) -> int:
        """Bytes of one image at this spec as uint8."""
        return self.channels * self.size[0] * self.size[1]


def load_pixels(path: str | os.PathLike[str], spec: ImageSpec) -> torch.Tensor:
    """An image file as the uint8 (C, H, W) pixels a model with ``spec`` is trained on: decoded,
    upright, converted to ``spec.channels`` and resized. Training (in memory or streamed),
    ``predict`` and ``evaluate`` all go through this one function."""
    return resize_pixels(to_channels(decode_image(path), spec.channels), spec.size, spec.resize)


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


def walk_image_folder(path: str | os.PathLike[str]) -> tuple[list[tuple[Path, int]], list[str], list[Path]]:
    """The image files of a folder with one subfolder per class: ``(path, label)`` in sorted
    order, the class names and the class folders. Opens no file; layout errors name the folder."""
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
    return files, [d.name for d in class_dirs], class_dirs


_SWAPPED = frozenset({5, 6, 7, 8})  # EXIF orientations that turn the image by 90 degrees


def probe_image(path: Path, label: int = 0) -> ImageInfo:
    """Mode and upright size of an image file from its header, without decoding the pixels
    (raises DataError naming the file). A truncated file passes; decoding finds it."""
    _check_file(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode = img.mode
            try:
                turned = img.getexif().get(0x0112) in _SWAPPED
            except Exception:  # a malformed EXIF block: decoding keeps the stored orientation too
                turned = False
    except _DECODE_ERRORS as exc:
        raise _undecodable(path, exc) from None
    return ImageInfo(path, label, mode, (w, h) if turned else (h, w))


def check_on_bad_file(on_bad_file: str) -> None:
    if on_bad_file not in ON_BAD_FILE:
        raise ConfigError(
            f"data.on_bad_file: expected 'warn' (skip unreadable files) or 'error' (stop), got {on_bad_file!r}."
        )


BAD_FILES_LISTED = 10  # unreadable files a message names; the rest are counted


def report_bad_files(
    root: Path, bad: list[tuple[Path, str]], on_bad_file: str, good_labels: list[int], class_where: list[str]
) -> None:
    """Stop on, or warn once about, the unreadable files of a folder or image list (the first
    :data:`BAD_FILES_LISTED` named, all counted); a class left with no readable image stops in
    any case. ``class_where`` says how a message names each class."""
    if not bad:
        return
    listing = "; ".join(f"{p} ({reason.rstrip('.')})" for p, reason in bad[:BAD_FILES_LISTED])
    if len(bad) > BAD_FILES_LISTED:
        listing += f"; ... ({len(bad) - BAD_FILES_LISTED} more)"
    if on_bad_file == "error":
        raise DataError(
            f"{root}: {len(bad)} image file(s) cannot be read: {listing}. "
            "Remove or fix them, or set data.on_bad_file: warn to skip them."
        )
    warnings.warn(
        f"{root}: skipped {len(bad)} unreadable image file(s): {listing}. "
        "Remove or fix them (data.on_bad_file: error stops on them instead).",
        stacklevel=4,
    )
    counts = np.bincount(np.asarray(good_labels, dtype=np.int64), minlength=len(class_where))
    for label, n in enumerate(counts):
        if n == 0:
            raise DataError(
                f"{class_where[label]} has no readable images left after skipping the unreadable ones above. "
                "Add readable images of this class or remove the class."
            )


def reason_of(path: Path, exc: DataError) -> str:
    """A DataError's message without the leading path: the reason alone."""
    return str(exc).removeprefix(f"{path}: ")
