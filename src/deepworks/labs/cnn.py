"""The ``cnn`` lab: a small CNN trained on images; its learned first-layer filters, the feature maps
of a few test images, and its accuracy next to an MLP's."""

from __future__ import annotations

import torch
from torch import nn

from deepworks.data.datasets import fashion_mnist_on_disk
from deepworks.labs import LabContext, lab
from deepworks.training import Callback


class _Snapshot(Callback):
    """A training callback that keeps the first convolution's weights as they were before training."""

    before: torch.Tensor

    def on_train_begin(self, trainer) -> None:
        conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
        self.before = conv.weight.detach().float().cpu().clone()


@lab("cnn", "a small CNN on images: its learned filters, feature maps of test images, accuracy vs an MLP")
def cnn(lab: LabContext) -> None:
    from deepworks.inspection import inspect_config
    from deepworks.pipeline import prepare_data

    fashion = not lab.fast and fashion_mnist_on_disk()
    if fashion:
        data = {"dataset": "fashion-mnist", "subset": {"train_per_class": 300, "val_per_class": 100, "seed": lab.seed}}
        shown = "Fashion-MNIST (28x28, 300 training images per class)"
    else:
        data = {"dataset": "digits", "image_size": 16}  # the 8x8 digits drawn at 16x16, so a 5x5 filter has room
        shown = "digits (8x8 resized to 16x16)"
    epochs = lab.pick(3, 5)
    cnn_cfg = {
        "name": "cnn", "seed": lab.seed, "data": data,
        "model": {"name": "cnn", "blocks": [{"filters": 8, "kernel_size": 5}, {"filters": 16, "kernel_size": 3}],
                  "hidden": [64], "dropout": 0.1, "head_dropout": 0.2},
        "train": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}},
    }
    mlp_cfg = {**cnn_cfg, "name": "mlp", "model": {"name": "mlp", "hidden": [64], "dropout": 0.2}}
    lab.step(f"a CNN (8 5x5 filters, 16 3x3 filters, dense 64) on {shown}, {epochs} epochs (deepworks.train)")
    snapshot = _Snapshot()
    run = lab.train(cnn_cfg, "cnn", callbacks=[snapshot])
    lab.step("an MLP with one hidden layer of 64 on the same data, for comparison")
    base = lab.train(mlp_cfg, "mlp")
    params = {"cnn": inspect_config(cnn_cfg)["total_params"], "mlp": inspect_config(mlp_cfg)["total_params"]}
    acc = {"cnn": run.summary["test"]["accuracy"], "mlp": base.summary["test"]["accuracy"]}

    # the trained model's first conv filters, and the feature maps of a few test images (forward hooks)
    model = run.model.float().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)][: len(convs)]  # the activation of each conv block
    test = prepare_data(run.config).test
    picks = torch.tensor([int((test.y == c).nonzero()[0]) for c in range(3)])  # the first test image of classes 0-2
    images = test.inputs(picks).float()
    maps: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: maps.append(out.detach())) for m in relus]
    with torch.no_grad():
        predicted = model(images).argmax(1)
    for h in handles:
        h.remove()
    filters = convs[0].weight.detach()  # (8, 1, 5, 5)
    before = snapshot.before
    change = ((filters - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1))  # per filter, relative
    active = [(m > 0).double().mean().item() for m in maps]
    lab.record(dataset=data["dataset"], epochs=epochs, test_accuracy=acc, val_accuracy={
        "cnn": run.summary["val"]["accuracy"], "mlp": base.summary["val"]["accuracy"]}, params=params,
        filter_shape=list(filters.shape), feature_map_shapes=[list(m.shape[1:]) for m in maps],
        share_of_feature_map_positive=active, filter_relative_change=change, predicted=predicted, true=test.y[picks])
    _plot(lab, before, filters, images, maps, run.classes, predicted, test.y[picks])

    c, h, w = maps[0].shape[1:]
    c2, h2, w2 = maps[1].shape[1:]
    lab.say(f"On {shown}, the CNN ({params['cnn']:,} parameters) reaches test accuracy {acc['cnn']:.3f} after "
            f"{epochs} epochs; an MLP with one hidden layer of 64 ({params['mlp']:,} parameters) reaches "
            f"{acc['mlp']:.3f} on the same split.")
    lab.say(f"The first layer learned {filters.shape[0]} filters of {filters.shape[2]}x{filters.shape[3]} (filters.png; "
            f"training moved them by {change.mean():.0%} of their starting size on average); each slides over the "
            f"whole image, so the same {filters[0].numel()} weights look for one pattern (an edge, a stroke) everywhere.")
    lab.say(f"The first convolution turns an image into {c} feature maps of {h}x{w} (padding same); max pooling "
            f"halves them, and the second convolution makes {c2} maps of {h2}x{w2}; {active[0]:.0%} and {active[1]:.0%} "
            "of their values are positive after ReLU "
            "(config keys: model.filters or model.blocks, model.kernel_size, model.pool, model.batch_norm).")


def _plot(lab: LabContext, before, filters, images, maps, classes, predicted, true) -> None:
    n = filters.shape[0]
    fig, axes = lab.figure(2, n, figsize=(1.5 * n, 3.6), squeeze=False)
    for row, (weights, when) in enumerate(((before, "before"), (filters, "after"))):
        for i, ax in enumerate(axes[row]):
            f = weights[i, 0]
            v = f.abs().max().item() or 1.0
            ax.imshow(f, cmap="coolwarm", vmin=-v, vmax=v)
            ax.set_title(f"filter {i}, {when}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("first-layer 5x5 filters before and after training (red +, blue -)", fontsize=10)
    lab.save(fig, "filters")

    shown = min(8, maps[0].shape[1])
    rows = len(images)
    fig, axes = lab.figure(rows + 1, shown + 1, figsize=(1.5 * (shown + 1), 1.7 * (rows + 1)), squeeze=False)
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, "learned\nfilter", ha="center", va="center", fontsize=9)
    for k in range(shown):
        f = filters[k, 0]
        v = f.abs().max().item() or 1.0
        axes[0, k + 1].imshow(f, cmap="coolwarm", vmin=-v, vmax=v)
        axes[0, k + 1].set_title(f"filter / map {k}", fontsize=8)
    for r in range(rows):
        axes[r + 1, 0].imshow(images[r, 0], cmap="gray")
        axes[r + 1, 0].set_title(f"test: {classes[int(true[r])]}\n(predicted {classes[int(predicted[r])]})", fontsize=8)
        for k in range(shown):
            axes[r + 1, k + 1].imshow(maps[0][r, k], cmap="viridis")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("test images and their feature maps after conv 1 + batch norm + ReLU (bright = strong response)",
                 fontsize=10)
    lab.save(fig, "feature_maps")
