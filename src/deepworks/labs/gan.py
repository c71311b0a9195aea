"""The ``gan`` lab: a tiny DCGAN on the 8x8 digits learns to draw them; the same GAN with a far
too fast generator collapses onto one digit, and the toolkit's judge flags it."""

from __future__ import annotations

import warnings

import numpy as np

from deepworks.labs import LabContext, lab


def _config(lab: LabContext, name: str, epochs: int, g_lr: float, d_lr: float, judge: str) -> dict:
    adam = {"name": "adam", "betas": [0.5, 0.999]}
    return {
        "name": name,
        "seed": lab.seed,
        "data": {"dataset": "digits"},
        "model": {"name": "dcgan", "latent": 32, "g_width": 32, "d_width": 32},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {**adam, "lr": g_lr}},
        "gan": {"d_optimizer": {**adam, "lr": d_lr}, "judge": judge, "quality_samples": lab.pick(200, 1000)},
        "report": False,
    }


def _grid(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


@lab("gan", "a tiny DCGAN on digits: samples over training, G and D losses, and a collapsed run flagged by the judge")
def gan(lab: LabContext) -> None:
    from torchvision.utils import make_grid

    import deepworks
    from deepworks.evaluation.generative import ModeCollapseWarning
    from deepworks.judge import judge_for

    # --fast: 3 epochs with both learning rates at 5e-4 (2.5x DCGAN's 2e-4) cover 6 to 9 of the 10 digits
    # over seeds 0-3, as 5 epochs at 2e-4 did (6 with seed 0); the collapsed run's generator stays 50x too fast
    epochs = lab.pick(3, 20)
    lr = lab.pick(5e-4, 2e-4)
    judge_epochs = lab.pick(3, 12)
    lab.step(f"the judge: a cnn classifier of the digits ({judge_epochs} epochs), used to count the digits a GAN draws")
    judge = judge_for({"data": {"dataset": "digits"}}, epochs=judge_epochs, cache_dir=lab.runs / "judge")

    runs, warned = {}, {}
    g_lrs = {"healthy": lr, "collapsed": lab.pick(2.5e-2, 1e-2)}  # the collapsed run: a generator lr 50x too high
    for kind, g_lr in g_lrs.items():
        lab.step(f"{kind} DCGAN: {epochs} epochs on the digits' training split, generator lr {g_lr:g}, discriminator lr {lr:g}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ModeCollapseWarning)
            runs[kind] = lab.train(_config(lab, f"gan-{kind}", epochs, g_lr, lr, str(judge.run_dir)), f"gan-{kind}")
        warned[kind] = any(issubclass(w.category, ModeCollapseWarning) for w in caught)

    quality = {k: r.summary["quality"] for k, r in runs.items()}
    losses = {k: {"g_loss": [h["g_loss"] for h in r.history], "d_loss": [h["d_loss"] for h in r.history],
                  "d_real": [h["d_real"] for h in r.history], "d_fake": [h["d_fake"] for h in r.history]}
              for k, r in runs.items()}
    classes = list(quality["healthy"]["class_counts"])
    lab.record(
        epochs=epochs, judge_accuracy=judge.accuracy, generator_lr=g_lrs, discriminator_lr=lr,
        losses=losses,
        classes_covered={k: q["classes_covered"] for k, q in quality.items()},
        entropy_normalized={k: q["entropy_normalized"] for k, q in quality.items()},
        largest_share={k: q["largest_share"] for k, q in quality.items()},
        spread_ratio={k: q["spread_ratio"] for k, q in quality.items()},
        frechet_distance={k: q["frechet_distance"] for k, q in quality.items()},
        frechet_real_halves=quality["healthy"]["frechet_real_halves"],
        collapse_flagged={k: int(q["collapse"]["collapsed"]) for k, q in quality.items()},
        class_counts={k: [q["class_counts"][c] for c in classes] for k, q in quality.items()},
    )

    # samples over training: the grids the run directory keeps per epoch (fixed noise), then the
    # final generator through deepworks.generate
    shown = sorted({1, max(1, epochs // 3), max(1, 2 * epochs // 3)})
    fig, axes = lab.figure(2, len(shown) + 1, figsize=(2.4 * (len(shown) + 1), 5.2))
    for row, kind in enumerate(runs):
        for col, e in enumerate(shown):
            axes[row, col].imshow(_grid(runs[kind].dir / "samples" / f"epoch-{e:03d}.png"), cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_title(f"{kind}: epoch {e}", fontsize=9)
        final = deepworks.generate(runs[kind].dir, n=64, seed=lab.seed)
        grid = make_grid(((final + 1) / 2).clamp(0, 1), nrow=8, padding=2, pad_value=1.0)[0]
        axes[row, -1].imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        q = quality[kind]
        axes[row, -1].set_title(f"{kind}: epoch {epochs} (generate)\n{q['classes_covered']}/10 digits, "
                                f"largest {q['largest_share']:.0%}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    lab.save(fig, "gan_samples")

    fig, axes = lab.figure(1, 3, figsize=(13, 3.8))
    x = np.arange(1, epochs + 1)
    for ax, kind in zip(axes[:2], runs):
        ax.plot(x, losses[kind]["g_loss"], marker="o", ms=3, label="generator loss")
        ax.plot(x, losses[kind]["d_loss"], marker="o", ms=3, label="discriminator loss")
        ax.axhline(np.log(2), color="gray", ls=":", lw=1, label="log 2, log 4: D cannot tell")
        ax.axhline(np.log(4), color="gray", ls=":", lw=1)
        ax.set_title(f"{kind} (generator lr {g_lrs[kind]:g})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss over the epoch (BCE)")
        ax.legend(fontsize=8)
    width = 0.4
    pos = np.arange(len(classes))
    for i, kind in enumerate(runs):
        counts = [quality[kind]["class_counts"][c] for c in classes]
        axes[2].bar(pos + (i - 0.5) * width, counts, width, label=kind)
    axes[2].axhline(quality["healthy"]["samples"] / len(classes), color="gray", ls=":", lw=1, label="even share")
    axes[2].set_xticks(pos, classes)
    axes[2].set_xlabel("digit the judge sees")
    axes[2].set_ylabel(f"samples (of {quality['healthy']['samples']})")
    axes[2].set_title("what the final generators draw", fontsize=10)
    axes[2].legend(fontsize=8)
    lab.save(fig, "gan_losses_and_classes")

    h, c = quality["healthy"], quality["collapsed"]
    lab.say(f"A DCGAN trained {epochs} epochs on the 8x8 digits draws {h['classes_covered']} of 10 digits as a "
            f"classifier judge sees them (judge test accuracy {judge.accuracy:.3f}); the most common digit takes "
            f"{h['largest_share']:.0%} of {h['samples']} samples and the class entropy is "
            f"{h['entropy_normalized']:.2f} of its maximum.")
    # "near balance": within 35% of log 2 (generator) and log 4 (discriminator), where D = 0.5 everywhere
    near = {k: abs(l["g_loss"][-1] / np.log(2) - 1) < 0.35 and abs(l["d_loss"][-1] / np.log(4) - 1) < 0.35
            for k, l in losses.items()}
    where = {k: "near" if near[k] else "away from" for k in near}
    lab.say(f"Its losses end at generator {losses['healthy']['g_loss'][-1]:.3f} and discriminator "
            f"{losses['healthy']['d_loss'][-1]:.3f}, {where['healthy']} log 2 = 0.693 and log 4 = 1.386 where the "
            f"discriminator cannot tell real from fake; the collapsed run's end at {losses['collapsed']['g_loss'][-1]:.3f} "
            f"and {losses['collapsed']['d_loss'][-1]:.3f}, {where['collapsed']} them"
            + (": both look balanced, so a GAN's losses do not show collapse, its samples and their variety do."
               if near["healthy"] and near["collapsed"] else
               ": a GAN's losses say little about sample quality either way; its samples and their variety do."))
    lab.say(f"The same GAN with the generator's learning rate at {g_lrs['collapsed']:g} instead of "
            f"{g_lrs['healthy']:g} (train.optimizer.lr; gan.d_optimizer.lr kept) draws {c['classes_covered']} of 10 "
            f"digits, {c['largest_share']:.0%} of its samples are the digit {c['largest_class']}, entropy "
            f"{c['entropy_normalized']:.2f}, spread {c['spread_ratio']:.2f} of the real images' (healthy "
            f"{h['spread_ratio']:.2f}).")
    flagged = {k: ("flagged as mode collapse" if q["collapse"]["collapsed"] else "not flagged") for k, q in quality.items()}
    lab.say(f"The toolkit's collapse check (gan.quality, on by default) says: healthy run {flagged['healthy']}, "
            f"collapsed run {flagged['collapsed']}"
            + (" (with a ModeCollapseWarning)" if warned["collapsed"] else "")
            + f"; Fréchet distance on the judge's features {h['frechet_distance']:.1f} versus "
            f"{c['frechet_distance']:.1f} (two halves of the real images: {h['frechet_real_halves']:.1f}).")
