"""What augmentation costs per epoch: the reference CNN on Fashion-MNIST trained with no
augmentation and with ``data.augment: [hflip, {random_crop: {padding: 4}}]``, side by side in
one process, same config otherwise (deepworks defaults, so the same precision: bf16 autocast
where the CPU has native bf16).

Two measurements:

  epoch time     deepworks.train() on benchmarks/configs/reference-cnn.yaml, the Trainer's own
                 per-epoch seconds (training pass + validation pass); the variants run in ABBA
                 order (none, augment, augment, none, ...) so drift on the machine falls on both
  augment alone  the built Augment called on every training batch of one epoch (batch 128, the
                 normalised training split, on the training device), timed without training

    python benchmarks/augment_overhead.py                    # 2 epochs per run, ABBA -> results/augment_overhead.json
    python benchmarks/augment_overhead.py --epochs 1 --subset 5000 --out /tmp/quick.json   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import deepworks
from deepworks.config import load_config, parse_overrides
from deepworks.data import build_augment
from deepworks.pipeline import prepare_data
from deepworks.runtime import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "reference-cnn.yaml"
AUGMENT = ["hflip", {"random_crop": {"padding": 4}}]
VARIANTS = {"none": [], "hflip+random_crop": AUGMENT}


def train_variant(name: str, root: Path, args: argparse.Namespace) -> dict:
    overrides = {"data.root": str(root), "data.augment": VARIANTS[name], **dict(parse_overrides(args.set))}
    print(f"== {name}: data.augment = {VARIANTS[name]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="augment-overhead-") as tmp:
        run = deepworks.train(
            CONFIG, run_dir=Path(tmp) / "run", overrides=overrides, train={"epochs": args.epochs, "progress": "log"}
        )
    return {
        "variant": name,
        "epoch_seconds": [round(h["seconds"], 3) for h in run.history],
        "val_accuracy": [round(h["val_accuracy"], 4) for h in run.history],
        "test_accuracy": run.summary["test"]["accuracy"],
        "precision": run.summary["precision"],
        "channels_last": run.summary["channels_last"],
        "device": run.summary["device"],
    }


def time_augment_alone(root: Path, args: argparse.Namespace) -> dict:
    """Seconds the Augment takes over one epoch's training batches, without training."""
    cfg = load_config(CONFIG, {"data.root": str(root), "data.augment": AUGMENT, **dict(parse_overrides(args.set))})
    data = prepare_data(cfg)
    device = resolve_device(cfg.train.device)
    x = data.train.x.to(device)
    augment = build_augment(cfg.data.augment, cfg.seed, input_shape=data.input_shape,
                            mean=data.info["mean"], std=data.info["std"])
    bs = cfg.train.batch_size
    batches = [x[s : s + bs] for s in range(0, len(x), bs)]  # (128, 1, 28, 28) each
    for step, xb in enumerate(batches[:20]):  # warm-up
        augment(xb, epoch=0, step=step)
    seconds = []
    for repeat in range(args.augment_repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for step, xb in enumerate(batches):
            augment(xb, epoch=1 + repeat, step=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {
        "batches": len(batches),
        "batch_size": bs,
        "seconds_per_epoch": [round(s, 4) for s in seconds],
        "best_seconds_per_epoch": round(best, 4),
        "microseconds_per_batch": round(best / len(batches) * 1e6, 1),
        "device": str(device),
    }


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name in VARIANTS:
        seconds = [s for r in runs if r["variant"] == name for s in r["epoch_seconds"]]
        later = [s for r in runs if r["variant"] == name for s in r["epoch_seconds"][1:]]
        out[name] = {
            "epochs": len(seconds),
            "s_per_epoch": round(sum(seconds) / len(seconds), 3),
            "s_per_epoch_without_first": round(sum(later) / len(later), 3) if later else None,
            "test_accuracy": [r["test_accuracy"] for r in runs if r["variant"] == name],
        }
    base, aug = out["none"]["s_per_epoch"], out["hflip+random_crop"]["s_per_epoch"]
    out["overhead"] = round(aug / base - 1, 4)
    if out["none"]["s_per_epoch_without_first"] and out["hflip+random_crop"]["s_per_epoch_without_first"]:
        out["overhead_without_first_epochs"] = round(
            out["hflip+random_crop"]["s_per_epoch_without_first"] / out["none"]["s_per_epoch_without_first"] - 1, 4
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per training run")
    p.add_argument("--rounds", type=int, default=1, help="ABBA rounds (each: none, augment, augment, none)")
    p.add_argument("--augment-repeats", type=int, default=5, help="timed epochs of the Augment alone (best is kept)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images (quick checks)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override; repeatable")
    p.add_argument("--out", default="benchmarks/results/augment_overhead.json")
    p.add_argument("--cache", default=str(common.DEFAULT_DATA_ROOT), help="where the extracted idx files go")
    args = p.parse_args(argv)

    common.warn_if_busy()
    info = common.machine()
    root = common.prepare_data_root(Path(args.cache), args.subset)
    alone = time_augment_alone(root, args)
    print(f"augment alone: {alone['best_seconds_per_epoch']:.3f} s per epoch of {alone['batches']} batches "
          f"({alone['microseconds_per_batch']:.0f} us per batch)", flush=True)
    order = ["none", "hflip+random_crop", "hflip+random_crop", "none"] * args.rounds
    runs = [train_variant(name, root, args) for name in order]
    summary = summarise(runs)
    share = alone["best_seconds_per_epoch"] / summary["none"]["s_per_epoch"]
    summary["augment_alone_share_of_plain_epoch"] = round(share, 4)

    print()
    print(f"{'variant':<20} {'s/epoch':>8} {'later s/epoch':>14}  test accuracy")
    for name in VARIANTS:
        r = summary[name]
        later = f"{r['s_per_epoch_without_first']:.2f}" if r["s_per_epoch_without_first"] else "-"
        print(f"{name:<20} {r['s_per_epoch']:>8.2f} {later:>14}  {r['test_accuracy']}")
    print(f"overhead of augmentation: {summary['overhead']:+.1%} of the epoch time "
          f"(the Augment alone: {share:.1%})")
    common.write_json(Path(args.out), {
        "benchmark": "augment_overhead",
        "machine": info,
        "settings": {"config": "benchmarks/configs/reference-cnn.yaml", "augment": AUGMENT, "epochs": args.epochs,
                     "order": order, "subset": args.subset, "overrides": args.set},
        "augment_alone": alone,
        "summary": summary,
        "runs": runs,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
