"""The ``backprop`` lab: the forward values and the backward gradients of a tiny MLP, layer by
layer; the chain rule written out by hand, checked against autograd and numeric differences."""

from __future__ import annotations

import torch
from torch import nn

from deepworks.labs import LabContext, lab

# the derivative of each activation, written from its own output or input (the chain rule's local factor)
_LOCAL = {
    "tanh": lambda z, a: 1 - a**2,
    "sigmoid": lambda z, a: a * (1 - a),
    "relu": lambda z, a: (z > 0).to(z.dtype),
}


def _by_hand(x: torch.Tensor, y: int, w1, b1, w2, b2, activation: str) -> dict[str, torch.Tensor]:
    """Forward and backward pass of Linear -> activation -> Linear -> softmax cross-entropy, by hand."""
    z1 = x @ w1.T + b1  # (1, 3) pre-activations of the hidden layer
    a1 = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[activation](z1)
    z2 = a1 @ w2.T + b2  # (1, 2) logits
    p = torch.softmax(z2, dim=1)
    loss = -torch.log(p[0, y])
    onehot = torch.zeros_like(p)
    onehot[0, y] = 1.0
    dz2 = p - onehot  # dL/dz2 of softmax + cross-entropy
    dw2 = dz2.T @ a1  # dL/dW2[i, j] = dz2[i] * a1[j]
    db2 = dz2[0]
    da1 = dz2 @ w2  # back through the second linear layer
    dz1 = da1 * _LOCAL[activation](z1, a1)  # times the activation's local derivative
    dw1 = dz1.T @ x
    db1 = dz1[0]
    return {"x": x, "z1": z1, "a1": a1, "z2": z2, "p": p, "loss": loss, "dz2": dz2, "da1": da1, "dz1": dz1,
            "W1": dw1, "b1": db1, "W2": dw2, "b2": db2}


