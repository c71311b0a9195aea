"""Image augmentation by name, on whole training batches, on their device.

A config lists the ops in the order they are applied; each item is a name or a one-key
mapping ``{name: params}``, and a bare value stands for the op's main parameter::

    data:
      augment: [hflip, {random_crop: {padding: 4}}, {rotate: 15}, {cutout: {size: 8}}]

Each op transforms a batch ``(B, C, H, W)`` with per-sample random parameters, vectorised
(masks, index gathers, ``affine_grid``/``grid_sample``; no per-sample Python), on the batch's
device, and keeps its shape and dtype. Every op has a probability ``p`` that a sample gets
it; the samples that do not are left bitwise unchanged.

Reproducibility: the random parameters of a batch are drawn from a private
``torch.Generator`` seeded by ``(seed, epoch, step, rank)`` alone, never from the global RNG
(dropout draws from that). A run killed mid-epoch and resumed therefore replays exactly the
augmentation an uninterrupted run would have seen, and the same call gives the same batch
on any device.

Pixel space: the pipeline normalises images before training, so batches hold
``(pixels - mean) / std`` with pixels in [0, 1], and it gives :func:`build_augment` that
``mean``/``std``. Geometric ops work in any space. The pixels that ``random_crop``'s padding
or ``rotate`` uncover get ``fill``, a pixel value (default 0, black, as torchvision's
defaults on unnormalised images), stored normalised; ``cutout`` fills with the training mean
colour by default (0 after normalisation, as in the Cutout paper). ``color_jitter`` works on
the pixels themselves: it undoes the normalisation, adjusts, clamps to [0, 1] as torchvision
does and normalises again.

>>> import torch
>>> aug = build_augment(["hflip", {"random_crop": {"padding": 2}}], seed=0)
>>> x = torch.randn(16, 3, 8, 8)
>>> aug(x, epoch=1, step=0).shape
torch.Size([16, 3, 8, 8])
>>> torch.equal(aug(x, epoch=1, step=0), aug(x, epoch=1, step=0))
True
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)

from deepworks.config import resolve_op_list
from deepworks.errors import ConfigError, ShapeError
from deepworks.registry import Registry

__all__ = ["AUGMENTS", "Augment", "BatchOp", "build_augment", "augment_seed"]

AUGMENTS: Registry = Registry("augmentation")

Shape = tuple[int, int, int]  # (C, H, W)


# --------------------------------------------------------------------------- parameter schemas


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"expected [low, high] with low <= high, got {list(pair)}")
    return pair


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plus_minus(value: Any) -> Any:
    # a number d is the range [-d, d]
    if _number(value):
        if value < 0:
            raise ValueError(f"expected a number >= 0 (for [-d, d]) or [low, high], got {value}")
        return (-float(value), float(value))
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a number >= 0 (for [-d, d]) or [low, high], got {value!r}")
    return value


def _around_one(value: Any) -> Any:
    # a strength v is the factor range [max(0, 1 - v), 1 + v]
    if _number(value):
        if value < 0:
            raise ValueError(f"expected a strength >= 0 (factors from [1 - v, 1 + v]) or [low, high], got {value}")
        return (max(0.0, 1.0 - value), 1.0 + float(value))
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a strength >= 0 (factors from [1 - v, 1 + v]) or [low, high], got {value!r}")
    return value


def _non_negative(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] < 0:
        raise ValueError(f"factors must be >= 0, got {list(pair)}")
    return pair


def _fill(value: Any) -> float | str:
    if isinstance(value, str) and value == "mean":
        return value
    if _number(value) and 0 <= value <= 1:
        return float(value)
    raise ValueError(
        f"expected a pixel value in [0, 1] (0 is black) or 'mean' (the training mean colour), got {value!r}"
    )


Interval = Annotated[tuple[float, float], AfterValidator(_ordered)]
Fill = Annotated[Any, PlainValidator(_fill)]  # a pixel value in [0, 1], or "mean"
Angles = Annotated[tuple[float, float], BeforeValidator(_plus_minus), AfterValidator(_ordered)]
Factors = Annotated[
    tuple[float, float], BeforeValidator(_around_one), AfterValidator(_ordered), AfterValidator(_non_negative)
]


class _Params(BaseModel):
    """Parameters of an op. ``shorthand`` names the one a bare value sets: ``{rotate: 15}``."""

    model_config = ConfigDict(extra="forbid")
    shorthand: ClassVar[str | None] = "p"
    p: float = Field(1.0, ge=0, le=1, description="probability that a sample gets the op")


class FlipParams(_Params):
    p: float = Field(0.5, ge=0, le=1, description="probability that a sample is flipped")


class RandomCropParams(_Params):
    shorthand: ClassVar[str | None] = "padding"
    padding: int = Field(4, ge=0, description="pixels added on every side before cropping")
    size: Annotated[int, Field(ge=1)] | tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="crop window (H, W) or one side; default: the image size. Scaled back to the image size"
    )
    padding_mode: Literal["constant", "reflect", "replicate"] = Field(
        "constant", description="constant (fill), reflect or replicate the border"
    )
    fill: Fill = Field(0.0, description="constant padding: a pixel value in [0, 1] (0: black) or mean")


class RotateParams(_Params):
    shorthand: ClassVar[str | None] = "degrees"
    degrees: Angles = Field(
        (-15.0, 15.0), description="angle range: d means [-d, d] degrees, or [low, high]; positive is counter-clockwise"
    )
    fill: Fill = Field(0.0, description="the corners uncovered: a pixel value in [0, 1] (0: black) or mean")


class ColorJitterParams(_Params):
    shorthand: ClassVar[str | None] = None
    # a strength v draws the factor f from [max(0, 1 - v), 1 + v]; [low, high] gives the range itself
    brightness: Factors = Field((1.0, 1.0), description="pixels * f")
    contrast: Factors = Field((1.0, 1.0), description="blend with the image's mean grey: grey + f * (pixels - grey)")
    saturation: Factors = Field((1.0, 1.0), description="RGB only: blend with the greyscale image by f")

    @model_validator(mode="after")
    def _something(self) -> ColorJitterParams:
        if all(v == (1.0, 1.0) for v in (self.brightness, self.contrast, self.saturation)):
            raise ValueError(
                "color_jitter changes nothing: set at least one of brightness, contrast, saturation, "
                "e.g. {color_jitter: {brightness: 0.2, contrast: 0.2}}"
            )
        return self


class CutoutParams(_Params):
    shorthand: ClassVar[str | None] = "size"
    size: int = Field(8, ge=1, description="side of the square; its centre is anywhere, it is clipped at the borders")
    fill: Fill = Field("mean", description="what the square holds: mean (the training mean colour) or a pixel value")


class RandomResizedCropParams(_Params):
    shorthand: ClassVar[str | None] = "scale"
    scale: Interval = Field((0.08, 1.0), description="crop area as a fraction of the image, [low, high]")
    ratio: Interval = Field((3 / 4, 4 / 3), description="crop aspect ratio (width / height), [low, high]")

    @field_validator("scale")
    @classmethod
    def _fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"expected 0 < low <= high <= 1 (a fraction of the image's area), got {list(value)}")
        return value

    @field_validator("ratio")
    @classmethod
    def _positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0]:
            raise ValueError(f"expected 0 < low <= high (width / height), got {list(value)}")
        return value


# --------------------------------------------------------------------------- random draws
# Every draw comes from the CPU generator of the batch (so a batch is augmented the same on
# any device) and only the small parameter tensors move to the batch's device.


def _uniform(g: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """(n,) float32 uniform in [low, high)."""
    return (torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low).float().to(device)


def _integers(g: torch.Generator, n: int, high: int, device: torch.device) -> torch.Tensor:
    """(n,) int64 uniform in [0, high)."""
    return torch.randint(0, high, (n,), generator=g).to(device)


def _chosen(g: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor | None:
    """(n,) bool: the samples that get the op; None when every sample does (p = 1)."""
    if p >= 1:
        return None
    return (torch.rand(n, generator=g) < p).to(device)


def _keep(chosen: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` for the chosen samples, ``old`` (bitwise) for the others."""
    return new if chosen is None else torch.where(chosen.view(-1, 1, 1, 1), new, old)


