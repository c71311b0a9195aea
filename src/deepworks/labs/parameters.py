"""The ``parameters`` lab: what a network learns (weights, biases, batch-norm scale and shift),
counted per layer and checked by formula; how training changes them; hyperparameters vs parameters."""

from __future__ import annotations

import torch
from torch import nn

from deepworks.labs import LabContext, lab
from deepworks.training import Callback


class _Before(Callback):
    """A training callback that keeps every parameter as it was before training."""

    state: dict[str, torch.Tensor]

    def on_train_begin(self, trainer) -> None:
        self.state = {k: v.detach().float().cpu().clone() for k, v in trainer.model.named_parameters()}


def _formula(module: nn.Module) -> tuple[int, str]:
    """The textbook parameter count of one layer and the formula, from its shape alone."""
    if isinstance(module, nn.Conv2d):
        k, i, o = module.kernel_size[0], module.in_channels, module.out_channels
        bias = module.bias is not None
        return k * k * i * o + (o if bias else 0), f"{k}*{k}*{i}*{o}" + (f" + {o}" if bias else " (no bias)")
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
        return i * o + o, f"{i}*{o} + {o}"
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        return 2 * module.num_features, f"2*{module.num_features} (scale, shift)"
    return 0, "0"


def _kind(name: str, module: nn.Module) -> str:
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        return "batch-norm scale" if name.endswith("weight") else "batch-norm shift"
    return "weights" if name.endswith("weight") else "biases"


@lab("parameters", "parameters per layer (weights, biases, batch-norm scale/shift) checked by formula; how "
     "training changes them; hyperparameters vs parameters")
