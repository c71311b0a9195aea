"""Permutation importance: how much a model's score drops when one input column is shuffled.

The model sees an encoded matrix ``x`` (N, F), but a person thinks in the table's original
columns. A categorical column becomes a one-hot block, a column with gaps gains a
missing-indicator, so one original column can own several encoded features. ``groups`` maps
each original column to its encoded positions, and the whole group is shuffled with one row
permutation: that is exactly what shuffling the raw column before encoding would do.

>>> import torch
>>> x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
>>> y = (x[:, 0] > 0).float()
>>> score = lambda m: float(((m[:, 0] > 0).float() == y).float().mean())   # higher is better
>>> rows = permutation_importance(score, x, {"a": [0], "b": [1], "c": [2]}, repeats=3)
>>> rows[0]["column"], rows[-1]["mean_drop"]
('a', 0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from deepworks.errors import ConfigError, DataError

__all__ = ["permutation_importance", "plot_importance"]


def permutation_importance(
    score_fn: Callable[[torch.Tensor], float],
    x: torch.Tensor,
    groups: Mapping[str, Sequence[int]],
    *,
    repeats: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The drop of ``score_fn`` when each group of encoded features is permuted across rows.

    ``score_fn(x)`` scores an input matrix, higher is better (accuracy, R²). ``x`` is the
    (N, F) encoded input of one split; ``groups`` maps each original column name to the
    encoded feature indices it became. For every group and repeat, one row permutation is
    applied to all of the group's features at once and the score is taken again; the drop
    is ``baseline - score``.

    Returns one dict per group, sorted by ``mean_drop`` (largest first)::

        {"column": name, "baseline": score of the unpermuted x,
         "mean_drop": ..., "std_drop": ... (population std, like scikit-learn's),
         "drops": [one drop per repeat]}

    The permutations come from a NumPy generator seeded by ``(seed, group position)``, so a
    column's permutations do not depend on the other columns, and the global NumPy and torch
    random states are left alone.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"permutation_importance: x must be a 2-D tensor (samples, features), got {shape}.")
    n, width = x.shape
    if n < 2:
        raise DataError(f"permutation_importance: x has {n} row(s); permuting needs at least 2.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats: expected a whole number >= 1, got {repeats!r}.")
    if not groups:
        raise DataError("permutation_importance: groups is empty; map each input column to its feature indices.")
    checked: dict[str, torch.Tensor] = {}
    for name, indices in groups.items():
        idx = [int(i) for i in indices]
        if not idx:
            raise DataError(f"groups[{name!r}]: no feature indices; each column must own at least one feature.")
        bad = [i for i in idx if not 0 <= i < width]
        if bad:
            raise DataError(
                f"groups[{name!r}]: feature indices {bad} are outside x's {width} features (0..{width - 1}); "
                "the groups do not belong to this input."
            )
        checked[str(name)] = torch.tensor(sorted(set(idx)), dtype=torch.long, device=x.device)

    baseline = float(score_fn(x))
    rows = []
    for position, (name, idx) in enumerate(checked.items()):
        rng = np.random.default_rng([seed, position])
        drops = []
        for _ in range(repeats):
            perm = torch.from_numpy(rng.permutation(n)).to(x.device)
            shuffled = x.clone()
            shuffled[:, idx] = x[perm][:, idx]  # one row order for the whole group
            drops.append(baseline - float(score_fn(shuffled)))
        rows.append({
            "column": name,
            "baseline": baseline,
            "mean_drop": float(np.mean(drops)),
            "std_drop": float(np.std(drops)),
            "drops": [float(d) for d in drops],
        })
    rows.sort(key=lambda r: r["mean_drop"], reverse=True)
    return rows


def plot_importance(rows: Sequence[Mapping[str, Any]], *, metric: str = "score", title: str = ""):
    """A horizontal bar chart of each column's mean drop with its std as error bars.

    ``rows`` is :func:`permutation_importance`'s result (most important first, drawn at the
    top). Returns a matplotlib ``Figure`` on the Agg canvas (no display is needed); save it
    with ``fig.savefig(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r["column"]) for r in rows]
    means = [r["mean_drop"] for r in rows]
    stds = [r["std_drop"] for r in rows]
    fig = Figure(figsize=(7, max(2.0, 0.35 * len(rows) + 1.2)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = np.arange(len(rows))[::-1]  # the first row at the top
    ax.barh(positions, means, xerr=stds, color="tab:blue", ecolor="black", capsize=3)
    ax.set_yticks(positions, names)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"drop in {metric} when the column is permuted (mean ± std over repeats)")
    if title:
        ax.set_title(title)
    return fig
