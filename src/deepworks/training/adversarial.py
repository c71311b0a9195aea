"""The adversarial loop: a GAN's generator and discriminator trained against each other.

It stands beside :class:`~deepworks.training.Trainer` and shares its parts: the runtime
(device, precision, seeding, determinism, per-epoch shuffle order), the in-memory batching by
index, the run directory (atomic writes, one safetensors checkpoint with the JSON loop state,
metrics.jsonl) and the progress output. What differs is the step::

    D step  (every batch)        bce:         -log D(x) - log(1 - D(G(z)))   (real target gan.real_label)
                                 wasserstein: D(G(z)) - D(x) + gp_weight * (|grad D(x_hat)| - 1)^2
    G step  (every n_critic-th)  bce:         -log D(G(z))                   (non-saturating)
                                 wasserstein: -D(G(z))

The generator step reuses the batch's fakes (one generator forward per step). Images are in
[-1, 1]; ``gan.instance_noise`` adds Gaussian noise to everything the discriminator sees,
annealed linearly to 0 over the run. Each epoch ends with a sample grid from a fixed noise
batch (``samples/epoch-003.png``; cgan: one class per row), so epochs and resumed runs compare.

>>> import torch
>>> from deepworks import create_model
>>> gan = create_model("dcgan", input_shape=(1, 8, 8), num_classes=10, latent=8, g_width=8, d_width=8)
>>> x, y = torch.rand(64, 1, 8, 8) * 2 - 1, torch.arange(64) % 10
>>> history = AdversarialTrainer(gan, {"epochs": 1, "progress": "none", "batch_size": 16}).fit((x, y))
>>> sorted(k for k in history[0] if k.endswith("loss"))
['d_loss', 'g_loss']
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from deepworks.config import GAN_MODELS, GANConfig, TrainConfig, format_errors, resolve_components
from deepworks.data.loaders import TensorData, as_data, iterate_batches
from deepworks.errors import CheckpointError, ConfigError, TrainingError
from deepworks.runs import (
    RunDir, atomic_write, pack_state, read_checkpoint, restore_rng_state, rng_state, save_tensors, unpack_state, versions,
    write_checkpoint,
)
from deepworks.runtime import distributed_context, resolve_device, resolve_precision, seed_everything, set_deterministic
from deepworks.training.callbacks import ProgressLogger
from deepworks.training.optim import build_optimizer
from deepworks.training.trainer import MODEL_FORMAT

__all__ = ["AdversarialTrainer", "gradient_penalty", "ema_with_warmup", "fixed_noise", "sample_grid", "GENERATOR_FILE"]

GENERATOR_FILE = "generator.safetensors"

# TrainConfig keys the adversarial loop has no use for: a value other than the default is refused,
# not silently ignored (the fix names the key to use instead, if any)
_UNUSED = {
    "schedule": "remove it (the GAN loop keeps its learning rates constant)",
    "warmup_steps": "remove it",
    "warmup": "remove it",
    "clip_grad_norm": "remove it",
    "l1": "remove it",
    "l2": "remove it (or set the optimizer's weight_decay)",
    "log_gradients": "remove it",
    "tensorboard": "remove it",
    "track": "remove it (a GAN run logs to its run directory only)",
    "label_smoothing": "use gan.real_label (e.g. 0.9, one-sided label smoothing)",
    "val_every": "remove it (a GAN is not validated each epoch)",
    "tta": "remove it",
    "loss": "remove it (model.name chooses the loss: bce for dcgan/cgan, wasserstein for wgan-gp)",
    "class_weights": "remove it (data.sampler: balanced draws classes equally often)",
    "early_stopping": "remove it",
    "compile": "remove it",
}


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """WGAN-GP's penalty ``mean((|grad_x D(x_hat)|_2 - 1)^2)`` at ``x_hat = eps * real + (1 - eps) * fake``
    (``eps`` one value per sample, shaped (B, 1, 1, 1)); differentiable in the critic's weights."""
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat, labels) if labels is not None else critic(x_hat)
    (grad,) = torch.autograd.grad(out.float().sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).float().norm(2, dim=1) - 1) ** 2).mean()


