"""Generative adversarial networks: a generator and a discriminator (critic) in one module.

Three families, chosen by ``model.name``:

- ``dcgan``: transposed-convolution generator with batch norm and ReLU, convolutional
  discriminator with batch norm and LeakyReLU(0.2) (Radford et al. 2016); non-saturating loss.
- ``cgan``: the same, conditioned on the class label: the generator reads a label embedding
  beside the noise, the discriminator is a projection discriminator (Miyato & Koyama 2018:
  ``D(x, y) = w . phi(x) + embed(y) . phi(x)``).
- ``wgan-gp``: a critic without batch norm (layer norm instead, which the gradient penalty
  allows) trained on the Wasserstein loss with a gradient penalty (Gulrajani et al. 2017).

The depth follows the image size: the generator starts at the size reached by halving the
image's height and width while both stay even and at least 4 (28 -> 14 -> 7: starts at 7x7,
two upsamplings; 8 -> 4; 32 -> 16 -> 8 -> 4), so sizes that are not powers of two work.
Images are in [-1, 1] (tanh output); the discriminator reads real images scaled the same way.

>>> gan = create_model("dcgan", input_shape=(1, 28, 28), num_classes=10, latent=32, g_width=16, d_width=16)
>>> import torch; gan.generate(torch.randn(2, 32)).shape
torch.Size([2, 1, 28, 28])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepworks.errors import ShapeError
from deepworks.models.registry import MODELS

__all__ = ["GAN", "GANParams", "Generator", "Discriminator", "adversarial", "is_adversarial", "upsamplings"]

F = TypeVar("F", bound=Callable[..., Any])


def adversarial(factory: F) -> F:
    """Mark a model factory as a GAN (a :class:`GAN` module trained by the adversarial loop).
    Put it under ``@MODELS.register``."""
    factory.adversarial = True  # type: ignore[attr-defined]
    return factory


def is_adversarial(name: str) -> bool:
    """Whether the registered model ``name`` is a GAN (asked before any data is read)."""
    return name in MODELS and bool(getattr(MODELS.get(name), "adversarial", False))


class GANParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latent: int = Field(64, ge=1, description="size of the noise vector z")
    g_width: int = Field(32, ge=1, description="generator: channels at full resolution (doubled at each smaller size)")
    d_width: int = Field(32, ge=1, description="discriminator: channels after its first conv (doubled at each smaller size)")
    depth: int | None = Field(
        None, ge=0, description="upsamplings in the generator (downsamplings in the discriminator); default: as many "
        "as the image size allows (halving while even and at least 4)"
    )
    embedding: int = Field(32, ge=1, description="cgan: size of the generator's label embedding")


def upsamplings(height: int, width: int) -> int:
    """How often (height, width) can be halved while both stay even and at least 4."""
    k = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, k = height // 2, width // 2, k + 1
    return k


def _depth(shape: tuple[int, int, int], depth: int | None) -> int:
    most = upsamplings(shape[1], shape[2])
    if depth is None:
        return most
    if depth > most:
        raise ShapeError(
            f"model.depth: {depth} upsamplings do not fit images of {shape[1]}x{shape[2]} (halving while even and at "
            f"least 4 allows {most}). Fix: model.depth: {most} or less, or leave it out."
        )
    return depth


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv and linear weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (B, latent) [+ label (B,)] -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, shape: tuple[int, int, int], latent: int, width: int, depth: int, num_classes: int = 0,
                 embedding: int = 0):
        super().__init__()
        channels, height, width_px = shape
        self.latent, self.num_classes = latent, num_classes
        self.start = (height >> depth, width_px >> depth)
        c0 = width * 2**depth
        self.embed = nn.Embedding(num_classes, embedding) if num_classes else None
        inputs = latent + (embedding if num_classes else 0)
        self.project = nn.Sequential(  # (B, inputs) -> (B, c0 * h0 * w0)
            nn.Linear(inputs, c0 * self.start[0] * self.start[1], bias=False),
            nn.BatchNorm1d(c0 * self.start[0] * self.start[1]),
            nn.ReLU(inplace=True),
        )
        self.c0 = c0
        layers: list[nn.Module] = []
        c = c0
        for _ in range(depth):  # each doubles the size: (c, h, w) -> (c/2, 2h, 2w)
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2),
                       nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ShapeError("a conditional generator needs the labels of the images to generate")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(len(z), self.c0, *self.start)  # (B, c0, h0, w0)
        return self.body(h)  # (B, C, H, W)


class Discriminator(nn.Module):
    """image (B, C, H, W) [+ label (B,)] -> one logit (critic value) per image, (B,).

    ``norm``: ``batch`` (DCGAN) or ``layer`` (the WGAN-GP critic: the penalty is per sample,
    which batch norm's mixing of samples would break). The first conv is never normalised.
    """

    def __init__(self, shape: tuple[int, int, int], width: int, depth: int, norm: str = "batch", num_classes: int = 0):
        super().__init__()
        channels, height, width_px = shape
        layers: list[nn.Module] = []
        c_in, c = channels, width
        if depth == 0:  # no halving fits: one stride-1 conv
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        for i in range(depth):  # (c_in, h, w) -> (c, h/2, w/2)
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(1, c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.feature_channels = c_in
        self.head = nn.Linear(c_in * (height >> depth) * (width_px >> depth), 1)
        self.embed = nn.Embedding(num_classes, c_in) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, c, h0, w0)
        out = self.head(h.flatten(1)).squeeze(1)  # (B,)
        if self.embed is not None:  # projection: <embed(y), sum-pooled features>
            if labels is None:
                raise ShapeError("a conditional discriminator needs the labels of the images it judges")
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return out


class GAN(nn.Module):
    """A generator and a discriminator; ``loss`` is ``bce`` (non-saturating) or ``wasserstein``.

    ``forward(z, labels)`` generates, so the module works where a model is called on an input.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator, *, loss: str, image_shape: tuple[int, int, int],
                 num_classes: int = 0):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.loss, self.image_shape, self.num_classes = loss, tuple(image_shape), num_classes
        self.latent = generator.latent

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)


