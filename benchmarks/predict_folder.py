"""Batch inference over a folder of photos: ``deepworks predict FOLDER --out preds.csv`` against a
plain PyTorch loop written as a competent user would, side by side in one run.

Data: --photos JPEGs of 1024x768 (quality 90, generated once into --folder). The run: the
default ``cnn`` trained one epoch on a small photo folder at deepworks' default for photos
(224x224, shorter side scaled to 224 and the centre cut out), fp32. Both sides predict every
photo with that run's weights on the CPU, fp32:

  deepworks   `deepworks predict RUN FOLDER --out preds.csv --top-k 1` as a fresh process: the
              run loaded once, files decoded with torchvision.io (libjpeg-turbo) and resized as
              uint8 in 2 DataLoader workers, batches of up to 256 (the Predictor's default for
              224x224x3), normalised on the device, answers streamed to the CSV
  plain       a fresh process: an ImageFolder-style Dataset (torchvision.io.decode_jpeg, then
              transforms.v2 Resize(224) + CenterCrop(224) + ToDtype(float32, scale) + Normalize
              with the run's mean/std), DataLoader(batch 64, num_workers=2), the same model
              (deepworks.load_run(...).model) in eval mode under torch.inference_mode(); the
              class and probability of each photo written to a CSV

Measured for each side: wall time of the whole process (start-up, model load and all
photos), images per second over it, and peak memory of the process and its decoding workers
together (the process's resident memory plus its workers' private memory, from /proc, sampled
every 20 ms). The sides alternate
(plain, deepworks, deepworks, plain, ...) so drift on the machine falls on both.

    python benchmarks/predict_folder.py                         # 3000 photos, 2 rounds -> results/predict_folder.json
    python benchmarks/predict_folder.py --photos 200 --rounds 1 --out /tmp/quick.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PLAIN = r'''
import csv, sys
from pathlib import Path
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2
import json
import deepworks

run_dir, folder, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
run = deepworks.load_run(run_dir)
info = json.loads((Path(run_dir) / "data.json").read_text())
model = run.model.eval()
size = info["image"]["size"]


class Photos(Dataset):
    def __init__(self, folder):
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        self.transform = v2.Compose([v2.Resize(size[0], antialias=True), v2.CenterCrop(size),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(info["mean"], info["std"])])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x = decode_jpeg(read_file(str(self.files[i])), mode=ImageReadMode.RGB)
        return self.transform(x), i


data = Photos(folder)
loader = DataLoader(data, batch_size=64, num_workers=2)
with open(out, "w", newline="") as f, torch.inference_mode():
    writer = csv.writer(f)
    writer.writerow(["file", "prediction", "probability"])
    for x, idx in loader:
        probs = torch.softmax(model(x), dim=1)
        p, k = probs.max(dim=1)
        for i, c, q in zip(idx.tolist(), k.tolist(), p.tolist()):
            writer.writerow([str(data.files[i]), run.classes[c], f"{q:.6f}"])
'''


def _photo(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    small[..., seed % 3] = 200
    img = Image.fromarray(small).resize((1024, 768), Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, (768, 1024, 3))
    Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_photos(folder: Path, n: int, classes: int = 0) -> None:
    """``n`` photos under ``folder`` (in ``classes`` subfolders when given), made once."""
    jobs = []
    for i in range(n):
        sub = folder / (f"class{i % classes}" if classes else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"photo-{i:05d}.jpg"
        if not path.exists():
            jobs.append((path, i))
    with get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_photo, jobs, chunksize=16)


def footprint(pid: int, child: bool = False) -> int:
    """Bytes of ``pid`` and its descendants: the process's resident memory plus each descendant's
    private pages (what a forked decoding worker adds; the pages it shares with its parent are
    counted once, in the parent). Unlike a sum of PSS read process by process, this does not count
    the shared pages twice at the moment a worker forks."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f
                      if line.split(":")[0] in ("Rss", "Private_Clean", "Private_Dirty")}
        total = (fields["Private_Clean"] + fields["Private_Dirty"] if child else fields["Rss"]) * 1024
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(footprint(int(c), True) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError, KeyError, PermissionError):
        pass
    return total


def measure(cmd: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, footprint(proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"seconds": seconds, "peak_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "deepworks-bench-photos-1024")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "predict_folder.json")
    args = ap.parse_args()
    common.warn_if_busy()
    photos = args.folder / f"predict-{args.photos}"
    make_photos(photos, args.photos)
    train_folder = args.folder / "train"
    make_photos(train_folder, 60, classes=3)
    import deepworks

    work = Path(tempfile.mkdtemp(prefix="deepworks-predict-bench-"))
    run = deepworks.train({"data": {"path": str(train_folder)}, "model": {"name": "cnn"},
                           "train": {"epochs": 1, "progress": "none", "precision": "fp32"}, "report": False},
                          run_dir=work / "run")
    size = json.loads((run.dir / "data.json").read_text())["image"]["size"]
    exe = Path(sys.executable)
    sides = {
        "deepworks": [str(exe.parent / "deepworks"), "predict", str(run.dir), str(photos), "--out",
                      str(work / "deepworks.csv"), "--top-k", "1"],
        "plain": [str(exe), "-c", PLAIN, str(run.dir), str(photos), str(work / "plain.csv")],
    }
    order = []
    for r in range(args.rounds):
        order += ["plain", "deepworks"] if r % 2 == 0 else ["deepworks", "plain"]
    rows: dict[str, list[dict[str, float]]] = {"deepworks": [], "plain": []}
    for side in order:
        m = measure(sides[side])
        m["images_per_s"] = args.photos / m["seconds"]
        rows[side].append(m)
        print(f"{side:9s} {m['seconds']:6.1f} s  {m['images_per_s']:6.1f} images/s  peak {m['peak_bytes'] / 2**30:.2f} GB",
              flush=True)
    # the two sides answer the same (the plain loop's float resize differs from deepworks' uint8 one in the last bits)
    import pandas as pd

    a, b = pd.read_csv(work / "deepworks.csv"), pd.read_csv(work / "plain.csv")
    agree = float((a.sort_values("file")["prediction"].astype(str).to_numpy()
                   == b.sort_values("file")["prediction"].astype(str).to_numpy()).mean())
    result = {
        "what": "deepworks predict FOLDER --out preds.csv against a plain DataLoader(num_workers=2) loop, whole process",
        "photos": args.photos, "photo_size": [768, 1024], "model_input": size, "precision": "fp32", "device": "cpu",
        "machine": common.machine(),
        "runs": rows,
        "median": {side: {"seconds": statistics.median(m["seconds"] for m in ms),
                          "images_per_s": statistics.median(m["images_per_s"] for m in ms),
                          "peak_gb": statistics.median(m["peak_bytes"] for m in ms) / 2**30} for side, ms in rows.items()},
        "same_label_fraction": agree,
    }
    result["ratio_images_per_s"] = result["median"]["deepworks"]["images_per_s"] / result["median"]["plain"]["images_per_s"]
    common.write_json(args.out, result)
    print(json.dumps(result["median"], indent=1), f"\nratio deepworks/plain images/s: {result['ratio_images_per_s']:.2f}; "
          f"same label on {agree:.1%} of photos; -> {args.out}")


if __name__ == "__main__":
    main()