class _Pixels:
    """Normalisation statistics, to go from a batch to pixels in [0, 1] and back."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            c = x.shape[1]
            mean = torch.tensor(self.mean if self.mean is not None else [0.0] * c, dtype=x.dtype, device=x.device)
            std = torch.tensor(self.std if self.std is not None else [1.0] * c, dtype=x.dtype, device=x.device)
            self._cache[key] = mean.view(1, c, 1, 1), std.view(1, c, 1, 1)
        return self._cache[key]

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None and self.std is None:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None and self.std is None:
            return x
        mean, std = self._stats(x)
        return (x - mean) / std

    def fill(self, fill: float | str, x: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, 1): the pixel value ``fill`` (or the mean colour, "mean") as the batch holds it."""
        c = x.shape[1]
        mean = self.mean if self.mean is not None else [0.0] * c
        std = self.std if self.std is not None else [1.0] * c
        # worked out in float64 and rounded once, like a Python number passed to F.pad
        values = [0.0 if fill == "mean" else (fill - m) / s for m, s in zip(mean, std)]
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, c, 1, 1)


def _sample_grid(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """Resample every image of ``x`` bilinearly through its own affine map ``theta`` (B, 2, 3),
    which takes output coordinates to input coordinates (both in [-1, 1] across the image).
    Samples outside the image get ``fill`` (1, C, 1, 1), or with None the nearest border pixel."""
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)  # (B, H, W, 2)
    if fill is None:
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    else:  # grid_sample pads with 0: shift so that 0 is the fill value
        fill = fill.to(work.dtype)
        out = F.grid_sample(work - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.to(x.dtype)


# --------------------------------------------------------------------------- the ops


class BatchOp(ABC):
    """One augmentation of a whole batch: ``op(x, g, pixels) -> x`` for ``x`` (B, C, H, W).

    Subclasses implement ``__call__``, drawing their per-sample parameters from ``g`` and
    nothing else, and override :meth:`check` where some image shapes cannot work (a user error).
    """

    name = "op"

    def __init__(self, p: float = 1.0):
        self.p = p

    def check(self, shape: Shape, where: str) -> None:
        """Raise :class:`ConfigError` if images shaped ``(C, H, W)`` do not suit the op."""

    @abstractmethod
    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        """The augmented batch: same shape, dtype and device as ``x``; ``x`` itself is not modified."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({args})"


@AUGMENTS.register("hflip", params=FlipParams, description="mirror left-right with probability p (default 0.5)")
class HFlip(BatchOp):
    name = "hflip"
    dim = -1

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        return _keep(_chosen(g, len(x), self.p, x.device), x.flip(self.dim), x)


@AUGMENTS.register("vflip", params=FlipParams, description="mirror top-bottom with probability p (default 0.5)")
class VFlip(HFlip):
    name = "vflip"
    dim = -2


@AUGMENTS.register(
    "random_crop", params=RandomCropParams, description="pad every side by `padding`, then crop at a random offset"
)
class RandomCrop(BatchOp):
    name = "random_crop"

    def __init__(self, padding: int = 4, size: int | Sequence[int] | None = None,
                 padding_mode: str = "constant", fill: float | str = 0.0, p: float = 1.0):
        super().__init__(p)
        self.padding, self.padding_mode, self.fill = padding, padding_mode, fill
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)

    def _window(self, h: int, w: int) -> tuple[int, int]:
        return self.size if self.size is not None else (h, w)

    def check(self, shape: Shape, where: str) -> None:
        _, h, w = shape
        wh, ww = self._window(h, w)
        if wh > h + 2 * self.padding or ww > w + 2 * self.padding:
            raise ConfigError(
                f"{where}.size: the crop window {wh}x{ww} is larger than the padded images "
                f"({h + 2 * self.padding}x{w + 2 * self.padding}). Use a smaller size or more padding."
            )
        if self.padding_mode == "reflect" and self.padding >= min(h, w):
            raise ConfigError(
                f"{where}.padding: reflect padding must be smaller than the images ({h}x{w}), got {self.padding}. "
                "Use less padding or padding_mode: constant."
            )

    def _pad(self, x: torch.Tensor, pixels: _Pixels) -> torch.Tensor:
        pad = self.padding
        if not pad:
            return x
        if self.padding_mode != "constant":
            return F.pad(x, (pad, pad, pad, pad), mode=self.padding_mode)
        b, c, h, w = x.shape
        padded = pixels.fill(self.fill, x).expand(b, c, h + 2 * pad, w + 2 * pad).clone()  # one value per channel
        padded[:, :, pad:pad + h, pad:pad + w] = x
        return padded

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        b, c, h, w = x.shape
        pad = self.padding
        wh, ww = self._window(h, w)
        chosen = _chosen(g, b, self.p, x.device)
        hp, wp = h + 2 * pad, w + 2 * pad
        top = _integers(g, b, hp - wh + 1, x.device)  # (B,) offsets into the padded image
        left = _integers(g, b, wp - ww + 1, x.device)
        same_size = (wh, ww) == (h, w)
        if chosen is not None and same_size:
            # the crop at offset (pad, pad) is the image itself, bit for bit
            top = torch.where(chosen, top, pad)
            left = torch.where(chosen, left, pad)
        padded = self._pad(x, pixels)  # (B, C, H + 2p, W + 2p)
        rows = top[:, None] + torch.arange(wh, device=x.device)  # (B, wh)
        cols = left[:, None] + torch.arange(ww, device=x.device)  # (B, ww)
        index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, wh * ww).expand(b, c, wh * ww)
        out = padded.reshape(b, c, hp * wp).gather(2, index).view(b, c, wh, ww)  # (B, C, wh, ww)
        if same_size:
            return out
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=wh > h or ww > w)
        return _keep(chosen, out, x)  # (B, C, H, W)


@AUGMENTS.register("rotate", params=RotateParams, description="rotate by a random angle in [-degrees, degrees]")
class Rotate(BatchOp):
    name = "rotate"

    def __init__(self, degrees: Sequence[float] = (-15.0, 15.0), fill: float | str = 0.0, p: float = 1.0):
        super().__init__(p)
        self.degrees, self.fill = tuple(degrees), fill

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        b, _, h, w = x.shape
        chosen = _chosen(g, b, self.p, x.device)
        angle = _uniform(g, b, *self.degrees, x.device) * (math.pi / 180)  # (B,) radians
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        # output pixel -> input pixel, in pixel units about the centre (y down), rewritten for
        # coordinates in [-1, 1] along each axis so non-square images are not sheared
        theta = torch.stack([
            torch.stack([cos, -sin * (h / w), zero], dim=1),
            torch.stack([sin * (w / h), cos, zero], dim=1),
        ], dim=1)  # (B, 2, 3)
        return _keep(chosen, _sample_grid(x, theta, pixels.fill(self.fill, x)), x)


@AUGMENTS.register(
    "color_jitter", params=ColorJitterParams, description="random brightness, contrast and (RGB) saturation"
)
class ColorJitter(BatchOp):
    name = "color_jitter"
    GREY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale

    def __init__(self, brightness: Sequence[float] = (1.0, 1.0), contrast: Sequence[float] = (1.0, 1.0),
                 saturation: Sequence[float] = (1.0, 1.0), p: float = 1.0):
        super().__init__(p)
        # factor ranges; (1, 1) leaves that property alone
        self.brightness, self.contrast, self.saturation = tuple(brightness), tuple(contrast), tuple(saturation)

    def check(self, shape: Shape, where: str) -> None:
        if self.saturation != (1.0, 1.0) and shape[0] != 3:
            raise ConfigError(
                f"{where}.saturation: saturation needs RGB images (3 channels); these have {shape[0]}. "
                "Remove saturation, or load the images in colour with data.channels: 3."
            )

    def _grey(self, px: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W)."""
        if px.shape[1] == 3:
            r, g, b = px.unbind(1)
            return (self.GREY[0] * r + self.GREY[1] * g + self.GREY[2] * b).unsqueeze(1)
        return px.mean(1, keepdim=True)

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        b = len(x)
        chosen = _chosen(g, b, self.p, x.device)
        factors = [_uniform(g, b, *r, x.device).to(x.dtype).view(b, 1, 1, 1)
                   for r in (self.brightness, self.contrast, self.saturation)]  # each (B, 1, 1, 1)
        px = pixels.to_pixels(x)
        # fixed order: brightness, contrast, saturation (torchvision shuffles it per call)
        if self.brightness != (1.0, 1.0):
            px = (px * factors[0]).clamp(0, 1)
        if self.contrast != (1.0, 1.0):
            grey = self._grey(px).mean((-3, -2, -1), keepdim=True)  # (B, 1, 1, 1)
            px = (grey + factors[1] * (px - grey)).clamp(0, 1)
        if self.saturation != (1.0, 1.0):
            grey = self._grey(px)  # (B, 1, H, W)
            px = (grey + factors[2] * (px - grey)).clamp(0, 1)
        return _keep(chosen, pixels.from_pixels(px), x)


@AUGMENTS.register("cutout", params=CutoutParams, description="fill a random size x size square (the mean colour)")
class Cutout(BatchOp):
    name = "cutout"

    def __init__(self, size: int = 8, fill: float | str = "mean", p: float = 1.0):
        super().__init__(p)
        self.size, self.fill = size, fill

    def check(self, shape: Shape, where: str) -> None:
        _, h, w = shape
        if self.size > max(h, w):
            raise ConfigError(
                f"{where}.size: a {self.size}-pixel square is larger than the images ({h}x{w}). "
                f"Use a size of at most {max(h, w)} (about half the image is usual)."
            )

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        b, _, h, w = x.shape
        chosen = _chosen(g, b, self.p, x.device)
        top = _integers(g, b, h, x.device) - self.size // 2  # (B,) the square's centre is anywhere
        left = _integers(g, b, w, x.device) - self.size // 2
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = (ys >= top[:, None]) & (ys < top[:, None] + self.size)  # (B, H)
        cols = (xs >= left[:, None]) & (xs < left[:, None] + self.size)  # (B, W)
        mask = rows[:, :, None] & cols[:, None, :]  # (B, H, W)
        if chosen is not None:
            mask &= chosen.view(b, 1, 1)
        return torch.where(mask.unsqueeze(1), pixels.fill(self.fill, x), x)  # (B, C, H, W)


@AUGMENTS.register(
    "random_resized_crop", params=RandomResizedCropParams,
    description="crop a random area and aspect ratio, scaled back to the image size",
)
class RandomResizedCrop(BatchOp):
    name = "random_resized_crop"

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3), p: float = 1.0):
        super().__init__(p)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __call__(self, x: torch.Tensor, g: torch.Generator, pixels: _Pixels) -> torch.Tensor:
        b, _, h, w = x.shape
        chosen = _chosen(g, b, self.p, x.device)
        area = _uniform(g, b, *self.scale, x.device)  # (B,) fraction of the image
        ratio = _uniform(g, b, math.log(self.ratio[0]), math.log(self.ratio[1]), x.device).exp()  # (B,) width/height
        # crop width and height as fractions of the image's; a crop that would not fit is clamped to it
        fw = (area * ratio * (h / w)).sqrt().clamp(max=1.0)
        fh = (area / ratio * (w / h)).sqrt().clamp(max=1.0)
        # the crop's centre, in [-1, 1] coordinates, so that the crop lies inside the image
        cx = _uniform(g, b, -1.0, 1.0, x.device) * (1 - fw)
        cy = _uniform(g, b, -1.0, 1.0, x.device) * (1 - fh)
        zero = torch.zeros_like(fw)
        theta = torch.stack([torch.stack([fw, zero, cx], dim=1), torch.stack([zero, fh, cy], dim=1)], dim=1)  # (B,2,3)
        # the crop lies inside the image; the border pixels fill the half pixel at its edges
        return _keep(chosen, _sample_grid(x, theta, None), x)