def _build(shape: tuple[int, ...], num_classes: int, p: GANParams, *, conditional: bool, loss: str, norm: str) -> GAN:
    if len(shape) != 3:
        raise ShapeError(f"a GAN generates images (channels, height, width); the data has shape {tuple(shape)}.")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    depth = _depth(shape3, p.depth)
    k = num_classes if conditional else 0
    gan = GAN(
        Generator(shape3, p.latent, p.g_width, depth, k, p.embedding),
        Discriminator(shape3, p.d_width, depth, norm, k),
        loss=loss, image_shape=shape3, num_classes=k,
    )
    dcgan_init(gan)
    return gan


@MODELS.register("dcgan", params=GANParams, description="DCGAN: transposed-conv generator, conv discriminator (batch norm, LeakyReLU)")
@adversarial
def dcgan(input_shape: tuple[int, ...], num_classes: int, **params: Any) -> GAN:
    return _build(input_shape, num_classes, GANParams(**params), conditional=False, loss="bce", norm="batch")


@MODELS.register("cgan", params=GANParams, description="conditional DCGAN: label embedding in G, projection discriminator")
@adversarial
def cgan(input_shape: tuple[int, ...], num_classes: int, **params: Any) -> GAN:
    if num_classes < 2:
        raise ShapeError(f"model.name: cgan is conditioned on class labels; the data has {num_classes} class(es). "
                         "Fix: use dcgan, or data with at least 2 classes.")
    return _build(input_shape, num_classes, GANParams(**params), conditional=True, loss="bce", norm="batch")


@MODELS.register("wgan-gp", params=GANParams, description="WGAN-GP: critic with layer norm, Wasserstein loss + gradient penalty")
@adversarial
def wgan_gp(input_shape: tuple[int, ...], num_classes: int, **params: Any) -> GAN:
    return _build(input_shape, num_classes, GANParams(**params), conditional=False, loss="wasserstein", norm="layer")