def parameters(lab: LabContext) -> None:
    from deepworks.inspection import inspect_config

    epochs = lab.pick(2, 6)
    cfg = {
        "name": "parameters", "seed": lab.seed,
        "data": {"dataset": "digits"},
        "model": {"name": "cnn", "blocks": [{"filters": 8, "batch_norm": True}, {"filters": 16, "batch_norm": False}],
                  "kernel_size": 3, "hidden": [32], "dropout": 0.0, "head_dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.003}},
    }
    lab.step("the layers and parameter counts of a small CNN on digits (deepworks inspect, no training)")
    inspected = inspect_config(cfg)
    lab.step(f"training it {epochs} epochs (deepworks.train), keeping the parameters from before training")
    before = _Before()
    run = lab.train(cfg, "parameters", callbacks=[before])
    model = run.model.float()
    modules = dict(model.named_modules())

    rows, kinds, mismatches = [], {}, 0
    for row in inspected["layers"]:
        if not row["params"]:
            continue
        module = modules[row["name"]]
        count, text = _formula(module)
        mismatches += int(count != row["params"])
        rows.append({"layer": f"{row['name']} {row['type']}", "params": row["params"], "formula": text, "by_formula": count})
        for pname, p in module.named_parameters(recurse=False):
            kinds[_kind(pname, module)] = kinds.get(_kind(pname, module), 0) + p.numel()
    total = inspected["total_params"]
    buffers = sum(b.numel() for n, b in model.named_buffers() if "running" in n)

    changes = {}
    for name, p in model.named_parameters():
        start = before.state[name]
        changes[name] = {"norm_before": start.norm().item(), "norm_change": (p.detach() - start).norm().item(),
                         "relative_change": ((p.detach() - start).norm() / start.norm().clamp_min(1e-12)).item()}
    hyper = {"epochs": epochs, "batch_size": cfg["train"]["batch_size"], "lr": cfg["train"]["optimizer"]["lr"],
             "kernel_size": 3, "filters_block1": 8, "filters_block2": 16, "hidden": 32}
    bigger = inspect_config({**cfg, "model": {**cfg["model"], "hidden": [64]}})["total_params"]
    for value in changes.values():
        if value["norm_before"] == 0:  # started at zero: no relative change to speak of
            del value["relative_change"]
    lab.record(total_params=total, by_kind=kinds, layers=rows, formula_mismatches=mismatches,
               batch_norm_running_stats=buffers, changes=changes, hyperparameters=hyper,
               total_params_with_hidden_64=bigger, val_accuracy=run.summary["val"]["accuracy"])
    _plot(lab, rows, kinds, model, before.state, changes)

    listing = "; ".join(f"{r['layer']}: {r['params']} = {r['formula']}" for r in rows)
    lab.say(f"The CNN has {total:,} learned parameters: {listing}. "
            + (f"All {len(rows)} counts from `deepworks inspect` match" if not mismatches else
               f"{mismatches} of the {len(rows)} counts from `deepworks inspect` do NOT match")
            + " the formulas (conv k*k*in*out + out bias, linear in*out + out, batch norm 2*channels).")
    lab.say(f"By kind: {kinds.get('weights', 0):,} weights, {kinds.get('biases', 0):,} biases, "
            f"{kinds.get('batch-norm scale', 0)} batch-norm scales and {kinds.get('batch-norm shift', 0)} shifts; the "
            f"{buffers} batch-norm running means and variances are statistics, not learned by gradients, and a conv "
            "followed by batch norm has no bias (the shift does that job).")
    # relative change only where a tensor did not start at zero (biases and batch-norm shifts do)
    relative = {k: v["relative_change"] for k, v in changes.items() if v["norm_before"] > 0}
    biggest, smallest = max(relative, key=relative.get), min(relative, key=relative.get)
    zero = [k for k, v in changes.items() if v["norm_before"] == 0]
    moved = sum(v["norm_change"] > 0 for v in changes.values())
    lab.say(f"{epochs} epochs of training (val accuracy {run.summary['val']['accuracy']:.3f}) moved {moved} of the "
            f"{len(changes)} tensors: most {biggest} (by {relative[biggest]:.0%} of its starting norm), least {smallest} "
            f"({relative[smallest]:.0%}); what starts at zero ({', '.join(zero) or 'nothing'}) moved "
            f"by a norm of up to {max((changes[k]['norm_change'] for k in zero), default=0.0):.3f}. weights.png shows "
            "the histograms before and after.")
    lab.say(f"Hyperparameters are set, not learned: train.optimizer.lr = {hyper['lr']}, train.batch_size = "
            f"{hyper['batch_size']}, train.epochs = {epochs}, model.blocks filters 8/16, model.hidden = [32]; "
            f"changing model.hidden to [64] changes the parameter count from {total:,} to {bigger:,}.")


def _plot(lab: LabContext, rows, kinds, model, start, changes) -> None:
    fig, (ax, bx) = lab.figure(1, 2, figsize=(12, 4.2))
    names = [r["layer"] for r in rows]
    bars = ax.barh(names, [r["params"] for r in rows], color="tab:blue")
    ax.bar_label(bars, labels=[f"{r['params']} = {r['formula']}" for r in rows], fontsize=8, padding=3)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(1, max(r["params"] for r in rows) * 80)
    ax.set_xlabel("learned parameters (log scale)")
    ax.set_title(f"parameters per layer (total {sum(r['params'] for r in rows):,})")
    keys = list(changes)
    bx.barh(keys, [changes[k]["norm_before"] for k in keys], height=0.4, align="edge", label="norm before training")
    bx.barh(keys, [changes[k]["norm_change"] for k in keys], height=-0.4, align="edge", label="norm of the change")
    bx.invert_yaxis()
    bx.legend(fontsize=8)
    bx.set_xlabel("L2 norm")
    bx.set_title("how much training changed each parameter tensor")
    bx.tick_params(axis="y", labelsize=8)
    lab.save(fig, "parameters")

    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    fig, axes = lab.figure(1, len(weights), figsize=(3.2 * len(weights), 3.0), squeeze=False)
    for ax, (name, p) in zip(axes[0], weights):
        after = p.detach().flatten().numpy()
        first = start[name].flatten().numpy()
        lo, hi = min(after.min(), first.min()), max(after.max(), first.max())
        ax.hist(first, bins=40, range=(lo, hi), alpha=0.6, label="before")
        ax.hist(after, bins=40, range=(lo, hi), alpha=0.6, label="after")
        ax.set_title(f"{name} ({p.numel()} weights)", fontsize=9)
        ax.set_xlabel("weight value", fontsize=8)
    axes[0, 0].set_ylabel("count")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("weights of each layer before and after training")
    lab.save(fig, "weights")
