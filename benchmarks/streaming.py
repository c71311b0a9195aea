"""Streaming throughput: images per second through decode, resize to 224x224 and a small CNN's
training step, deepworks' streaming path against a plain torchvision ImageFolder + DataLoader
loop, side by side in one run.

Data: a folder of camera-sized photos (3000x2000 JPEG, quality 85, two classes), generated once
into --folder. Both sides train the same small CNN (deepworks `cnn` with filters [16, 32], built
by deepworks' model registry) with the same AdamW step and the same precision (bf16 autocast +
channels_last where the CPU has native bf16, as deepworks picks by default), so what differs is
the data path:

  torchvision   ImageFolder (Pillow decode, RGB convert) -> transforms Resize(224) +
                CenterCrop(224) + ToTensor + Normalize -> DataLoader(batch 32, shuffle,
                num_workers=2, persistent_workers=True); a hand-written training loop
  deepworks     data.in_memory: false: torchvision.io (libjpeg-turbo) decode in 2 persistent
                DataLoader workers, uint8 resize (shorter side 224, centre crop) in the worker,
                uint8 batches converted and normalised in the main process; the deepworks Trainer

Both iterate over the same files (the training split deepworks draws, 70% of the folder) and
count only training steps (no validation). Each side runs --epochs epochs; images/s is the
mean over the epochs after the first (worker start-up and page cache warming fall in epoch 1).
The sides alternate per round (torchvision, deepworks, deepworks, torchvision) so drift on the
machine falls on both.

    python benchmarks/streaming.py                        # 256 photos, 3 epochs, 1 round -> results/streaming.json
    python benchmarks/streaming.py --photos 64 --epochs 2 --out /tmp/quick.json   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepworks.config import load_config
from deepworks.models.registry import model_from_config
from deepworks.pipeline import prepare_data
from deepworks.runtime import resolve_precision
from deepworks.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH = 32
WORKERS = 2


def _photo(args: tuple[Path, int, int]) -> None:
    path, label, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    small[..., label] = 210
    img = Image.fromarray(small).resize((3000, 2000), Image.Resampling.BILINEAR)
    noise = rng.integers(-6, 7, (2000, 3000, 3))  # some texture, so files are photo-sized (~1 MB)
    Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(path, quality=85)


def make_folder(folder: Path, n: int) -> Path:
    jobs = []
    for label, cls in enumerate(("a", "b")):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        jobs += [(folder / cls / f"IMG_{i:04d}.jpg", label, 7919 * label + i) for i in range(n // 2)]
    todo = [j for j in jobs if not j[0].exists()]
    if todo:
        print(f"writing {len(todo)} photos of 3000x2000 into {folder} ...", flush=True)
        with get_context("fork").Pool(2) as pool:
            pool.map(_photo, todo, chunksize=8)
    return folder


def config(folder: Path, epochs: int) -> dict:
    return {
        "data": {"path": str(folder), "in_memory": False},
        "model": {"name": "cnn", "filters": [16, 32]},
        "train": {"epochs": epochs, "batch_size": BATCH, "progress": "none", "num_workers": WORKERS,
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
    }


def run_deepworks(cfg, data, epochs: int) -> dict:
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, data.input_shape, data.task.output_size())
    trainer = Trainer(model, cfg.train, task=data.task, seed=cfg.seed)
    history = trainer.fit(data.train)  # training steps only, like the loop below
    seconds = [h["seconds"] for h in history]
    n = len(data.train)
    return {"side": "deepworks", "images": n, "epoch_seconds": [round(s, 3) for s in seconds],
            "images_per_second": [round(n / s, 2) for s in seconds], "precision": trainer.precision.name}


def run_torchvision(cfg, data, epochs: int) -> dict:
    from torchvision import datasets, transforms
    from torch.utils.data import DataLoader, Subset

    mean, std = data.info["mean"], data.info["std"]
    tf = transforms.Compose([
        transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    folder = datasets.ImageFolder(cfg.data.path, transform=tf)
    train = Subset(folder, data.train.indices.tolist())  # the same files as deepworks' training split
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, data.input_shape, data.task.output_size())
    precision = resolve_precision("auto", torch.device("cpu"), model, "auto")
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    seconds = []
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.name == "bf16"):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    n = len(train)
    return {"side": "torchvision", "images": n, "epoch_seconds": [round(s, 3) for s in seconds],
            "images_per_second": [round(n / s, 2) for s in seconds], "precision": precision.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "deepworks-bench-photos"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "streaming.json"))
    args = parser.parse_args()

    folder = make_folder(Path(args.folder) / str(args.photos), args.photos)
    common.warn_if_busy()
    machine = common.machine()
    cfg = load_config(config(folder, args.epochs))
    data = prepare_data(cfg)
    runs = []
    for _ in range(args.rounds):
        for side in ("torchvision", "deepworks", "deepworks", "torchvision"):
            row = (run_deepworks if side == "deepworks" else run_torchvision)(cfg, data, args.epochs)
            print(f"{side:12s} epochs {row['epoch_seconds']} s -> {row['images_per_second']} images/s", flush=True)
            runs.append(row)
    summary = {}
    for side in ("torchvision", "deepworks"):
        rates = [r for row in runs if row["side"] == side for r in row["images_per_second"][1:]]
        summary[side] = {"images_per_second_after_first_epoch": round(statistics.mean(rates), 2),
                         "stdev": round(statistics.stdev(rates), 2) if len(rates) > 1 else 0.0}
    summary["deepworks_over_torchvision"] = round(
        summary["deepworks"]["images_per_second_after_first_epoch"]
        / summary["torchvision"]["images_per_second_after_first_epoch"], 3
    )
    print(f"deepworks / torchvision images per second: {summary['deepworks_over_torchvision']:.2f}", flush=True)
    common.write_json(Path(args.out), {"benchmark": "streaming", "machine": machine, "photos": args.photos,
                                       "epochs": args.epochs, "batch_size": BATCH, "workers": WORKERS,
                                       "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
