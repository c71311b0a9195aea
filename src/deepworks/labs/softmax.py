"""The ``softmax`` lab: a softmax classifier's logits and probabilities on digits, beside
scikit-learn's LogisticRegression on the same split and the same standardised features."""

from __future__ import annotations

import numpy as np

from deepworks.labs import LabContext, lab

SHOWN = 4  # test images whose logits and probabilities are drawn


def write_digits_csv(path, seed: int, rows: int | None = None):
    """The 1,797 digits as a table: 64 pixel columns (0-16) and the label; ``rows`` keeps a seeded sample."""
    import pandas as pd
    from sklearn.datasets import load_digits

    d = load_digits()
    index = np.arange(len(d.target))
    if rows is not None and rows < len(index):
        index = np.sort(np.random.default_rng(seed).choice(index, rows, replace=False))
    table = pd.DataFrame(d.data[index].astype(int), columns=[f"px{i}" for i in range(64)])
    table["digit"] = d.target[index]
    table.to_csv(path, index=False)
    return table


@lab("softmax", "a softmax classifier's logits and probabilities on digits, beside scikit-learn's LogisticRegression")
def softmax(lab: LabContext) -> None:
    import json

    import torch
    from sklearn.linear_model import LogisticRegression

    from deepworks.pipeline import prepare_data

    csv = lab.out / "digits.csv"
    write_digits_csv(csv, lab.seed, rows=lab.pick(900, None))
    epochs = lab.pick(10, 30)
    lab.step(f"deepworks.train: model softmax on {csv.name} (64 standardised pixel columns), L-BFGS, {epochs} epochs")
    config = {
        "name": "softmax-digits", "seed": lab.seed,
        "data": {"path": str(csv), "target": "digit", "scaling": "standard"},
        "model": {"name": "softmax"},
        "train": {"epochs": epochs, "monitor": "last"},  # the family's defaults: lbfgs, l2 1e-3
        "report": False,
    }
    run = lab.train(config, "softmax")
    l2 = run.config.train.l2
    data = prepare_data(run.config)  # the run's own split and standardised features
    xtr, ytr = data.train.x.numpy(), data.train.y.numpy()
    xte, yte = data.test.x.numpy(), data.test.y.numpy()
    with torch.no_grad():
        logits = run.model(data.test.x).numpy()
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    net_pred = logits.argmax(1)
    net_acc = float((net_pred == yte).mean())

    # the same objective in scikit-learn's terms: mean loss + l2/2 |w|^2  <=>  C = 1 / (l2 * n_train)
    c = 1.0 / (l2 * len(ytr))
    lab.step(f"scikit-learn LogisticRegression(C={c:.2f}) on the same {len(ytr)} training rows")
    sk = LogisticRegression(C=c, max_iter=3000, random_state=lab.seed).fit(xtr, ytr)
    sk_probs = sk.predict_proba(xte)
    sk_pred = sk_probs.argmax(1)
    sk_acc = float((sk_pred == yte).mean())
    agree = float((sk_pred == net_pred).mean())
    prob_gap = float(np.abs(sk_probs - probs).max())
    toolkit_lr = run.summary["baselines"]["logistic_regression"]["test"]["accuracy"]  # the run's own baseline (C=1)
    sums = probs.sum(1)
    lab.record(
        n_train=len(ytr), n_test=len(yte), l2=l2, sklearn_C=c, softmax_test_accuracy=net_acc,
        sklearn_test_accuracy=sk_acc, agreement=agree, max_probability_gap=prob_gap,
        toolkit_baseline_test_accuracy=toolkit_lr, probability_sum_max_error=float(np.abs(sums - 1).max()),
        mean_top_probability=float(probs.max(1).mean()),
    )

    # a few test images: pixels, logits, probabilities (the first ones, and the least sure one)
    order = [int(i) for i in range(SHOWN - 1)] + [int(probs.max(1).argmin())]
    encoder = json.loads((run.dir / "data.json").read_text())["encoder"]["columns"]
    shift = np.array([c_["shift"] for c_ in encoder])
    scale = np.array([c_["scale"] for c_ in encoder])
    fig, axes = lab.figure(len(order), 3, figsize=(10, 2.3 * len(order)), gridspec_kw={"width_ratios": [1, 2.2, 2.2]})
    classes = np.arange(10)
    for row, i in enumerate(order):
        pixels = (xte[i] * scale + shift).reshape(8, 8)  # the standardisation undone, for display
        axes[row, 0].imshow(pixels, cmap="gray_r")
        axes[row, 0].set_title(f"test image {i}: a {yte[i]}", fontsize=9)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        colours = ["tab:orange" if k == net_pred[i] else "tab:gray" for k in classes]
        axes[row, 1].bar(classes, logits[i], color=colours)
        axes[row, 1].axhline(0, color="black", lw=0.6)
        axes[row, 1].set_ylabel("logit (score)")
        axes[row, 2].bar(classes - 0.2, probs[i], width=0.4, color=colours, label="deepworks softmax")
        axes[row, 2].bar(classes + 0.2, sk_probs[i], width=0.4, color="tab:blue", alpha=0.6,
                         label="scikit-learn LogisticRegression")
        axes[row, 2].set_ylim(0, 1.05)
        axes[row, 2].set_ylabel("probability")
        axes[row, 2].set_title(f"top {net_pred[i]} at {probs[i].max():.2f}", fontsize=9)
        for ax in axes[row, 1:]:
            ax.set_xticks(classes)
    axes[0, 1].set_title("logits z = W x + b (any real number)", fontsize=9)
    axes[0, 2].legend(fontsize=7, loc="center right")
    axes[-1, 1].set_xlabel("class")
    axes[-1, 2].set_xlabel("class")
    fig.suptitle("softmax turns scores into probabilities: p_k = exp(z_k) / sum_j exp(z_j)", fontsize=10)
    lab.save(fig, "logits_to_probabilities")

    fig, ax = lab.figure(1, 1, figsize=(5, 4.6))
    ax.scatter(sk_probs.ravel(), probs.ravel(), s=6, alpha=0.4)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
    ax.set_xlabel("scikit-learn LogisticRegression probability")
    ax.set_ylabel("deepworks softmax probability")
    ax.set_title(f"every test image x class ({len(yte)} x 10)\naccuracy {net_acc:.3f} vs {sk_acc:.3f}, "
                 f"predictions agree on {agree:.1%}", fontsize=9)
    lab.save(fig, "softmax_vs_sklearn")

    lab.say(f"A softmax classifier (one linear layer, model.name: softmax) trained by deepworks.train on {len(ytr)} "
            f"digits reaches {net_acc:.1%} test accuracy on {len(yte)} test images; scikit-learn's LogisticRegression "
            f"on the same split and standardised features reaches {sk_acc:.1%}.")
    lab.say(f"The two predict the same class for {agree:.1%} of the test images and their probabilities differ by at "
            f"most {prob_gap:.3f}: softmax regression is multinomial logistic regression, and train.l2 = {l2:g} is "
            f"scikit-learn's C = 1 / (l2 x {len(ytr)}) = {c:.2f} (the run's own baseline with C = 1 scored {toolkit_lr:.1%}).")
    lab.say(f"The logits are unbounded scores; softmax makes them positive and sum to 1 (largest error "
            f"{np.abs(sums - 1).max():.1e}); the top class gets {probs.max(1).mean():.1%} on average, and the least sure "
            f"test image (number {order[-1]}) only {probs[order[-1]].max():.1%}. Config keys: model.name: softmax, "
            f"train.l2, train.optimizer (lbfgs by default for this family), data.scaling.")