def ema_with_warmup(decay: float):
    """An ``AveragedModel`` avg_fn: decay ``min(decay, (1 + n) / (10 + n))`` after n updates, so the
    average forgets the random initial generator within the first hundreds of steps (a plain 0.999
    would still hold 45% of it after 800 steps: grey samples)."""
    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged * d + current * (1.0 - d)
    return avg


def fixed_noise(gan: nn.Module, seed: int, columns: int = 8) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The noise (and labels) of the per-epoch sample grid: drawn from their own generator seeded
    by ``seed``, so every epoch, and a resumed run, shows the same points. Returns (z, labels,
    columns): an unconditional GAN gets ``columns`` x ``columns`` samples, a conditional one a
    row of ``columns`` per class."""
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    if gan.conditional:
        labels = torch.arange(gan.num_classes).repeat_interleave(columns)  # row k: class k
        return torch.randn(len(labels), gan.latent, generator=g), labels, columns
    return torch.randn(columns * columns, gan.latent, generator=g), None, columns


def sample_grid(images: torch.Tensor, columns: int) -> bytes:
    """PNG bytes of a grid of images in [-1, 1] (torchvision's make_grid, 2-pixel padding)."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(((images.float() + 1) / 2).clamp(0, 1), nrow=columns, padding=2, pad_value=1.0)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class _Progress(ProgressLogger):
    def describe(self, trainer: Any, logs: dict[str, Any]) -> str:
        shown = [f"g_loss {logs['g_loss']:.4f}", f"d_loss {logs['d_loss']:.4f}"]
        if "wasserstein" in logs:
            shown += [f"W {logs['wasserstein']:.4f}", f"gp {logs['gp']:.4f}"]
        else:
            shown += [f"D(real) {logs['d_real']:.3f}", f"D(fake) {logs['d_fake']:.3f}"]
        return "  ".join(shown)


class AdversarialTrainer:
    """Train a :class:`~deepworks.models.gan.GAN` with checkpoints, sample grids and exact resume.

    ``config`` holds the training keys (:class:`TrainConfig`: epochs, batch size, the generator's
    ``optimizer``, precision, ema, ...), ``gan_config`` the loop's own (:class:`GANConfig`, the
    family's defaults when None). Data is ``(x, y)`` with x already in [-1, 1], or a
    :class:`TensorData` whose transform puts it there; ``y`` are class labels (cgan's conditions).
    """

    # the epoch's running sums, in this order (a tensor, saved with mid-epoch checkpoints)
    SUMS = ("d_loss", "g_loss", "d_real", "d_fake", "gp")

    def __init__(
        self,
        gan: nn.Module,
        config: TrainConfig | Mapping[str, Any] | None = None,
        gan_config: GANConfig | Mapping[str, Any] | None = None,
        *,
        run_dir: str | Path | None = None,
        seed: int = 0,
    ):
        family = "wgan-gp" if gan.loss == "wasserstein" else "dcgan"
        raw = config.model_dump() if isinstance(config, TrainConfig) else {**_family_train(family), **dict(config or {})}
        graw = gan_config.model_dump() if isinstance(gan_config, GANConfig) else {**GAN_MODELS[family], **dict(gan_config or {})}
        try:
            config = TrainConfig.model_validate(raw)
            gan_config = GANConfig.model_validate(graw)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc.errors(), "AdversarialTrainer config", (), TrainConfig)) from None
        self.config = resolve_components(config, ("train",), "train")
        self.gan_config = resolve_components(gan_config, ("gan",), "gan")
        self.check_keys(self.config, self.gan_config)
        if distributed_context().enabled:
            raise ConfigError("GAN training runs in one process; launch it without torchrun, --nproc or --nnodes.")
        self.gan, self.seed = gan, seed
        self.run = RunDir(run_dir).create() if run_dir is not None else None
        self.device = resolve_device(self.config.device)
        self.callbacks = [_Progress(self.config.progress)]
        self.history: list[dict[str, Any]] = []
        self.epoch = self.step_in_epoch = self.global_step = self.steps_per_epoch = 0
        self.wall_seconds = 0.0
        self.summary: dict[str, Any] = {}
        self.stop_training = False

    @staticmethod
    def check_keys(config: TrainConfig, gan_config: GANConfig) -> None:
        """Refuse training keys the adversarial loop would ignore (a ConfigError naming each and its fix)."""
        defaults = TrainConfig()
        bad = [f"train.{key}: {fix}" for key, fix in _UNUSED.items() if getattr(config, key) != getattr(defaults, key)]
        if config.optimizer.params.get("lr") == "auto" or gan_config.d_optimizer.params.get("lr") == "auto":
            bad.append("train.optimizer.lr / gan.d_optimizer.lr: auto: give a number (e.g. 2e-4; the range test "
                       "is for single models)")
        if bad:
            raise ConfigError("GAN training does not use these keys:\n  " + "\n  ".join(bad))

    # ------------------------------------------------------------------ public

    def fit(self, train: Any, *, resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs; with ``resume=True`` continue from the run
        directory's checkpoint and end with the same weights as an uninterrupted run."""
        cfg = self.config
        seed_everything(self.seed)
        set_deterministic(cfg.deterministic)
        data = as_data(train, "train data")
        data = data.to(self.device) if isinstance(data, TensorData) else data
        self._prepare(data)
        if resume:
            self._load_checkpoint()
        elif self.run is not None:
            self.run.metrics.unlink(missing_ok=True)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch(data)
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)
        self._write_summary()
        return self.history

    def sampler(self) -> nn.Module:
        """The generator that makes samples: the moving average with train.ema, else the trained one."""
        return self.ema.module if self.ema is not None else self.gan.generator

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """The fixed noise batch through the sampling generator (eval mode, fp32), on the CPU."""
        g = self.sampler()
        was = g.training
        g.eval()
        labels = self.fixed_labels.to(self.device) if self.fixed_labels is not None else None
        out = g(self.fixed_z.to(self.device), labels).float().cpu()
        g.train(was)
        return out

    def log(self, message: str) -> None:
        if self.config.progress != "none":
            print(message, flush=True)

    # ------------------------------------------------------------------ the loop

    def _prepare(self, data: Any) -> None:
        cfg, gcfg, gan = self.config, self.gan_config, self.gan
        gan.to(self.device)
        name = cfg.precision
        if name == "fp16":
            raise ConfigError("train.precision: fp16 needs loss scaling, which the GAN loop does not do. "
                              "Fix: train.precision: bf16, fp32 or auto.")
        self.precision = resolve_precision(name, self.device, gan, cfg.channels_last)
        if self.precision.name == "fp16":  # auto on a GPU without bf16
            self.precision = resolve_precision("fp32", self.device, gan, cfg.channels_last)
        if self.precision.channels_last:
            gan.to(memory_format=torch.channels_last)
        self.g_opt = build_optimizer(cfg.optimizer.name, gan.generator.parameters(), device=self.device,
                                     **cfg.optimizer.params)
        self.d_opt = build_optimizer(gcfg.d_optimizer.name, gan.discriminator.parameters(), device=self.device,
                                     **gcfg.d_optimizer.params)
        n = len(data)
        if gan.conditional:
            y = getattr(data, "y", None)
            if isinstance(y, torch.Tensor) and len(y) and int(y.max()) >= gan.num_classes:
                raise ConfigError(f"train data: labels go up to {int(y.max())}, but the cgan was built for "
                                  f"{gan.num_classes} classes.")
        if n < 2:
            raise ConfigError(f"train data: a GAN needs at least 2 training images (batch norm), got {n}.")
        # whole batches only: a last batch of one image would break batch norm, and a small one is noisy
        if cfg.batch_size == "auto":
            raise ConfigError("train.batch_size: auto picks a classifier's batch from its memory estimate; a GAN's two "
                              "models train in turn. Fix: a number, e.g. train.batch_size: 64.")
        if cfg.accumulate > 1:
            raise ConfigError(f"train.accumulate: {cfg.accumulate}: a GAN's generator and critic step in turn on every "
                              "batch, so their gradients are not accumulated. Fix: remove train.accumulate (raise "
                              "train.batch_size instead).")
        self.batch_size = min(cfg.batch_size, n)
        self.steps_per_epoch = n // self.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.ema = None
        if cfg.ema:  # the generator's moving average (batch-norm statistics too), warmed up
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(gan.generator, avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
        z, labels, self.grid_columns = fixed_noise(gan, self.seed, gcfg.grid_columns)
        self.fixed_z, self.fixed_labels = z, labels
        self._sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=self.device)
        self._counts = [0, 0]  # discriminator steps, generator steps in the running epoch

    def _noise_std(self) -> float:
        """Instance noise now: gan.instance_noise at the first step, 0 at the last."""
        return self.gan_config.instance_noise * max(0.0, 1.0 - self.global_step / max(1, self.total_steps))

    def _step(self, real: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One discriminator step, and a generator step every n_critic-th step."""
        gan, gcfg, p = self.gan, self.gan_config, self.precision
        G, D = gan.generator, gan.discriminator
        wasserstein = gan.loss == "wasserstein"
        sigma = self._noise_std()
        noisy = (lambda x: x + sigma * torch.randn_like(x)) if sigma > 0 else (lambda x: x)  # noqa: E731
        z = torch.randn(len(real), gan.latent, device=self.device)
        with p.autocast():
            fake = G(z, labels)  # (B, C, H, W) in [-1, 1]
            d_real = D(p.memory_format(noisy(real)), labels).float()
            d_fake = D(p.memory_format(noisy(fake.detach())), labels).float()
        if wasserstein:
            eps = torch.rand(len(real), 1, 1, 1, device=self.device)
            gp = gradient_penalty(D, real, fake.float(), eps, labels) if gcfg.gp_weight else torch.zeros((), device=self.device)
            d_loss = d_fake.mean() - d_real.mean() + gcfg.gp_weight * gp
        else:
            gp = torch.zeros((), device=self.device)
            d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, gcfg.real_label))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        sums = torch.stack([
            d_loss.detach(), torch.zeros((), device=self.device),
            (d_real if wasserstein else torch.sigmoid(d_real)).detach().mean(),
            (d_fake if wasserstein else torch.sigmoid(d_fake)).detach().mean(), gp.detach(),
        ]).double()
        self._counts[0] += 1
        if (self.global_step + 1) % gcfg.n_critic == 0:
            with p.autocast():
                out = D(p.memory_format(noisy(fake)), labels).float()
            g_loss = -out.mean() if wasserstein else F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()
            if self.ema is not None:
                self.ema.update_parameters(G)
            sums[1] = g_loss.detach().double()
            self._counts[1] += 1
        self._sums += sums

    def _run_epoch(self, data: Any) -> None:
        cfg = self.config
        epoch = self.epoch + 1
        started = segment = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_begin(self, epoch)
        self.gan.train()
        batches = iterate_batches(data, self.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
                                  start_batch=self.step_in_epoch, device=self.device)
        for xb, yb in batches:
            if self.step_in_epoch >= self.steps_per_epoch:
                break  # the last, incomplete batch
            labels = yb.to(self.device).long() if self.gan.conditional else None
            self._step(xb.to(self.device, torch.float32), labels)
            self.global_step += 1
            self.step_in_epoch += 1
            for cb in self.callbacks:
                cb.on_batch_end(self, self.global_step)
            every = cfg.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._check_finite(epoch)
                self.wall_seconds += time.perf_counter() - segment
                segment = time.perf_counter()
                self._save_checkpoint()
        self._check_finite(epoch)
        d_steps, g_steps = self._counts
        sums = self._sums.tolist()
        logs: dict[str, Any] = {"epoch": epoch, "step": self.global_step}
        logs["d_loss"] = sums[0] / max(1, d_steps)
        logs["g_loss"] = sums[1] / max(1, g_steps)
        logs["d_real"], logs["d_fake"] = sums[2] / max(1, d_steps), sums[3] / max(1, d_steps)
        if self.gan.loss == "wasserstein":
            logs["wasserstein"] = logs["d_real"] - logs["d_fake"]  # the critic's estimate of W(real, fake)
            logs["gp"] = sums[4] / max(1, d_steps)
        logs["g_steps"], logs["d_steps"] = g_steps, d_steps
        if self.gan_config.instance_noise:
            logs["instance_noise"] = self._noise_std()
        self.epoch, self.step_in_epoch = epoch, 0
        self._sums.zero_()
        self._counts = [0, 0]
        self.wall_seconds += time.perf_counter() - segment
        logs["seconds"] = round(time.perf_counter() - started, 3)
        self.history.append(logs)
        if self.run is not None:
            # samples and the generator first, the metrics line, the checkpoint last (the commit point)
            png = self.run.path / "samples" / f"epoch-{epoch:03d}.png"
            atomic_write(png, sample_grid(self.samples(), self.grid_columns))
            meta = {"format": MODEL_FORMAT, "epoch": str(epoch), "ema": str(self.ema is not None)}
            save_tensors(self.run.path / GENERATOR_FILE, self.sampler().state_dict(), metadata=meta)
            self.run.append_metrics(logs)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, logs)
        self._save_checkpoint()

    def _check_finite(self, epoch: int) -> None:
        if not bool(torch.isfinite(self._sums).all()):
            kept = (f"The last good checkpoint ({self.run.checkpoint}, epoch {self.epoch}) is kept."
                    if self.run is not None and self.run.checkpoint.exists() else "No checkpoint was written before it.")
            raise TrainingError(
                f"GAN training diverged: a loss became NaN or inf in epoch {epoch} (by step {self.global_step}). {kept} "
                "Fix: lower train.optimizer.lr and gan.d_optimizer.lr, or train.precision: fp32."
            )

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self) -> None:
        if self.run is None:
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.gan.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors["sums"] = self._sums
        state = {
            "kind": "adversarial",
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "wall_seconds": self.wall_seconds,
            "counts": list(self._counts),
            "g_optimizer": pack_state(self.g_opt.state_dict(), tensors, "g_optimizer"),
            "d_optimizer": pack_state(self.d_opt.state_dict(), tensors, "d_optimizer"),
            "rng": pack_state(rng_state(), tensors, "rng"),
        }
        write_checkpoint(self.run.checkpoint, tensors, state)

    def _load_checkpoint(self) -> None:
        if self.run is None:
            raise CheckpointError("resume: the AdversarialTrainer has no run_dir to resume from.")
        path = self.run.checkpoint
        tensors, state = read_checkpoint(path)
        try:
            if state.get("kind") != "adversarial":
                raise ValueError("it is not a GAN checkpoint")
            self.gan.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            if self.ema is not None:
                self.ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
            self.g_opt.load_state_dict(unpack_state(state["g_optimizer"], tensors))
            self.d_opt.load_state_dict(unpack_state(state["d_optimizer"], tensors))
            rng = unpack_state(state["rng"], tensors)
            self._sums.copy_(tensors["sums"])
            self._counts = [int(c) for c in state["counts"]]
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step, self.wall_seconds = int(state["global_step"]), float(state["wall_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: the checkpoint does not match this run's GAN or is damaged "
                f"({str(exc).splitlines()[0][:160]}); refused. Start the run again."
            ) from None
        restore_rng_state(rng)
        self.history = self.run.truncate_metrics(self.epoch)
        self.log(f"resumed {self.run.path} at epoch {self.epoch} step {self.step_in_epoch}")

    def _write_summary(self) -> None:
        last = self.history[-1] if self.history else {}
        self.summary = {
            "task": "generation",
            "model": {"loss": self.gan.loss, "conditional": self.gan.conditional, "latent": self.gan.latent},
            "epochs_run": self.epoch,
            "steps": self.global_step,
            "final": {k: last[k] for k in ("g_loss", "d_loss", "d_real", "d_fake", "wasserstein", "gp") if k in last},
            "wall_seconds": round(self.wall_seconds, 3),
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.precision.channels_last,
            "ema": self.config.ema,
            "samples": f"samples/epoch-{self.epoch:03d}.png",
            "generator": GENERATOR_FILE,
            "versions": versions(),
        }
        if self.run is not None:
            self.run.write_json(self.run.summary, self.summary)


def _family_train(family: str) -> dict[str, Any]:
    """The training defaults of a GAN family (``config.FAMILY_TRAIN_DEFAULTS``), for a loop used on its own."""
    from deepworks.config import FAMILY_TRAIN_DEFAULTS

    return dict(FAMILY_TRAIN_DEFAULTS[family])