# --------------------------------------------------------------------------- the pipeline of ops


def augment_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The seed of one batch's generator: a function of (seed, epoch, step, rank) only."""
    text = f"deepworks-augment:{int(seed)}:{int(epoch)}:{int(step)}:{int(rank)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % 2**63


class Augment:
    """Augmentation ops applied in order to training batches.

    ``augment(x, epoch=e, step=s, rank=r)`` returns the augmented batch (same shape, dtype
    and device as ``x``, which is (B, C, H, W) floats). ``step`` is the batch's index within
    the epoch; the random parameters are drawn from a generator seeded by
    ``(seed, epoch, step, rank)`` alone (see :func:`augment_seed`). Build one with
    :func:`build_augment`.
    """

    def __init__(
        self,
        ops: Sequence[BatchOp],
        seed: int = 0,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        where: str = "data.augment",
    ):
        self.ops = list(ops)
        self.seed = int(seed)
        self.where = where
        self.pixels = _Pixels(mean, std)
        self._checked: Shape | None = None

    def check(self, shape: Sequence[int]) -> None:
        """Refuse, as a :class:`ConfigError`, images shaped ``(C, H, W)`` that an op cannot work on."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ConfigError(
                f"{self.where}: augmentation is for images (C, H, W), but these samples are shaped {shape} "
                f"(a table of features?). Remove {self.where} from the config."
            )
        for stats, label in ((self.pixels.mean, "mean"), (self.pixels.std, "std")):
            if stats is not None and len(stats) != shape[0]:
                raise ConfigError(
                    f"{self.where}: {label} has {len(stats)} values but the images have {shape[0]} channels; "
                    "give one per channel."
                )
        for i, op in enumerate(self.ops):
            op.check(shape, f"{self.where}[{i}].{op.name}")
        self._checked = shape

    def generator(self, epoch: int, step: int, rank: int = 0) -> torch.Generator:
        """The CPU generator the parameters of batch ``step`` of ``epoch`` on ``rank`` come from."""
        return torch.Generator().manual_seed(augment_seed(self.seed, epoch, step, rank))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, *, epoch: int, step: int, rank: int = 0) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
            shown = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(
                f"{self.where}: augmentation works on float image batches (B, C, H, W); got {shown}. "
                f"Remove {self.where} for data that is not images."
            )
        if tuple(x.shape[1:]) != self._checked:
            self.check(x.shape[1:])
        g = self.generator(epoch, step, rank)
        for op in self.ops:
            x = op(x, g, self.pixels)
        return x

    def __repr__(self) -> str:
        return f"Augment([{', '.join(map(repr, self.ops))}], seed={self.seed})"


def build_augment(
    spec: Sequence[Any] | None,
    seed: int = 0,
    *,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    where: str = "data.augment",
) -> Augment | None:
    """The :class:`Augment` for a list of ops as written in a config (``data.augment``), or
    None when the list is empty.

    ``spec`` items are names or ``{name: params}`` (``["hflip", {"random_crop": {"padding": 4}}]``),
    checked against each op's schema. ``mean``/``std`` are the per-channel statistics the
    batches were normalised with (default: the batches are pixels in [0, 1]); ``color_jitter``
    and pixel ``fill`` values need them. With ``input_shape`` (C, H, W) the ops are checked against
    the images now, else at the first batch. Errors are :class:`ConfigError` naming the key
    path under ``where``.
    """
    if not spec:
        return None
    if input_shape is not None and len(input_shape) != 3:
        raise ConfigError(
            f"{where}: augmentation is for images, but this data is a table of {input_shape[0]} features per "
            f"sample. Remove {where} from the config."
        )
    ops = []
    for item in resolve_op_list(spec, AUGMENTS, tuple(where.split(".")), origin=where):
        for name, params in item.items():
            ops.append(AUGMENTS.get(name)(**params))
    augment = Augment(ops, seed, mean=mean, std=std, where=where)
    if input_shape is not None:
        augment.check(input_shape)
    return augment
