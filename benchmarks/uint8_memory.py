"""The in-memory path with uint8 pixels against float32 pixels: Fashion-MNIST epoch time and
the training tensor's size, side by side in one process.

  float32   what the in-memory path held before pixels were kept as uint8: the training split
            converted and normalised once, up front, to float32 (N, 1, 28, 28); batches are a
            gather from it
  uint8     the current path: the split stays uint8 as stored; each gathered batch is
            converted and normalised on the device (deepworks.data.ToInput, one multiply-add)

First the data side alone (one shuffled pass of training batches, no model, medians of 10), then
the epochs.

Both train the reference CNN (benchmarks/configs/reference-cnn.yaml, deepworks defaults: bf16
autocast + channels_last where the CPU has native bf16) with the same seed on the same pixels,
through the same Trainer, so they must also reach the same accuracy. Variants run in ABBA order
(float32, uint8, uint8, float32, ...) so drift on the machine falls on both.

    python benchmarks/uint8_memory.py                          # 2 epochs per run, 2 rounds -> results/uint8_memory.json
    python benchmarks/uint8_memory.py --epochs 1 --rounds 1 --out /tmp/quick.json   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from deepworks.config import load_config
from deepworks.data import TensorData
from deepworks.data.loaders import iterate_batches
from deepworks.models.registry import model_from_config
from deepworks.pipeline import prepare_data
from deepworks.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "reference-cnn.yaml"


def run_variant(name: str, cfg, data, epochs: int) -> dict:
    train, val = data.train, data.val
    if name == "float32":  # converted and normalised once, up front: the pre-uint8 in-memory path
        train, val = TensorData(train.inputs(), train.y), TensorData(val.inputs(), val.y)
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, data.input_shape, data.task.output_size())
    trainer = Trainer(model, cfg.train.model_copy(update={"epochs": epochs, "progress": "none"}), task=data.task,
                      seed=cfg.seed)
    started = time.perf_counter()
    history = trainer.fit(train, val)
    wall = time.perf_counter() - started
    row = {
        "variant": name,
        "train_tensor_bytes": train.x.numel() * train.x.element_size(),
        "train_tensor_dtype": str(train.x.dtype).removeprefix("torch."),
        "epoch_seconds": [round(h["seconds"], 3) for h in history],
        "val_accuracy": [round(h["val_accuracy"], 4) for h in history],
        "wall_seconds": round(wall, 3),
        "precision": trainer.precision.name,
        "channels_last": trainer.precision.channels_last,
    }
    print(f"{name:8s} epochs {row['epoch_seconds']} s, val acc {row['val_accuracy']}, "
          f"training tensor {row['train_tensor_bytes'] / 1e6:.1f} MB {row['train_tensor_dtype']}", flush=True)
    return row


def time_batches(data, repeats: int = 5) -> dict:
    """The data side alone: one shuffled pass of iterate_batches over the training split (batch
    128), float32 gather versus uint8 gather + convert/normalise, no model."""
    out = {}
    variants = {"float32": TensorData(data.train.inputs(), data.train.y), "uint8": data.train}
    for name in ("float32", "uint8", "uint8", "float32") * repeats:
        started = time.perf_counter()
        for xb, _ in iterate_batches(variants[name], 128, shuffle=True, seed=0, epoch=1):
            xb.sum()  # touch the batch as a model would
        out.setdefault(name, []).append(time.perf_counter() - started)
    return {name: {"median_seconds": round(statistics.median(v), 4), "runs": len(v)} for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both variants twice)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "uint8_memory.json"))
    args = parser.parse_args()

    common.warn_if_busy()
    machine = common.machine()
    cfg = load_config(CONFIG, {"data.root": str(common.prepare_data_root())})
    data = prepare_data(cfg)
    batches = time_batches(data)
    print(f"one pass of training batches, no model: float32 {batches['float32']['median_seconds']} s, "
          f"uint8 {batches['uint8']['median_seconds']} s (medians)", flush=True)
    rows = []
    for _ in range(args.rounds):
        for name in ("float32", "uint8", "uint8", "float32"):
            rows.append(run_variant(name, cfg, data, args.epochs))
    summary = {}
    for name in ("float32", "uint8"):
        mine = [r for r in rows if r["variant"] == name]
        epochs = [s for r in mine for s in r["epoch_seconds"]]
        summary[name] = {
            "mean_epoch_seconds": round(statistics.mean(epochs), 3),
            "stdev_epoch_seconds": round(statistics.stdev(epochs), 3) if len(epochs) > 1 else 0.0,
            "train_tensor_bytes": mine[0]["train_tensor_bytes"],
            "final_val_accuracy": sorted({r["val_accuracy"][-1] for r in mine}),
        }
    summary["uint8_over_float32_time"] = round(
        summary["uint8"]["mean_epoch_seconds"] / summary["float32"]["mean_epoch_seconds"], 4
    )
    summary["float32_over_uint8_bytes"] = summary["float32"]["train_tensor_bytes"] / summary["uint8"]["train_tensor_bytes"]
    print(f"uint8 / float32 epoch time: {summary['uint8_over_float32_time']:.3f}; "
          f"tensor {summary['float32_over_uint8_bytes']:.1f}x smaller", flush=True)
    common.write_json(Path(args.out), {"benchmark": "uint8_memory", "machine": machine, "epochs": args.epochs,
                                       "rounds": args.rounds, "batches_alone": batches, "runs": rows,
                                       "summary": summary})


if __name__ == "__main__":
    main()
