"""Does bf16 autocast cost accuracy? The same config trained in fp32 and bf16 over several seeds.

    python benchmarks/precision_accuracy.py                      # fashion-mnist-cnn.yaml, 5 epochs, seeds 0 1 2
    python benchmarks/precision_accuracy.py --epochs 15 --seeds 0 1 2 3 4

Each (seed, precision) pair is one `deepworks.train` run with `train.precision` set; the seed
changes the split, the initial weights and the batch order alike for both precisions. The
report gives each run's test accuracy, the per-seed difference bf16 - fp32 and its mean, and
seconds of training. Raw JSON goes to benchmarks/results/precision_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import deepworks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples/configs/fashion-mnist-cnn.yaml"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/precision_accuracy.json"))
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="deepworks-precision-") as tmp:
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                run = deepworks.train(
                    args.config, run_dir=Path(tmp) / f"{precision}-{seed}", seed=seed,
                    train={"epochs": args.epochs, "precision": precision, "progress": "none"},
                )
                s = run.summary
                runs.append({"seed": seed, "precision": precision, "test_accuracy": s["test"]["accuracy"],
                             "wall_seconds": s["wall_seconds"]})
                print(f"seed {seed}  {precision}  test accuracy {s['test']['accuracy']:.4f}  "
                      f"{s['wall_seconds']:.1f}s", flush=True)
    by = {(r["seed"], r["precision"]): r for r in runs}
    diffs = [by[(s, "bf16")]["test_accuracy"] - by[(s, "fp32")]["test_accuracy"] for s in args.seeds]
    mean = {p: statistics.mean(by[(s, p)]["test_accuracy"] for s in args.seeds) for p in ("fp32", "bf16")}
    secs = {p: statistics.mean(by[(s, p)]["wall_seconds"] for s in args.seeds) for p in ("fp32", "bf16")}
    print(f"\nmean test accuracy: fp32 {mean['fp32']:.4f}  bf16 {mean['bf16']:.4f}  "
          f"difference {100 * statistics.mean(diffs):+.2f} points (per seed: "
          + ", ".join(f"{100 * d:+.2f}" for d in diffs) + ")")
    print(f"mean training seconds: fp32 {secs['fp32']:.1f}  bf16 {secs['bf16']:.1f}")
    out = {"config": args.config, "epochs": args.epochs, "runs": runs, "mean_accuracy": mean,
           "mean_difference_points": 100 * statistics.mean(diffs), "mean_seconds": secs, "machine": common.machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
