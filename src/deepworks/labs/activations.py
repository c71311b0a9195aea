"""The ``activations`` lab: every activation of the toolkit and its derivative; the saturation of
sigmoid and tanh; dead ReLUs counted in trained networks (relu vs leaky_relu, low vs high learning rate)."""

from __future__ import annotations

import torch
from torch import nn

from deepworks.labs import LabContext, lab

GRID = (-5.0, 5.0, 1000)  # an even number of points: x = 0 (the kink of relu) is not on the grid


def _curves(name: str) -> dict:
    """f(x), f'(x) by autograd and by central differences, for the toolkit's activation ``name``."""
    from deepworks.models.layers import make_activation

    act = make_activation(name).double()
    x = torch.linspace(*GRID, dtype=torch.float64).requires_grad_(True)
    y = act(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    h = 1e-6
    with torch.no_grad():
        numeric = (act(x + h) - act(x - h)) / (2 * h)
    return {"x": x.detach(), "y": y.detach(), "grad": grad, "numeric_diff": (grad - numeric).abs().max().item()}


def _units(run, split: str = "val") -> dict:
    """Per hidden unit of the trained MLP: the share of ``split`` samples where its pre-activation is
    positive, and the size of the loss gradient reaching its incoming weights (forward hooks, autograd)."""
    from deepworks.pipeline import prepare_data

    data = getattr(prepare_data(run.config), split)
    x, y = data.inputs().float(), data.y.long()
    model = run.model.float().eval()
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][: len(acts)]  # each feeds one activation
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach())) for m in acts]
    try:
        model.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    active = [(z > 0).double().mean(0) for z in seen]  # share of samples where each unit fires
    grads = [lin.weight.grad.abs().sum(1) for lin in linears]  # |dL/dW| of each unit's incoming weights
    dead = [a == 0 for a in active]
    return {
        "active": active,
        "dead": [int(d.sum()) for d in dead],
        "units": [int(d.numel()) for d in dead],
        "dead_grad": [g[d].max().item() if d.any() else 0.0 for g, d in zip(grads, dead)],
        "live_grad": [g[~d].mean().item() if (~d).any() else 0.0 for g, d in zip(grads, dead)],
    }


