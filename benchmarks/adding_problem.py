"""The adding problem (Hochreiter & Schmidhuber 1997): vanishing gradients, measured.

Each sequence has T steps of two features: a value drawn uniformly from [0, 1], and a marker
that is 1 at exactly two steps (one in the first half, one in the second) and 0 elsewhere.
The target is the sum of the two marked values. Predicting the mean (1.0) scores the target's
variance, 2/12 ~ 0.167 MSE; doing better needs the first marked value carried across up to T
steps.

A plain ``rnn`` (tanh) and an ``lstm`` of the same hidden size train through deepworks (the
Trainer, regression task, bare tensors) with the same optimizer, batch and number of steps.
The script reports each one's test MSE, its training time and its gradient reach: with
``train.log_gradients`` the Trainer records the norm of the loss's gradient with respect to
the input at each time step, and the reach is how many steps back (from the last step) that
norm stays above 1/1000 of its peak, on the last recorded step of training.

    python benchmarks/adding_problem.py                    # T=100 -> results/adding_problem.json
    python benchmarks/adding_problem.py --length 200 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepworks import Trainer
from deepworks.models import create_model


def adding_data(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, length, 2): values and markers; y (n,): the sum of the two marked values."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), y


def run(kind: str, args, data, root: Path) -> dict:
    (x, y), (vx, vy), (tx, ty) = data
    torch.manual_seed(args.seed)
    model = create_model(kind, input_shape=(args.length, 2), num_classes=1, hidden=args.hidden)
    steps_per_epoch = math.ceil(len(x) / args.batch)
    epochs = math.ceil(args.steps / steps_per_epoch)
    cfg = {
        "epochs": epochs, "batch_size": args.batch, "progress": "none", "precision": "fp32",
        "optimizer": {"name": "adam", "lr": args.lr}, "clip_grad_norm": 1.0, "monitor": "last",
        "log_gradients": args.log_every,
    }
    trainer = Trainer(model, cfg, task="regression", seed=args.seed, run_dir=root / kind)
    start = time.perf_counter()
    history = trainer.fit((x, y), (vx, vy))
    seconds = time.perf_counter() - start
    test = trainer.evaluate((tx, ty))
    records = [json.loads(line) for line in (root / kind / "gradients.jsonl").read_text().splitlines()]
    last = records[-1]["time_steps"]
    return {
        "model": kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": trainer.global_step,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "test_mse": round(float(test["loss"]), 4),
        "val_mse_by_epoch": [round(float(h["val_loss"]), 4) for h in history],
        "gradient_reach": trainer.summary["gradient_reach"],
        "last_time_steps": {"step": records[-1]["step"], "norms": [float(f"{v:.3g}") for v in last]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=100, help="time steps per sequence (T)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps for each model")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--train", type=int, default=16000, help="training sequences")
    ap.add_argument("--log-every", type=int, default=100, help="train.log_gradients")
    ap.add_argument("--models", default="rnn,lstm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "adding_problem.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = (adding_data(args.train, args.length, 1), adding_data(1000, args.length, 2), adding_data(4000, args.length, 3))
    baseline = float(((data[2][1] - data[0][1].mean()) ** 2).mean())  # predict the training mean
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            row = run(kind, args, data, Path(tmp))
            reach = row["gradient_reach"]
            print(f"{kind:5s} test MSE {row['test_mse']:.4f}  gradient reach {reach['steps']}/{reach['length']} steps  "
                  f"({row['steps']} steps, {row['train_seconds']:.0f} s)", flush=True)
            rows.append(row)
    result = {
        "benchmark": "adding_problem",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "predict_the_mean_test_mse": round(baseline, 4),
        "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_1min_at_start": load},
    }
    print(f"predicting the mean: test MSE {baseline:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
