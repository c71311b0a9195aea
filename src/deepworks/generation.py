"""GAN runs: from a config to a trained generator, and samples from a run directory.

``deepworks.train`` and ``deepworks.resume`` come here when ``model.name`` is a GAN
(``dcgan``, ``cgan``, ``wgan-gp``); ``generate`` makes samples on demand::

    run = deepworks.train("examples/configs/digits-dcgan.yaml")
    images = deepworks.generate(run.dir, 16, seed=1)    # float32 (16, C, H, W) in [-1, 1]
    deepworks.generate(cgan_run, 10, label=3, out="samples/")   # PNGs + grid.png

The images the discriminator sees are the training split's pixels scaled to [-1, 1]
(``data.normalize`` does not apply); validation and test splits are not used for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepworks.config import Config, dump_config, load_run_config
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.kinds import kind_of_config, prepare_data
from deepworks.kinds.common import balance_classes
from deepworks.kinds.image import signed_pixels
from deepworks.models.gan import is_adversarial
from deepworks.models.registry import model_from_config
from deepworks.predictor import Run
from deepworks.runs import RunDir, atomic_write, existing_run, new_run_dir
from deepworks.runtime import distributed_context
from deepworks.training.adversarial import GENERATOR_FILE, AdversarialTrainer, sample_grid
from deepworks.training.trainer import load_model_weights

__all__ = ["train_gan", "resume_gan", "generate", "load_generator"]


def _prepare(cfg: Config) -> tuple[Any, Any, dict[str, Any]]:
    """The training images in [-1, 1], the data record, and the GAN built for them."""
    if distributed_context().enabled:
        raise ConfigError("GAN training runs in one process; launch it without --nproc, --nnodes or torchrun.")
    if cfg.data.augment:
        raise ConfigError("data.augment: GAN training does not augment its images (the generator would learn the "
                          "augmentations). Fix: remove data.augment.")
    AdversarialTrainer.check_keys(cfg.train, cfg.gan)  # before any data is read or any folder written
    if kind_of_config(cfg) != "image":  # refused before the data is read
        raise DataError(f"model.name: {cfg.model.name} generates images, but data describes {kind_of_config(cfg)} "
                        "data. Fix: an image dataset or folder.")
    data = prepare_data(cfg)
    balance_classes(cfg, data)  # data.sampler: balanced draws every class equally often
    info = dict(data.info)
    scale = float(info["pixels"]["scale"])
    info["task"] = {"name": "generation"}
    info["generation"] = {"range": [-1.0, 1.0], "pixels": "2 * stored * scale - 1", "scale": scale,
                          "trained_on": "train"}
    torch.manual_seed(cfg.seed)  # the initial weights
    gan = model_from_config(cfg.model, data.input_shape, len(data.classes))
    return signed_pixels(data.train, scale, data.input_shape[0]), gan, info


def train_gan(cfg: Config, run_dir: str | Path | None = None, runs_root: str | Path = "runs") -> Any:
    """Train the GAN of ``cfg`` in a new run directory; returns the :class:`~deepworks.pipeline.Run`."""
    train, gan, info = _prepare(cfg)
    run = RunDir(run_dir or new_run_dir(cfg.name, runs_root))
    if run.checkpoint.exists() or run.summary.exists():
        raise ConfigError(f"--run-dir {run.path}: a run already lives there. Resume it with "
                          f"`deepworks train --resume {run.path}`, or choose another directory.")
    run.create()
    atomic_write(run.config, dump_config(cfg))
    run.write_json(run.data, info)
    print(f"run directory: {run.path}", flush=True)
    return _fit(cfg, train, gan, info, run, resume=False)


def resume_gan(run: RunDir, cfg: Config) -> Any:
    """Continue an interrupted GAN run from its checkpoint (exactly where it stopped)."""
    if run.summary.exists() and "epochs_run" in run.read_json(run.summary):
        print(f"{run.path}: the run is already complete; nothing to resume.", flush=True)
        gan = load_generator(run.path)[0]
        return Run(run.path, cfg, gan, list(run.read_json(run.data)["classes"]), run.read_metrics(),
                   run.read_json(run.summary))
    train, gan, info = _prepare(cfg)
    saved = run.read_json(run.data)
    if saved.get("split_fingerprint") != info["split_fingerprint"]:
        raise CheckpointError(f"{run.data}: the data has changed since this run started (its split differs); "
                              "a resumed GAN would train on other images. Start a new run.")
    if not run.checkpoint.exists():
        print(f"{run.path}: no checkpoint yet (stopped before the first one); starting the run again.", flush=True)
        return _fit(cfg, train, gan, info, run, resume=False)
    return _fit(cfg, train, gan, info, run, resume=True)


def _fit(cfg: Config, train: Any, gan: Any, info: dict[str, Any], run: RunDir, resume: bool) -> Any:
    trainer = AdversarialTrainer(gan, cfg.train, cfg.gan, run_dir=run.path, seed=cfg.seed)
    history = trainer.fit(train, resume=resume)
    if cfg.gan.quality:
        trainer.summary["quality"] = _judge(cfg, run, info, trainer)
        run.write_json(run.summary, trainer.summary)
    if cfg.report and distributed_context().is_main:
        from deepworks.pipeline import write_run_report

        write_run_report(run)  # losses, sample grids and the quality measures
    return Run(run.path, cfg, gan, list(info["classes"]), history, trainer.summary)


def _judge(cfg: Config, run: RunDir, info: dict[str, Any], trainer: AdversarialTrainer) -> dict[str, Any]:
    """Quality and mode collapse of the final generator (:mod:`deepworks.evaluation.generative`):
    ``gan.quality_samples`` samples (cgan: the classes in turn) judged by a classifier of the same
    data; printed, and a collapse also warned about."""
    from deepworks.evaluation.generative import judge_generator, render_quality
    from deepworks.judge import judge_for

    judge = judge_for(cfg, judge=cfg.gan.judge, data_info=info, progress=cfg.train.progress)
    n = cfg.gan.quality_samples
    gan = trainer.gan
    labels = torch.arange(n) % gan.num_classes if gan.conditional else None
    z = torch.randn(n, gan.latent, generator=torch.Generator().manual_seed(cfg.seed + 1))
    sampler = trainer.sampler()
    sampler.eval()
    with torch.no_grad():
        samples = torch.cat([
            sampler(z[i : i + 256].to(trainer.device), labels[i : i + 256].to(trainer.device) if labels is not None else None)
            .float().cpu() for i in range(0, n, 256)
        ])
    result = judge_generator(samples.clamp(-1, 1), judge, labels=labels)
    if cfg.train.progress != "none":
        print(render_quality(result), flush=True)
    return result


def load_generator(run_dir: str | Path) -> tuple[Any, Config, dict[str, Any]]:
    """The GAN of a run with its trained (or averaged, with train.ema) generator weights, its
    config and data record. A run that is not a GAN run is refused."""
    run = existing_run(run_dir)
    cfg = load_run_config(run.config)
    if not is_adversarial(cfg.model.name):
        raise ConfigError(f"generate: {run.path} is a {cfg.model.name} run, not a GAN; generate needs a run of "
                          "model dcgan, cgan or wgan-gp. Fix: use predict for this run, or train a GAN.")
    info = run.read_json(run.data)
    gan = model_from_config(cfg.model, tuple(info["input_shape"]), len(info["classes"]))
    path = run.path / GENERATOR_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the run has not finished an epoch yet. "
                              f"Resume it with `deepworks train --resume {run.path}`.")
    load_model_weights(gan.generator, path)
    gan.eval()
    return gan, cfg, info


def _label_index(label: int | str, classes: list[str]) -> int:
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    try:
        k = int(label)
    except (TypeError, ValueError):
        k = -1
    if isinstance(label, bool) or not 0 <= k < len(classes) or (isinstance(label, float) and label != k):
        shown = ", ".join(f"{i}: {name}" for i, name in enumerate(classes))
        raise ConfigError(f"--label: expected a class index 0..{len(classes) - 1} or a class name, got {label!r}. "
                          f"Classes: {shown}.")
    return k


def generate(
    run_dir: str | Path, n: int, label: int | str | None = None, seed: int = 0, *, out: str | Path | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """``n`` samples of a GAN run's generator: float32 (n, C, H, W) in [-1, 1] on the CPU
    (``(images + 1) / 2`` is [0, 1]). The noise comes from ``seed`` alone, so the same call gives
    the same images. A conditional run (cgan) makes class ``label`` (index or name), or, without
    one, the classes in turn (sample i is class i mod K); an unconditional run takes no label.

    ``out``: a folder that gets one PNG per sample (``sample-0000.png``, ..., 8-bit) and ``grid.png``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n: expected the number of samples to generate, a whole number of at least 1, got {n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed: expected a whole number of at least 0, got {seed!r}.")
    gan, cfg, info = load_generator(run_dir)
    classes = list(info["classes"])
    if not gan.conditional and label is not None:
        raise ConfigError(f"--label: {run_dir} is an unconditional GAN ({cfg.model.name}); it cannot make a chosen "
                          "class. Fix: drop --label, or train a cgan.")
    labels = None
    if gan.conditional:
        labels = (torch.full((n,), _label_index(label, classes), dtype=torch.long) if label is not None
                  else torch.arange(n) % gan.num_classes)
    z = torch.randn(n, gan.latent, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = torch.cat([
            gan.generator(z[i : i + batch_size], labels[i : i + batch_size] if labels is not None else None).float()
            for i in range(0, n, batch_size)
        ])
    if out is not None:
        _write_pngs(images, Path(out))
    return images


def _write_pngs(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder}: a file, not a folder. Fix: give a folder for the PNGs.")
    if folder.is_dir() and any(folder.glob("sample-*.png")):
        raise ConfigError(f"--out {folder}: it already holds sample PNGs (from another call?). Fix: give an empty "
                          "or new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)  # (N, C, H, W)
    width = max(4, len(str(len(images) - 1)))
    for i, img in enumerate(pixels):
        array = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"sample-{i:0{width}d}.png")
    columns = max(1, round(len(images) ** 0.5))
    atomic_write(folder / "grid.png", sample_grid(images, columns))
