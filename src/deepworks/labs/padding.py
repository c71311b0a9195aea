"""The ``padding`` lab: output sizes of a convolution for 'valid' and 'same' padding and strides."""

from __future__ import annotations

import math

import torch

from deepworks.labs import LabContext, lab

# (padding, stride, kernel) settings shown side by side
SETTINGS = [("valid", 1, 3), ("same", 1, 3), ("valid", 2, 3), ("same", 2, 3), ("valid", 1, 5), ("same", 2, 5)]


def _formula(size: int, padding: str, stride: int, kernel: int) -> int:
    """The textbook output length: floor((n - k) / s) + 1 for 'valid', ceil(n / s) for 'same'."""
    return (size - kernel) // stride + 1 if padding == "valid" else math.ceil(size / stride)


@lab("padding", "output sizes of a convolution with 'valid' and 'same' padding and strides, shown on an image")
def padding(lab: LabContext) -> None:
    from deepworks.data import load_dataset
    from deepworks.models import create_model
    from deepworks.inspection import inspect_config

    size = lab.pick(16, 32)
    lab.step(f"a digit resized to {size}x{size}; one 3x3 or 5x5 convolution per setting")
    image = load_dataset("digits", image_size=(size, size)).x[0:1].float()  # (1, 1, H, W)
    image = (image - image.mean()) / image.std()
    edge = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # a vertical-edge filter (Sobel)

    sizes, maps = {}, []
    for pad, stride, kernel in SETTINGS:
        key = f"{pad}_s{stride}_k{kernel}"
        # the shape the toolkit works out for a CNN with this first block (deepworks inspect)
        cfg = {
            "data": {"dataset": "digits", "image_size": size},
            "model": {"name": "cnn", "blocks": [{"filters": 1, "kernel_size": kernel, "stride": stride, "padding": pad,
                                                 "pool": "none", "batch_norm": False}], "hidden": []},
        }
        inspected = inspect_config(cfg)["layers"]
        shown = [row for row in inspected if row["type"] == "Conv2d"][0]["output_shape"][1]
        # the same block run on the image: its convolution gets the edge filter as weights
        params = {k: v for k, v in cfg["model"].items() if k != "name"}
        model = create_model("cnn", input_shape=(1, size, size), num_classes=10, **params)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight.zero_()
            c = kernel // 2
            conv.weight[0, 0, c - 1:c + 2, c - 1:c + 2] = edge
            features = model[: list(model).index(conv) + 1](image)[0, 0]
        expected = _formula(size, pad, stride, kernel)
        assert tuple(features.shape) == (shown, shown) == (expected, expected), (key, features.shape, shown, expected)
        sizes[key] = int(shown)
        maps.append((pad, stride, kernel, features))
    lab.record(input_size=size, output_size=sizes,
               pixels_lost_valid_k3=size - sizes["valid_s1_k3"], pixels_lost_valid_k5=size - sizes["valid_s1_k5"])

    fig, axes = lab.figure(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.6))
    axes[0].imshow(image[0, 0], cmap="gray")
    axes[0].set_title(f"input {size}x{size}", fontsize=9)
    for ax, (pad, stride, kernel, fm) in zip(axes[1:], maps):
        # drawn at the input's scale and where its windows sit, so a smaller output is visibly smaller
        o = (kernel - 1) / 2 if pad == "valid" else 0.0
        ax.imshow(fm, cmap="coolwarm", extent=(o, o + fm.shape[1] * stride, o + fm.shape[0] * stride, o))
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(f"{pad}, stride {stride}, {kernel}x{kernel}\n-> {fm.shape[0]}x{fm.shape[1]}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    lab.save(fig, "padding")

    lab.say(f"A {size}x{size} image through a 3x3 convolution: 'valid' padding gives {sizes['valid_s1_k3']}x"
            f"{sizes['valid_s1_k3']} (each layer loses kernel - 1 = 2 pixels), 'same' keeps {sizes['same_s1_k3']}x"
            f"{sizes['same_s1_k3']} by adding zeros around the border.")
    lab.say(f"Stride 2 halves the size: 'same' gives ceil({size}/2) = {sizes['same_s2_k3']}, 'valid' gives "
            f"floor(({size} - 3)/2) + 1 = {sizes['valid_s2_k3']}; a 5x5 'valid' window loses 4 pixels "
            f"({sizes['valid_s1_k5']}x{sizes['valid_s1_k5']}).")
    lab.say("Every size above was measured by running the convolution, and matches both the formula and "
            "`deepworks inspect` (config keys: model.padding, model.stride, model.kernel_size, or per block in model.blocks).")
