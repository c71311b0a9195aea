"""The ``overfitting`` lab: a big MLP on a few digits memorises them; dropout, L2 and early stopping."""

from __future__ import annotations

from deepworks.labs import LabContext, lab


def _config(lab: LabContext, per_class: int, hidden: list[int], epochs: int, **train) -> dict:
    return {
        "name": "overfit", "seed": lab.seed, "report": False,
        # a fixed handful of training digits per class (data.subset), the same in every run
        "data": {"dataset": "digits", "subset": {"train_per_class": per_class, "val_per_class": 25, "seed": lab.seed}},
        "model": {"name": "mlp", "hidden": hidden, "dropout": train.pop("dropout", 0.0)},
        # monitor: last keeps the final weights, so overtraining shows in the test accuracy
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 3e-3}, "monitor": "last",
                  **train},
    }


@lab("overfitting", "a big MLP on 50 digits: train/validation gap, and what dropout, L2 and early stopping do to it")
def overfitting(lab: LabContext) -> None:
    per_class = 5
    hidden = lab.pick([512, 512], [1024, 1024])
    epochs = lab.pick(20, 40)
    variants = {
        "plain": {},
        "dropout": {"dropout": 0.5},
        "l2": {"l2": 1e-3},
        "early_stopping": {"early_stopping": {"monitor": "val_loss", "patience": 5}, "monitor": "val_loss"},
    }
    if not lab.fast:
        variants["more_data"] = {"per_class": 15}
    results, curves = {}, {}
    for key, extra in variants.items():
        extra = dict(extra)
        n = extra.pop("per_class", per_class)
        lab.step(f"{key}: MLP {hidden} on {n * 10} training digits, up to {epochs} epochs")
        run = lab.train(_config(lab, n, hidden, epochs, **extra), key)
        s = run.summary
        val_loss = [h["val_loss"] for h in run.history]
        curves[key] = {"train_loss": [h["train_loss"] for h in run.history], "val_loss": val_loss}
        results[key] = {
            "train_samples": n * 10,
            "train_accuracy": s["train"]["accuracy"], "val_accuracy": s["val"]["accuracy"],
            "test_accuracy": s["test"]["accuracy"],
            "train_loss": s["train"]["loss"], "val_loss": s["val"]["loss"],
            "loss_gap": s["val"]["loss"] - s["train"]["loss"],
            "accuracy_gap": s["train"]["accuracy"] - s["val"]["accuracy"],
            "epochs_run": s["epochs_run"], "best_epoch": s["best_epoch"] or s["epochs_run"],
            "min_val_loss": min(val_loss), "min_val_loss_epoch": val_loss.index(min(val_loss)) + 1,
            "final_val_loss": val_loss[-1],
        }
    lab.record(runs=results, hidden=hidden, epochs=epochs)

    fig, axes = lab.figure(1, 3, figsize=(15, 4.4))
    colors = {"plain": "C3", "dropout": "C0", "l2": "C2", "early_stopping": "C1", "more_data": "C4"}
    c = curves["plain"]
    ep = list(range(1, len(c["val_loss"]) + 1))
    axes[0].plot(ep, c["train_loss"], color="C0", label="training loss")
    axes[0].plot(ep, c["val_loss"], color="C3", label="validation loss")
    axes[0].fill_between(ep, c["train_loss"], c["val_loss"], color="C3", alpha=0.12, label="gap")
    best = results["plain"]["min_val_loss_epoch"]
    axes[0].axvline(best, color="gray", ls="--", lw=1)
    axes[0].text(best + 0.5, max(c["val_loss"]) * 0.95, f"lowest validation\nloss: epoch {best}", fontsize=8)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("cross-entropy loss")
    axes[0].set_title(f"no remedy: MLP {hidden}, {results['plain']['train_samples']} training digits")
    axes[0].legend(fontsize=8, loc="center right")
    for key, c in curves.items():
        axes[1].plot(range(1, len(c["val_loss"]) + 1), c["val_loss"], color=colors[key], label=key,
                     lw=2.5 if key == "early_stopping" else 1.5)
    stop = results["early_stopping"]["epochs_run"]
    axes[1].plot([stop], [curves["early_stopping"]["val_loss"][-1]], "x", color="C1", ms=10, mew=2)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation loss")
    axes[1].set_title("validation loss with each remedy (x: early stop)")
    axes[1].legend(fontsize=8)
    names = list(results)
    xs = range(len(names))
    axes = axes[1:]
    axes[1].bar([x - 0.2 for x in xs], [results[k]["accuracy_gap"] for k in names], 0.4, label="train - val accuracy")
    axes[1].bar([x + 0.2 for x in xs], [results[k]["test_accuracy"] for k in names], 0.4, label="test accuracy")
    for x, k in zip(xs, names):
        axes[1].text(x + 0.2, results[k]["test_accuracy"] + 0.01, f"{results[k]['test_accuracy']:.2f}", ha="center",
                     fontsize=8)
    axes[1].set_xticks(list(xs), names, fontsize=8)
    axes[1].set_ylim(0, 1.1)
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("gap and test accuracy of each run")
    axes[1].legend(fontsize=8, loc="upper left")
    lab.save(fig, "overfitting")

    p, d, l2, es = results["plain"], results["dropout"], results["l2"], results["early_stopping"]
    lab.say(f"An MLP {hidden} on {p['train_samples']} training digits for {epochs} epochs reaches "
            f"{p['train_accuracy']:.1%} training accuracy but {p['val_accuracy']:.1%} on validation; its validation "
            f"loss was lowest ({p['min_val_loss']:.3f}) at epoch {p['min_val_loss_epoch']} and ends at "
            f"{p['final_val_loss']:.3f} (loss gap {p['loss_gap']:.3f})"
            + (": it memorised the training set." if p["train_accuracy"] >= 0.99 and p["loss_gap"] > 0
               and p["final_val_loss"] > p["min_val_loss"] else "."))
    lab.say(f"Dropout 0.5 (model.dropout) ends with validation loss {d['val_loss']:.3f} (gap {d['loss_gap']:.3f}) and "
            f"test accuracy {d['test_accuracy']:.1%}; an L2 penalty of 1e-3 (train.l2; train.optimizer.weight_decay is "
            f"its optimizer-side cousin) ends with {l2['val_loss']:.3f} (gap {l2['loss_gap']:.3f}) and "
            f"{l2['test_accuracy']:.1%}, against {p['val_loss']:.3f} and {p['test_accuracy']:.1%} without either.")
    lab.say(f"Early stopping (train.early_stopping, patience 5 on val_loss) stopped after {es['epochs_run']} of "
            f"{epochs} epochs and kept epoch {es['best_epoch']} (validation loss {es['val_loss']:.3f}, test accuracy "
            f"{es['test_accuracy']:.1%}).")
    if "more_data" in results:
        m = results["more_data"]
        lab.say(f"More data: the same model on {m['train_samples']} digits ends with a loss "
                f"gap of {m['loss_gap']:.3f} (against {p['loss_gap']:.3f}) and test accuracy {m['test_accuracy']:.1%} "
                f"(against {p['test_accuracy']:.1%}).")