def _numeric(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Central differences (L(w + eps) - L(w - eps)) / 2 eps, one parameter entry at a time."""
    loss_fn = nn.CrossEntropyLoss()
    grads = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            g = torch.zeros_like(param)
            flat, gflat = param.view(-1), g.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + eps
                up = loss_fn(model(x), target).item()
                flat[i] = keep - eps
                down = loss_fn(model(x), target).item()
                flat[i] = keep
                gflat[i] = (up - down) / (2 * eps)
            grads[name] = g
    return grads


def _check(activation: str, seed: int) -> dict:
    """One tiny 2-3-2 network from deepworks.create_model, one input: hand vs autograd vs numeric."""
    from deepworks import create_model

    torch.manual_seed(seed)
    model = create_model("mlp", input_shape=(2,), num_classes=2, hidden=[3], activation=activation, dropout=0.0)
    model = model.double().eval()
    # create_model's mlp is Flatten, Linear, activation, Linear: parameters 1.weight ... ; name them by layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.randn(1, 2, dtype=torch.float64)
    y = int(torch.randint(0, 2, (1,)).item())
    target = torch.tensor([y])
    hand = _by_hand(x, y, linears[0].weight.detach(), linears[0].bias.detach(),
                    linears[1].weight.detach(), linears[1].bias.detach(), activation)

    model.zero_grad()
    loss = nn.CrossEntropyLoss()(model(x), target)
    loss.backward()
    auto = {}
    for k, m in enumerate(linears):
        auto[f"W{k + 1}"], auto[f"b{k + 1}"] = m.weight.grad.clone(), m.bias.grad.clone()
    numeric_by_name = _numeric(model, x, target)
    names = {id(p): n for n, p in model.named_parameters()}
    numeric = {}
    for k, m in enumerate(linears):
        numeric[f"W{k + 1}"] = numeric_by_name[names[id(m.weight)]]
        numeric[f"b{k + 1}"] = numeric_by_name[names[id(m.bias)]]
    keys = ["W1", "b1", "W2", "b2"]
    return {
        "model": model, "target": target, "hand": hand, "auto": auto, "numeric": numeric, "keys": keys,
        "loss_autograd": loss.item(),
        "hand_vs_autograd": max((hand[k] - auto[k]).abs().max().item() for k in keys),
        "hand_vs_numeric": max((hand[k] - numeric[k]).abs().max().item() for k in keys),
        "per_tensor": {k: {"hand_vs_autograd": (hand[k] - auto[k]).abs().max().item(),
                           "hand_vs_numeric": (hand[k] - numeric[k]).abs().max().item()} for k in keys},
    }


@lab("backprop", "forward values and backward gradients of a 2-3-2 MLP: the chain rule by hand, checked "
     "against autograd and numeric differences")
def backprop(lab: LabContext) -> None:
    from deepworks.models.summary import summarize

    lab.step("a 2-3-2 MLP (deepworks.create_model('mlp', hidden=[3], activation=tanh)) in float64, one input")
    main = _check("tanh", lab.seed)
    hand, model = main["hand"], main["model"]
    shapes = [(row["name"], row["type"], row["output_shape"], row["params"])
              for row in summarize(model, (2,))["layers"]]

    # one step of gradient descent along -gradient lowers the loss (the reason we want the gradient)
    lr = 0.5
    x, target = hand["x"], main["target"]
    with torch.no_grad():
        before = nn.CrossEntropyLoss()(model(x), target).item()
        for k, m in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
            m.weight -= lr * hand[f"W{k + 1}"]
            m.bias -= lr * hand[f"b{k + 1}"]
        after = nn.CrossEntropyLoss()(model(x), target).item()

    lab.step("the same check for sigmoid and relu hidden units, on several random inputs and weights")
    trials = lab.pick(3, 20)
    worst = {}
    for activation in ("tanh", "sigmoid", "relu"):
        results = [_check(activation, lab.seed + 1 + t) for t in range(trials)]
        worst[activation] = {"hand_vs_autograd": max(r["hand_vs_autograd"] for r in results),
                             "hand_vs_numeric": max(r["hand_vs_numeric"] for r in results)}

    lab.record(
        input=hand["x"][0], target=int(target.item()), hidden_preactivation=hand["z1"][0], hidden_activation=hand["a1"][0],
        logits=hand["z2"][0], probabilities=hand["p"][0], loss=hand["loss"].item(), loss_autograd=main["loss_autograd"],
        grad_logits=hand["dz2"][0], grad_hidden_activation=hand["da1"][0], grad_hidden_preactivation=hand["dz1"][0],
        grads={k: hand[k] for k in main["keys"]},
        max_abs_diff_hand_vs_autograd=main["hand_vs_autograd"], max_abs_diff_hand_vs_numeric=main["hand_vs_numeric"],
        per_tensor=main["per_tensor"], random_trials=trials, worst_over_trials=worst,
        loss_before_step=before, loss_after_step=after, step_lr=lr,
        layer_shapes={f"{n} {t}": (s or []) for n, t, s, _ in shapes}, layer_params={f"{n} {t}": p for n, t, s, p in shapes},
    )
    _plot(lab, main)

    fmt = lambda v: "[" + ", ".join(f"{float(a):+.3f}" for a in v) + "]"  # noqa: E731
    lab.say(f"Forward: input x = {fmt(hand['x'][0])} (shape 1x2) -> hidden pre-activations z1 = W1 x + b1 = "
            f"{fmt(hand['z1'][0])} (1x3) -> tanh a1 = {fmt(hand['a1'][0])} -> logits z2 = {fmt(hand['z2'][0])} (1x2) "
            f"-> softmax {fmt(hand['p'][0])}; cross-entropy loss for class {int(target.item())} = {hand['loss'].item():.4f}.")
    lab.say(f"Backward by the chain rule: dL/dz2 = p - onehot = {fmt(hand['dz2'][0])}, dL/da1 = dz2 W2 = "
            f"{fmt(hand['da1'][0])}, dL/dz1 = dL/da1 * (1 - a1^2) = {fmt(hand['dz1'][0])}; dL/dW = outer(delta, layer input).")
    lab.say(f"The {sum(p.numel() for p in model.parameters())} hand-made gradients match autograd to {main['hand_vs_autograd']:.1e} and central differences "
            f"(eps 1e-6) to {main['hand_vs_numeric']:.1e} in float64; over {trials} random networks each, the worst "
            f"differences are {max(w['hand_vs_autograd'] for w in worst.values()):.1e} (autograd) and "
            f"{max(w['hand_vs_numeric'] for w in worst.values()):.1e} (numeric) for tanh, sigmoid and relu.")
    lab.say(f"One gradient-descent step with learning rate {lr} moves the loss from {before:.4f} to {after:.4f}: "
            "training repeats exactly this (config keys: train.optimizer.lr, model.activation, model.hidden).")


def _plot(lab: LabContext, main: dict) -> None:
    import matplotlib.cm as cm
    import matplotlib.colors as mcolors

    hand = main["hand"]
    fig, (ax, bx) = lab.figure(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    layers = [
        ("input x (1x2)", hand["x"][0], None),
        ("hidden tanh(W1 x + b1) (1x3)", hand["a1"][0], hand["dz1"][0]),
        (f"softmax(W2 a1 + b2) (1x2)\ntarget class {int(main['target'].item())}", hand["p"][0], hand["dz2"][0]),
    ]
    xs = [0.0, 1.0, 2.0]
    pos = [[(xs[i], (len(v) - 1) / 2 - j) for j in range(len(v))] for i, (_, v, _) in enumerate(layers)]
    grads = [hand["W1"], hand["W2"]]
    vmax = max(g.abs().max().item() for g in grads) or 1.0
    norm = mcolors.TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    for li, g in enumerate(grads):
        for i, (x1, y1) in enumerate(pos[li + 1]):
            for j, (x0, y0) in enumerate(pos[li]):
                value = g[i, j].item()
                ax.plot([x0, x1], [y0, y1], color=cm.coolwarm(norm(value)), lw=1 + 5 * abs(value) / vmax, zorder=1)
    for i, (title, values, delta) in enumerate(layers):
        for j, (px, py) in enumerate(pos[i]):
            ax.scatter([px], [py], s=3200, color="white", edgecolor="black", zorder=2)
            text = f"{values[j].item():+.3f}"
            if delta is not None:
                text += f"\nd={delta[j].item():+.3f}"
            ax.text(px, py, text, ha="center", va="center", fontsize=7.5, zorder=3)
        ax.text(xs[i], 1.75, title, ha="center", weight="bold", fontsize=8.5)
    ax.text(1.0, -1.9, f"loss = {hand['loss'].item():.4f}; node: forward value, d = dL/d(pre-activation)\n"
            "edge colour/width: dL/dW (red +, blue -)", ha="center", fontsize=9)
    ax.set_xlim(-0.5, 2.5)
    ax.set_ylim(-2.3, 2.2)
    ax.axis("off")
    ax.set_title("forward values and backward gradients of a 2-3-2 MLP")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="coolwarm"), ax=ax, shrink=0.6, label="dL/dW")

    keys = main["keys"]
    pa = [max(main["per_tensor"][k]["hand_vs_autograd"], 1e-17) for k in keys]
    pn = [max(main["per_tensor"][k]["hand_vs_numeric"], 1e-17) for k in keys]
    idx = torch.arange(len(keys)).numpy()
    bx.bar(idx - 0.2, pa, width=0.4, label="hand vs autograd")
    bx.bar(idx + 0.2, pn, width=0.4, label="hand vs numeric (eps 1e-6)")
    bx.set_yscale("log")
    bx.set_xticks(idx, keys)
    bx.set_ylabel("max |difference| (float64)")
    bx.set_xlabel("parameter tensor")
    bx.set_title("gradient checks")
    bx.legend(fontsize=8)
    lab.save(fig, "backprop")
