"""What a layer has learned, seen in two dimensions: activations captured by a forward hook,
flattened to (N, D) and projected with PCA or t-SNE.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
>>> default_layer(net)                       # the last leaf with parameters: the classifier
'3'
>>> acts = capture_activations(net, torch.randn(50, 1, 8, 8), "3", capture="input")
>>> acts.shape                               # its input: the penultimate features
torch.Size([50, 16])
>>> project_2d(acts.numpy(), "pca").shape
(50, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from deepworks.errors import ConfigError, DataError, close_matches

__all__ = [
    "METHODS",
    "default_layer",
    "layer_names",
    "find_layer",
    "check_method",
    "capture_activations",
    "subsample",
    "project_2d",
    "plot_projection",
]

METHODS = ("pca", "tsne")


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule, in ``model.named_modules()`` order (the root, "", left out)."""
    return [name for name, _ in model.named_modules() if name]


def default_layer(model: nn.Module) -> str:
    """The name of the last leaf module that has parameters of its own (typically the final
    ``nn.Linear``); its input is the penultimate representation."""
    found = None
    for name, module in model.named_modules():
        is_leaf = next(module.children(), None) is None
        if is_leaf and next(module.parameters(recurse=False), None) is not None:
            found = name
    if found is None:
        raise DataError(
            f"model: a {type(model).__name__} with no layer that has parameters; name the layer to look at "
            "with --layer."
        )
    return found


def find_layer(model: nn.Module, name: str, where: str = "--layer") -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; an unknown name is a
    :class:`ConfigError` listing close matches and some valid names."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = layer_names(model)
    hint = close_matches(name, names)
    leaves = [n for n in names if next(modules[n].children(), None) is None]
    shown = leaves[-8:] if len(leaves) > 8 else leaves
    msg = f"{where} {name!r}: no module of that name in the model ({type(model).__name__})."
    if hint:
        msg += f" Did you mean {' or '.join(repr(h) for h in hint)}?"
    msg += (
        f" Layers include: {'..., ' if len(shown) < len(leaves) else ''}"
        f"{', '.join(f'{n} ({type(modules[n]).__name__})' for n in shown)}"
        " (names as in model.named_modules(); `deepworks inspect CONFIG` shows the model)."
    )
    raise ConfigError(msg)


def capture_activations(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    capture: Literal["input", "output"] = "output",
    batch_size: int = 512,
) -> torch.Tensor:
    """Run ``x`` through ``model`` (in eval mode, no gradients, fp32) and return what the
    layer ``layer`` received (``capture="input"``, its first positional input) or produced
    (``"output"``), flattened to (N, D) float32 on the CPU.

    The model runs on the device of its parameters; ``x`` is moved there batch by batch.
    A layer called more than once per forward pass (a shared module) is refused, as there
    is no single activation to show.
    """
    if capture not in ("input", "output"):
        raise ConfigError(f"capture: expected 'input' or 'output', got {capture!r}.")
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple, output: Any) -> None:
        value = args[0] if capture == "input" else output
        if isinstance(value, (tuple, list)):
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"--layer {layer!r}: its {capture} is a {type(value).__name__}, not a tensor; choose another layer."
            )
        seen.append(value.detach())

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                seen.clear()
                model(x[start : start + batch_size].to(device))
                if len(seen) != 1:
                    raise DataError(
                        f"--layer {layer!r}: the layer ran {len(seen)} times in one forward pass; "
                        "choose a layer that runs exactly once."
                    )
                parts.append(seen[0].float().flatten(1).cpu())  # (B, ...) -> (B, D)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(parts)


def subsample(
    labels: np.ndarray | Sequence[Any], max_points: int, *, seed: int = 0, stratified: bool = True
) -> np.ndarray:
    """Sorted indices of at most ``max_points`` samples, drawn with a generator seeded by
    ``seed``. ``stratified=True`` keeps each label's share (largest-remainder rounding,
    at least one sample of every label that fits); otherwise a plain random draw."""
    labels = np.asarray(labels)
    n = len(labels)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ConfigError(f"max_points: expected a whole number >= 2, got {max_points!r}.")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if not stratified:
        return np.sort(rng.choice(n, size=max_points, replace=False))
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * max_points / n
    take = np.floor(exact).astype(int)
    short = max_points - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1  # largest remainders first
    picked = [rng.choice(np.flatnonzero(inverse == k), size=t, replace=False) for k, t in enumerate(take) if t]
    return np.sort(np.concatenate(picked))


def check_method(method: str) -> str:
    """``method`` if it is a projection method (pca, tsne); otherwise a :class:`ConfigError`."""
    if method not in METHODS:
        hint = close_matches(str(method), METHODS)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"--method: expected pca or tsne, got {method!r}.{extra}")
    return method


def project_2d(activations: np.ndarray, method: str = "pca", *, seed: int = 0) -> np.ndarray:
    """(N, D) activations -> (N, 2) coordinates with scikit-learn's ``PCA`` or ``TSNE``
    (``random_state=seed``; t-SNE starts from the PCA layout, perplexity at most (N - 1) / 3).
    With a single feature (D = 1) the second coordinate is 0."""
    check_method(method)
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim != 2 or len(a) < 3:
        raise DataError(f"projection: need activations shaped (N >= 3, D), got {a.shape}.")
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, a.shape[1])
        coords = PCA(n_components=k, random_state=seed).fit_transform(a)
    else:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(a) - 1) / 3)
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(a)
    if coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(len(coords))])
    return coords


def plot_projection(
    coords: np.ndarray,
    labels: np.ndarray | Sequence[Any],
    *,
    classes: Sequence[str] | None = None,
    value_name: str = "target",
    title: str = "",
):
    """A scatter of (N, 2) ``coords``. With ``classes``, ``labels`` are class indices: one
    colour per class and a legend of class names. Without, ``labels`` are numbers (a
    regression target): coloured by value with a colour bar named ``value_name``.

    Returns a matplotlib ``Figure`` on the Agg canvas (no display is needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    coords = np.asarray(coords)
    labels = np.asarray(labels)
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = 12 if len(coords) <= 2000 else 4
    if classes is not None:
        from matplotlib import colormaps

        palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for k, name in enumerate(classes):
            mask = labels == k
            if mask.any():
                ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=palette(k % palette.N), label=str(name))
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2,
                  ncols=1 if len(classes) <= 25 else 2, fontsize="small")
    else:
        points = ax.scatter(coords[:, 0], coords[:, 1], s=size, c=labels.astype(float), cmap="viridis")
        fig.colorbar(points, ax=ax, label=value_name)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    if title:
        ax.set_title(title)
    return fig
