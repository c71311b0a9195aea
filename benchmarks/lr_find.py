"""Does `train.optimizer.lr: auto` pick a good learning rate? The range test's suggestion
against the best of a small grid, on digits and on Fashion-MNIST.

For each dataset the same config trains once per learning rate of a grid (half-decade
steps, AdamW), and the grid point with the best validation accuracy after the given epochs is
"best". The finder (deepworks.lr_find, 200 steps, seed 0) runs on the same config; the figure
is the factor between its suggestion and the best grid point (target: within 3x), and the
validation accuracy a run with `lr: auto` reaches.

    python benchmarks/lr_find.py                       # -> results/lr_find.json
    python benchmarks/lr_find.py --quick --out /tmp/lr.json   # digits only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import deepworks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
CASES = {
    "digits": ({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [16, 32]},
                "train": {"epochs": 10, "batch_size": 64, "progress": "none"}}, GRID),
    "fashion-mnist": (str(Path(__file__).resolve().parent / "configs" / "reference-cnn.yaml"), GRID[:5]),
}


def run_case(name: str, config, grid: list[float], epochs: int | None, root: Path) -> dict:
    overrides = {"train.progress": "none"}
    if name == "fashion-mnist":
        overrides["data.root"] = str(common.prepare_data_root())
    if epochs is not None:
        overrides["train.epochs"] = epochs
    rows = []
    for lr in grid:
        run = deepworks.train(config, run_dir=root / f"{name}-{lr:g}", overrides={**overrides, "train.optimizer.lr": lr})
        acc = max(h["val_accuracy"] for h in run.history)
        rows.append({"lr": lr, "best_val_accuracy": round(acc, 4)})
        print(f"{name}: lr {lr:g} -> best val accuracy {acc:.4f}", flush=True)
    best = max(rows, key=lambda r: r["best_val_accuracy"])
    found = deepworks.lr_find(config, overrides=overrides, out=root / f"{name}-lr-find.png")
    auto = deepworks.train(config, run_dir=root / f"{name}-auto", overrides={**overrides, "train.optimizer.lr": "auto"})
    auto_acc = max(h["val_accuracy"] for h in auto.history)
    factor = max(found["suggestion"], best["lr"]) / min(found["suggestion"], best["lr"])
    print(f"{name}: suggestion {found['suggestion']:.3g}, best grid lr {best['lr']:g} (factor {factor:.2f}); "
          f"lr: auto reaches {auto_acc:.4f} against the grid's best {best['best_val_accuracy']:.4f}", flush=True)
    return {"grid": rows, "best_grid_lr": best["lr"], "suggestion": found["suggestion"],
            "min_lr_at": found["min_lr_at"], "factor": round(factor, 3), "auto_val_accuracy": round(auto_acc, 4),
            "best_grid_val_accuracy": best["best_val_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--fashion-epochs", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lr_find.json"))
    args = parser.parse_args()
    machine = common.machine()
    results = {}
    with tempfile.TemporaryDirectory(prefix="lr-find-bench-") as tmp:
        for name, (config, grid) in CASES.items():
            if args.quick and name != "digits":
                continue
            epochs = args.fashion_epochs if name == "fashion-mnist" else None
            results[name] = run_case(name, config, grid, epochs, Path(tmp))
    common.write_json(Path(args.out), {"benchmark": "lr_find", "machine": machine, "results": results})


if __name__ == "__main__":
    main()
