"""A small sentiment set for text tests: filler words and one of "good"/"bad", which decides the label."""

from __future__ import annotations

import csv
from pathlib import Path

SENTIMENT_WORDS = ["the", "film", "plot", "was", "quite", "acting", "and", "a", "story", "cast", "ending", "music"]


def sentiment_csv(path: Path, n: int = 200, noise: float = 0.08, seed: int = 0) -> Path:
    """Texts of filler words and one of "good"/"bad", which decides the label; a share ``noise``
    of the labels is flipped, so no model scores 1.0 and the baselines are not trivially equal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [["review", "sentiment"]]
    for i in range(n):
        positive = bool(i % 2)
        words = list(rng.choice(SENTIMENT_WORDS, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if positive else "bad")
        if rng.random() < noise:
            positive = not positive
        rows.append([" ".join(words), "pos" if positive else "neg"])
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


# The one text run of the session (text pipeline, predictor, serve and export tests read it): a
# two-layer bidirectional LSTM, max-pooled, on sentiment_csv's 200 texts cut at 12 tokens.
SENTIMENT_LSTM = {
    "data": {"text": "review", "target": "sentiment", "min_freq": 1, "max_length": 12, "on_duplicates": "keep"},
    "model": {"name": "lstm", "embedding": 16, "hidden": 16, "bidirectional": True, "pool": "max", "layers": 2},
    "train": {"epochs": 6, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}, "monitor": "val_loss",
              "progress": "none"},
    "seed": 0,
}