@lab("activations", "every activation and its derivative; sigmoid/tanh saturation; dead ReLUs in a trained net")
def activations(lab: LabContext) -> None:
    from deepworks.models.layers import ACTIVATIONS

    names = [n for n in ACTIVATIONS.names() if n != "swish"]  # swish is another name for silu
    lab.step(f"{len(names)} activations of the toolkit on x in [-5, 5]: f, f' by autograd, f' by central differences")
    curves = {n: _curves(n) for n in names}
    _plot_curves(lab, curves)
    maxd = {n: c["grad"].max().item() for n, c in curves.items()}
    at5 = {n: c["grad"][-1].item() for n, c in curves.items()}  # f'(5): how much gradient passes for large input
    at_minus5 = {n: c["grad"][0].item() for n, c in curves.items()}
    worst_numeric = max(c["numeric_diff"] for c in curves.values())
    depth = 10
    lab.record(activations=names, max_derivative=maxd, derivative_at_5=at5, derivative_at_minus_5=at_minus5,
               max_abs_diff_autograd_vs_numeric=worst_numeric,
               sigmoid_gradient_bound_after_10_layers=maxd["sigmoid"] ** depth)

    epochs = lab.pick(2, 5)
    settings = [("relu", 0.001), ("relu", 0.1), ("leaky_relu", 0.1)]
    results = {}
    for activation, lr in settings:
        key = f"{activation}_lr{lr:g}"
        lab.step(f"an MLP 64-64 with {activation} on digits, Adam lr {lr:g}, {epochs} epochs (deepworks.train)")
        cfg = {
            "name": key, "seed": lab.seed,
            "data": {"dataset": "digits"},
            "model": {"name": "mlp", "hidden": [64, 64], "activation": activation, "dropout": 0.0},
            "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"name": "adam", "lr": lr}},
        }
        run = lab.train(cfg, key)
        units = _units(run)
        results[key] = {"activation": activation, "lr": lr, "val_accuracy": run.summary["val"]["accuracy"], **units}
    lab.record(epochs=epochs, runs={k: {x: v[x] for x in ("lr", "val_accuracy", "dead", "units", "dead_grad", "live_grad")}
                                    for k, v in results.items()})
    _plot_dead(lab, results)

    lab.say(f"Derivatives of {len(names)} activations ({', '.join(names)}) by autograd match central differences "
            f"to {worst_numeric:.1e}; sigmoid's derivative peaks at {maxd['sigmoid']:.3f} and tanh's at {maxd['tanh']:.3f} "
            "(both at x = 0).")
    lab.say(f"Saturation: at x = 5 the derivative is {at5['sigmoid']:.4f} for sigmoid and {at5['tanh']:.5f} for tanh "
            f"(relu {at5['relu']:.0f}, gelu {at5['gelu']:.3f}); through {depth} sigmoid layers their derivatives alone multiply "
            f"the gradient by at most {maxd['sigmoid']:.2f}^{depth} = {maxd['sigmoid'] ** depth:.1e}: the vanishing gradient.")
    slope = nn.LeakyReLU().negative_slope  # make_activation's default for leaky_relu (torch's)
    low, high, leaky = (results[f"{a}_lr{lr:g}"] for a, lr in settings)
    total = sum(low["units"])
    dead_low, dead_high = sum(low["dead"]), sum(high["dead"])
    if dead_high:
        grad = max(high["dead_grad"])
        fate = (f"; their incoming weights get a gradient of {grad:g} (summed |dL/dW| on the validation set)"
                + (", so these samples cannot revive them." if grad == 0 else "."))
    else:
        fate = "."
    lab.say(f"Dead ReLUs (hidden units never positive on the validation set) after "
            f"{epochs} epochs on digits: {dead_low} of {total} with Adam lr 0.001 (val accuracy "
            f"{low['val_accuracy']:.3f}) {'but' if dead_high > dead_low else 'and'} {dead_high} of {total} with lr 0.1 "
            f"(val accuracy {high['val_accuracy']:.3f}){fate}")
    lab.say(f"leaky_relu at lr 0.1 has {sum(leaky['dead'])} of {total} units never positive"
            + (f", but they still pass {slope:g} of the gradient (largest |dL/dW| of such a unit "
               f"{max(leaky['dead_grad']):.1e})" if sum(leaky["dead"]) else
               f" (for negative inputs a unit still passes {slope:g} of the gradient)")
            + f", and it reaches val accuracy {leaky['val_accuracy']:.3f} (config keys: model.activation, e.g. "
            "{name: leaky_relu, negative_slope: 0.01}, and train.optimizer.lr).")


def _plot_curves(lab: LabContext, curves: dict) -> None:
    cols = 4
    rows = -(-len(curves) // cols)
    fig, axes = lab.figure(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items()):
        ax.axhline(0, color="0.8", lw=0.8)
        ax.axvline(0, color="0.8", lw=0.8)
        ax.plot(c["x"], c["y"], label="f(x)")
        ax.plot(c["x"], c["grad"], label="f'(x) (autograd)")
        ax.set_title(f"{name}  (max f' = {c['grad'].max().item():.3g})", fontsize=9)
        ax.set_ylim(-1.5, 3)
        ax.set_xlabel("x", fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("activation functions of deepworks (model.activation) and their derivatives")
    lab.save(fig, "activations")


def _plot_dead(lab: LabContext, results: dict) -> None:
    fig, (ax, bx) = lab.figure(1, 2, figsize=(11, 4))
    keys = list(results)
    layers = len(results[keys[0]]["dead"])
    width = 0.8 / layers
    for li in range(layers):
        values = [results[k]["dead"][li] for k in keys]
        bars = ax.bar([i + (li - (layers - 1) / 2) * width for i in range(len(keys))], values, width=width,
                      label=f"hidden layer {li + 1} ({results[keys[0]]['units'][li]} units)")
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(keys)), [f"{results[k]['activation']}, lr {results[k]['lr']:g}\nval acc "
                                     f"{results[k]['val_accuracy']:.2f}" for k in keys], fontsize=8)
    ax.set_ylabel("units never positive on the validation set")
    ax.set_title("dead units after training (MLP 64-64 on digits, Adam)")
    ax.legend(fontsize=8)
    for k in keys:
        share = torch.sort(torch.cat(results[k]["active"]), descending=True).values
        bx.plot(range(len(share)), share.numpy(), label=f"{results[k]['activation']}, lr {results[k]['lr']:g}")
    bx.set_xlabel("hidden unit (both layers, sorted)")
    bx.set_ylabel("share of validation samples where it fires")
    bx.set_title("how often each unit is active")
    bx.legend(fontsize=8)
    lab.save(fig, "dead_relus")
