"""What transfer.cache saves: feature extraction with the frozen body's features computed once
versus the frozen body run on every batch of every epoch.

Both runs are ``examples/configs/transfer-fmnist-features.yaml`` (EfficientNet-Lite0 with
ImageNet weights, 96 px, 1,000 Fashion-MNIST training images and 200 validation images) with the
head trained by AdamW (batch 32) for ``--epochs`` epochs, so the two do the same optimisation;
only ``transfer.cache`` differs. The script reports the one-off cost of the cache (the body's
pass over train, val and test), the mean epoch time of each run from ``metrics.jsonl``, and the
total time of each ``deepworks.train`` call (which includes the final pass over the 10k test
images in both).

    python benchmarks/feature_cache.py               # -> results/feature_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import deepworks

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "transfer-fmnist-features.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feature_cache.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="feature-cache-"))
    rows = {}
    for cache in (True, False):
        overrides = {"transfer.cache": cache, "train.epochs": args.epochs, "train.optimizer": {"name": "adamw", "lr": 0.001},
                     "train.l2": 0.0, "train.batch_size": 32, "train.progress": "none", "report": False}
        started = time.perf_counter()
        run = deepworks.train(str(CONFIG), run_dir=root / f"cache-{cache}", overrides=overrides)
        total = time.perf_counter() - started
        epochs = [row["seconds"] for row in run.history if "seconds" in row]
        rows["cache" if cache else "no_cache"] = {
            "epoch_seconds": epochs,
            "mean_epoch_seconds": statistics.mean(epochs) if epochs else None,
            "total_seconds": total,
            "feature_cache": run.summary.get("transfer", {}).get("feature_cache"),
            "test_accuracy": run.summary["test"]["accuracy"],
            "precision": run.summary.get("precision"),
        }
        print(f"cache={cache}: mean epoch {rows['cache' if cache else 'no_cache']['mean_epoch_seconds']:.2f} s, "
              f"total {total:.1f} s, test accuracy {run.summary['test']['accuracy']:.4f}", flush=True)
    speedup = rows["no_cache"]["mean_epoch_seconds"] / rows["cache"]["mean_epoch_seconds"]
    result = {"benchmark": "feature_cache", "config": str(CONFIG.name), "epochs": args.epochs,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": sys.version.split()[0]},
              "rows": rows, "epoch_speedup": speedup}
    print(f"an epoch is {speedup:.0f}x faster on cached features")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
