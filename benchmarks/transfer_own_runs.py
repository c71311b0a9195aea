"""Transfer from our own runs: does a CNN trained on some Fashion-MNIST classes help learn the others?

A reference CNN (fashion-mnist-cnn.yaml's architecture) is trained on classes 0-4 (T-shirt/top,
trouser, pullover, dress, coat), all their training images. Then classes 5-9 (sandal, shirt,
sneaker, bag, ankle boot) are learned from 10, 20 or 100 training images per class, three ways,
on the same images (``data.subset`` with a fixed ``subset.seed``):

* ``scratch``: the same CNN from random weights;
* ``features``: ``transfer.from`` the classes-0-4 run, body frozen, a new linear head on its
  128 cached features (L-BFGS, l2 = 1/n: a logistic regression);
* ``fine_tune``: ``transfer.from`` the same run, everything learning, the body at 0.3x the
  head's learning rate.

Every run is a normal ``deepworks.train`` call; test accuracy is on the official test images of
classes 5-9 (5,000). Each (n, mode) is repeated over ``--repeats`` different image subsets
(subset.seed 0, 1, ...), and the mean and the spread are reported.

    python benchmarks/transfer_own_runs.py                  # -> results/transfer_own_runs.json
    python benchmarks/transfer_own_runs.py --sizes 10 100 --repeats 2
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

SOURCE = [0, 1, 2, 3, 4]
TARGET = [5, 6, 7, 8, 9]
CNN = {"name": "cnn", "filters": [32, 64], "dropout": 0.1, "hidden": [128], "head_dropout": 0.3}


def source_config(epochs: int) -> dict:
    return {
        "name": "fmnist-0-4",
        "data": {"dataset": "fashion-mnist", "subset": {"classes": SOURCE}},
        "model": CNN,
        "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"name": "adamw", "lr": 0.002}, "progress": "none"},
        "report": False,
    }


def target_config(mode: str, per_class: int, subset_seed: int, source: Path, epochs: int) -> dict:
    data = {"dataset": "fashion-mnist",
            "subset": {"classes": TARGET, "train_per_class": per_class, "val_per_class": 20, "seed": subset_seed}}
    batch = min(32, 5 * per_class)
    cfg: dict = {"name": f"fmnist-5-9-{mode}-{per_class}", "data": data, "report": False,
                 "train": {"epochs": epochs, "batch_size": batch, "optimizer": {"name": "adamw", "lr": 0.002},
                           "schedule": "cosine", "progress": "none"}}
    if mode == "scratch":
        cfg["model"] = CNN
    elif mode == "features":
        cfg["transfer"] = {"mode": "feature_extraction", "from": str(source)}
        cfg["train"] = {"optimizer": "lbfgs", "l2": 1.0 / (5 * per_class), "epochs": 10, "progress": "none"}
    else:
        cfg["transfer"] = {"mode": "fine_tune", "from": str(source), "backbone_lr_scale": 0.3}
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 100], help="training images per class")
    parser.add_argument("--repeats", type=int, default=3, help="image subsets per size (subset.seed 0, 1, ...)")
    parser.add_argument("--source-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the scratch and fine-tuned runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transfer_own_runs.json")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="transfer-own-runs-"))
    started = time.perf_counter()
    source = deepworks.train(source_config(args.source_epochs), run_dir=root / "source")
    source_seconds = time.perf_counter() - started
    print(f"source: classes 0-4, test accuracy {source.summary['test']['accuracy']:.4f} "
          f"({source_seconds:.0f} s)", flush=True)
    rows = []
    for n in args.sizes:
        for mode in ("scratch", "features", "fine_tune"):
            accs, secs = [], []
            for r in range(args.repeats):
                t = time.perf_counter()
                run = deepworks.train(target_config(mode, n, r, source.dir, args.epochs), run_dir=root / f"{mode}-{n}-{r}")
                secs.append(time.perf_counter() - t)
                accs.append(float(run.summary["test"]["accuracy"]))
            row = {"per_class": n, "mode": mode, "test_accuracy": accs, "mean": statistics.mean(accs),
                   "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seconds": secs}
            rows.append(row)
            print(f"{n:>4} per class  {mode:<10} test accuracy {row['mean']:.4f} +- {row['stdev']:.4f} "
                  f"({', '.join(f'{a:.3f}' for a in accs)})", flush=True)
    result = {
        "benchmark": "transfer_own_runs",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": sys.version.split()[0]},
        "source": {"classes": SOURCE, "epochs": args.source_epochs, "test_accuracy": source.summary["test"]["accuracy"],
                   "seconds": source_seconds},
        "target": {"classes": TARGET, "val_per_class": 20, "test_images": source.summary.get("data", {}).get("sizes"),
                   "epochs": args.epochs, "repeats": args.repeats},
        "rows": rows,
        "precision": "deepworks defaults (bf16 autocast + channels_last for the CNN on this CPU; fp32 for the L-BFGS head)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
