"""The ``dropout`` lab: the train/validation gap with and without dropout, and what dropout does
in train and eval mode (random masks, 1/(1-p) scaling of the kept units, identity in eval)."""

from __future__ import annotations

import torch
from torch import nn

from deepworks.labs import LabContext, lab


def _config(lab: LabContext, hidden: list[int], epochs: int, dropout: float) -> dict:
    return {
        "name": "dropout", "seed": lab.seed, "report": False,
        "data": {"dataset": "digits", "subset": {"train_per_class": 5, "val_per_class": 25, "seed": lab.seed}},
        "model": {"name": "mlp", "hidden": hidden, "dropout": dropout},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 1e-3}, "monitor": "last"},
    }


@lab("dropout", "the train/validation gap with and without dropout; train vs eval mode and the 1/(1-p) scaling")
def dropout(lab: LabContext) -> None:
    from deepworks.pipeline import prepare_data

    p = 0.5
    hidden = lab.pick([512, 512], [1024, 1024])
    epochs = lab.pick(15, 40)
    runs, curves = {}, {}
    for key, rate in (("no_dropout", 0.0), ("dropout", p)):
        lab.step(f"{key}: MLP {hidden}, model.dropout {rate}, 50 training digits, {epochs} epochs")
        run = lab.train(_config(lab, hidden, epochs, rate), key)
        s = run.summary
        curves[key] = [h["val_loss"] for h in run.history]
        runs[key] = {"train_accuracy": s["train"]["accuracy"], "val_accuracy": s["val"]["accuracy"],
                     "test_accuracy": s["test"]["accuracy"], "train_loss": s["train"]["loss"],
                     "val_loss": s["val"]["loss"], "loss_gap": s["val"]["loss"] - s["train"]["loss"],
                     "accuracy_gap": s["train"]["accuracy"] - s["val"]["accuracy"]}
        if rate:
            model, dropout_run = run.model, run

    # the trained dropout model on the same digit: train mode (dropout on) vs eval mode (off)
    lab.step("the same digit through the trained model, in train mode and in eval mode")
    val = prepare_data(dropout_run.config).val  # the run's own validation split, normalised as in training
    x = val.inputs(torch.arange(min(64, len(val.y)))).float().flatten(1)
    passes = lab.pick(20, 50)
    torch.manual_seed(lab.seed)
    with torch.no_grad():
        model.eval()
        probs = torch.softmax(model(x), -1)
        pick = int(probs.max(1).values.argmin())  # the digit the model is least sure of shows the effect best
        sample = x[pick:pick + 1]
        model.train()
        train_out = torch.stack([model(sample)[0] for _ in range(passes)])  # logits (passes, 10)
        model.eval()
        eval_out = torch.stack([model(sample)[0] for _ in range(passes)])
    predicted = int(eval_out[0].argmax())
    train_spread = float(train_out.std(0).max())
    eval_spread = float((eval_out - eval_out[0]).abs().max())
    train_agree = float((train_out.argmax(1) == predicted).float().mean())

    # the scaling: the first dropout layer on the activations it sees, kept units times 1/(1-p)
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    before = model[: list(model).index(drop)]
    with torch.no_grad():
        h = before(x)  # (64, hidden[0]) activations entering dropout
        drop.train()
        out = drop(h)
        drop.eval()
    kept = out != 0
    active = h != 0
    kept_share = float((kept & active).sum() / active.sum())
    ratio = float((out[kept] / h[kept]).mean())
    mean_in, mean_out = float(h.mean()), float(out.mean())
    lab.record(p=p, hidden=hidden, epochs=epochs, runs=runs, passes=passes,
               train_mode_max_std=train_spread, eval_mode_max_diff=eval_spread,
               train_mode_agreement=train_agree, kept_share=kept_share, kept_scale=ratio,
               mean_activation_in=mean_in, mean_activation_out=mean_out)

    fig, axes = lab.figure(1, 3, figsize=(15, 4.3))
    for key, color in (("no_dropout", "C3"), ("dropout", "C0")):
        axes[0].plot(range(1, epochs + 1), curves[key], color=color,
                     label=f"{key}: final gap {runs[key]['loss_gap']:.2f}, test {runs[key]['test_accuracy']:.1%}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("validation loss")
    axes[0].set_title(f"validation loss, MLP {hidden} on 50 digits")
    axes[0].legend(fontsize=8)
    for i in range(passes):
        axes[1].plot(range(10), train_out[i].numpy(), color="C0", alpha=0.25, lw=1)
    axes[1].plot(range(10), eval_out[0].numpy(), color="k", lw=2.5, marker="o", label=f"eval mode ({passes} passes, identical)")
    axes[1].plot([], [], color="C0", alpha=0.5, label=f"train mode ({passes} passes)")
    axes[1].set_xticks(range(10))
    axes[1].set_xlabel("class")
    axes[1].set_ylabel("class score (logit)")
    axes[1].set_title(f"one digit (a {dropout_run.classes[int(val.y[pick])]}), many forward passes")
    axes[1].legend(fontsize=8)
    hv, ov = h[0].numpy(), out[0].numpy()
    n = min(40, len(hv))
    axes[2].bar([i - 0.2 for i in range(n)], hv[:n], 0.4, color="gray", label=f"before dropout (mean {mean_in:.3f})")
    axes[2].bar([i + 0.2 for i in range(n)], ov[:n], 0.4, color="C0", label=f"after, train mode (mean {mean_out:.3f})")
    axes[2].set_xlabel("hidden unit")
    axes[2].set_ylabel("activation")
    axes[2].set_title(f"p = {p}: dropped units are 0, kept ones x {ratio:.2f}")
    axes[2].legend(fontsize=8)
    lab.save(fig, "dropout")

    a, b = runs["no_dropout"], runs["dropout"]
    lab.say(f"Without dropout the MLP ends with training loss {a['train_loss']:.3f} and validation loss "
            f"{a['val_loss']:.3f} (gap {a['loss_gap']:.3f}, test accuracy {a['test_accuracy']:.1%}); with model.dropout "
            f"{p} the gap is {b['loss_gap']:.3f} (test accuracy {b['test_accuracy']:.1%}).")
    lab.say(f"In train mode the same digit gave {'different outputs' if train_spread > 0 else 'the same output'} "
            f"over {passes} passes (largest std of a class score (logit) {train_spread:.3f}; {train_agree:.0%} of "
            f"passes chose the eval-mode class); in eval mode the {passes} passes "
            f"{'were identical' if eval_spread == 0 else 'differed'} (largest difference {eval_spread:.1g}). deepworks "
            "evaluates and predicts in eval mode.")
    same = abs(mean_out - mean_in) <= 0.1 * abs(mean_in)
    lab.say(f"Dropout kept {kept_share:.1%} of the active units (expected {1 - p:.0%}) and multiplied them by "
            f"{ratio:.3f} = 1/(1-{p}); the mean activation is {mean_in:.3f} before and {mean_out:.3f} after"
            + (": about the same, so no rescaling is needed at evaluation." if same else
               ", {:.0%} apart on these {} samples.".format(abs(mean_out - mean_in) / max(abs(mean_in), 1e-12), len(h))))
