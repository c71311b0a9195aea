"""What counts as a vanishing or an exploding gradient, judged on one record of per-layer gradient norms.

Training's :class:`~deepworks.training.gradients.GradientMonitor` flags each record with it as it
writes ``gradients.jsonl``, and :mod:`deepworks.evaluation.diagnosis` judges a finished run's records
by the same thresholds; it lives here, below both, so the diagnosis needs nothing from training.
"""

from __future__ import annotations

import math

__all__ = ["VANISHING", "VANISHING_ABS", "EXPLODING", "flag_norms"]

VANISHING = 1e-3  # a layer whose gradient norm is below this fraction of the largest layer's barely learns
VANISHING_ABS = 1e-8  # ... or below this in absolute terms
EXPLODING = 1e3  # above this (or non-finite) an update can throw the weights far off


def flag_norms(
    norms: dict[str, float], vanishing: float = VANISHING, exploding: float = EXPLODING
) -> tuple[list[str], list[str]]:
    """The layers of one record of gradient norms (layer -> norm) that vanish and that explode:
    exploding above ``exploding`` or non-finite; vanishing under ``vanishing`` times the
    largest finite norm of the record (and under VANISHING_ABS in any case).

    >>> flag_norms({"a": 1e-7, "b": 0.5, "c": float("inf")})
    (['a'], ['c'])
    """
    finite = [n for n in norms.values() if math.isfinite(n)]
    floor = max(vanishing * max(finite, default=0.0), VANISHING_ABS)
    exploded = [layer for layer, n in norms.items() if not math.isfinite(n) or n > exploding]
    vanished = [layer for layer, n in norms.items() if math.isfinite(n) and n <= exploding and n < floor]
    return vanished, exploded
