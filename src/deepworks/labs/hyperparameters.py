"""The ``hyperparameters`` lab: a learning rate too small, about right and too large (three
training runs), and the learning-rate range test (deepworks.lr_find) as a small search."""

from __future__ import annotations

import json
import math

from deepworks.labs import LabContext, lab

# AdamW learning rates: too small, about right, too large
RATES = {"too small": 1e-4, "about right": 3e-3, "too large": 1.0}
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes


def _history(run_dir) -> list[dict]:
    """The epochs in metrics.jsonl (also those of a run that stopped on a divergence)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@lab("hyperparameters", "a learning rate too small, right and too large (training curves), and deepworks.lr_find's suggestion")
def hyperparameters(lab: LabContext) -> None:
    import deepworks
    from deepworks.errors import TrainingError

    epochs = lab.pick(3, 10)
    config = {
        "name": "lr", "seed": lab.seed,
        "data": {"dataset": "digits"},
        "model": {"name": "mlp", "hidden": [64], "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3}, "monitor": "last"},
        "report": False,
    }
    runs: dict[str, dict] = {}

    def train(label: str, lr: float) -> None:
        lab.step(f"deepworks.train with train.optimizer.lr = {lr:g} ({label}), {epochs} epochs")
        name = f"lr-{lr:g}"
        stopped = 0  # 1 when the Trainer stopped on a NaN/inf loss (a TrainingError)
        try:
            lab.train(config, name, train={"optimizer": {"name": "adamw", "lr": lr}})
        except TrainingError:
            stopped = 1
        hist = _history(lab.runs / name)
        losses = [h["train_loss"] for h in hist if math.isfinite(h.get("train_loss", math.nan))]
        accs = [h["val_accuracy"] for h in hist if math.isfinite(h.get("val_accuracy", math.nan))]
        final = losses[-1] if losses and not stopped else float("inf")
        # diverged or stuck: ended no better than a uniform guess over the 10 classes (or stopped on NaN)
        failed = int(stopped or final >= CHANCE_LOSS * 0.95)
        runs[label] = {
            "lr": lr, "train_loss": losses, "val_accuracy": accs, "stopped_on_nan": stopped, "failed": failed,
            "final_train_loss": min(final, 1e6), "worst_train_loss": min(max(losses, default=1e6), 1e6),
            "final_val_accuracy": accs[-1] if accs else 0.0,
        }

    for label, lr in RATES.items():
        train(label, lr)

    steps = lab.pick(60, 200)
    lab.step(f"deepworks.lr_find: the learning rate grows from 1e-7 to 10 over {steps} steps on a copy of the model")
    found = deepworks.lr_find(config, out=lab.runs / "lr_find.png", steps=steps)
    suggestion = float(found["suggestion"])
    train("lr_find's suggestion", suggestion)

    lab.record(
        epochs=epochs, chance_loss=CHANCE_LOSS, lr_find_suggestion=suggestion, lr_find_min_at=float(found["min_lr_at"]),
        lr_find_steps=int(found["steps"]),
        runs={label: {k: v for k, v in r.items()} for label, r in runs.items()},
    )

    fig, axes = lab.figure(1, 3, figsize=(14, 4.2))
    colours = {"too small": "tab:blue", "about right": "tab:green", "too large": "tab:red",
               "lr_find's suggestion": "tab:purple"}
    for label, r in runs.items():
        style = {"color": colours[label], "marker": "o", "ms": 3, "ls": "--" if label.startswith("lr_find") else "-"}
        x = range(1, len(r["train_loss"]) + 1)
        axes[0].plot(x, r["train_loss"], label=f"lr {r['lr']:.2g} ({label})", **style)
        axes[1].plot(range(1, len(r["val_accuracy"]) + 1), r["val_accuracy"], label=f"lr {r['lr']:.2g}", **style)
    axes[0].axhline(CHANCE_LOSS, color="gray", lw=0.8, ls=":", label="a uniform guess (ln 10)")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss (log scale)")
    axes[0].set_title("training loss per epoch")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation accuracy")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("validation accuracy per epoch")
    axes[1].legend(fontsize=7)
    axes[2].plot(found["lrs"], found["losses"], color="lightgray", lw=0.8, label="loss per step")
    axes[2].plot(found["lrs"], found["smoothed"], color="black", lw=1.2, label="smoothed")
    for label, lr in RATES.items():
        axes[2].axvline(lr, color=colours[label], lw=1, label=f"{label} ({lr:g})")
    axes[2].axvline(suggestion, color="tab:purple", ls="--", lw=1.2, label=f"suggestion ({suggestion:.2g})")
    axes[2].set_xscale("log")
    top = max(found["smoothed"]) if found["smoothed"] else 5
    axes[2].set_ylim(0, min(top * 1.1, 4 * CHANCE_LOSS))
    axes[2].set_xlabel("learning rate (log scale)")
    axes[2].set_ylabel("training loss")
    axes[2].set_title("deepworks.lr_find: the range test")
    axes[2].legend(fontsize=7)
    lab.save(fig, "learning_rates")

    small, right, large, sug = (runs[k] for k in ("too small", "about right", "too large", "lr_find's suggestion"))
    # the labels are what the rates were chosen to show; the verdicts below come from this run's numbers
    slower = small["final_train_loss"] > right["final_train_loss"]
    lab.say(f"With AdamW on digits for {epochs} epochs, lr {small['lr']:g} "
            + ("is too small" if slower else "was meant to be too small")
            + f": the training loss goes from {small['train_loss'][0]:.2f} to {small['final_train_loss']:.2f} (a uniform "
            f"guess is {CHANCE_LOSS:.2f}; lr {right['lr']:g} ends at {right['final_train_loss']:.3f}) and validation "
            f"accuracy ends at {small['final_val_accuracy']:.1%}.")
    best = min(runs[k]["final_train_loss"] for k in RATES) == right["final_train_loss"]
    lab.say(f"lr {right['lr']:g} " + ("is about right, the lowest final loss of the three" if best else
                                      "was meant to be about right, but is not the lowest final loss of the three")
            + f": loss {right['train_loss'][0]:.2f} -> {right['final_train_loss']:.3f}, "
            f"validation accuracy {right['final_val_accuracy']:.1%}.")
    if large["stopped_on_nan"]:
        what = "is too large: the loss became NaN and the Trainer stopped the run (failed = 1)"
    elif large["failed"]:
        what = (f"is too large: its training loss reaches {large['worst_train_loss']:.1f} (its worst epoch) and ends "
                f"at {large['final_train_loss']:.2f}, no better than guessing (failed = 1), with validation accuracy "
                f"{large['final_val_accuracy']:.1%}")
    else:
        what = (f"was meant to be too large: its training loss reaches {large['worst_train_loss']:.2f} (its worst "
                f"epoch) and ends at {large['final_train_loss']:.2f}, better than guessing (failed = 0), with "
                f"validation accuracy {large['final_val_accuracy']:.1%}")
    lab.say(f"lr {large['lr']:g} {what}.")
    lab.say(f"deepworks.lr_find ({int(found['steps'])} steps) suggests lr {suggestion:.2g}; trained with it the run "
            f"reaches {sug['final_val_accuracy']:.1%} validation accuracy. Config keys: train.optimizer.lr (or lr: auto, "
            f"which runs this test before training), train.optimizer.name, train.schedule, train.warmup_steps.")
