"""A study's overhead: `deepworks tune` against the same study written by hand with Optuna, each
as a whole process, side by side in one run.

The study (the digits search space of examples/configs/digits-tune.yaml): 12 TPE trials over
the learning rate (log-uniform 1e-4..1e-1, SGD with momentum 0.9), dropout (0..0.5), activation
(relu, silu, elu), batch size (64, 128, 256) and the conv filters ([16, 32] or [32, 64]) of a
CNN (3x3 conv, batch norm, activation, 2x2 max-pool and dropout per block, a 64-unit dense head
with dropout 0.5), 15 epochs a trial, scored by the best epoch's validation accuracy, pruned by
Optuna's median pruner (the settings deepworks uses for 12 trials: 3 startup trials, no pruning
in epoch 1). Both sides train in fp32 (equal precision; deepworks' default on a CPU with bf16
would be bf16 autocast for a CNN) on the digits of scikit-learn (8x8, 1,797 images; 70/15/15
stratified split, standardised with the training split's statistics).

  deepworks  ``python -m deepworks tune CONFIG --trials 12 --study-dir DIR``: every trial a run
             directory (config, metrics, validation figures, the kept weights), the best trial
             completed once the study ends (test split, report), study.html, trials.csv
  by hand    a script a competent user would write: load_digits, train_test_split, a torch
             module, a plain training loop with DataLoader-free index batches, trial.report /
             should_prune, study.optimize(n_trials=12); nothing written

Measured: the wall time of each process (start to exit; imports included), and for the hand
script the seconds inside ``study.optimize``. Target (the issue): deepworks at most 1.5x the
hand study's process time. The sides alternate (hand, deepworks, deepworks, hand, ...).

    python benchmarks/tune_overhead.py                 # 2 rounds -> results/tune_overhead.json
    python benchmarks/tune_overhead.py --rounds 1 --trials 4 --epochs 3 --out /tmp/t.json   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HAND = r'''
import json, sys, time
import numpy as np
import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

trials, epochs = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(torch.get_num_threads())
optuna.logging.set_verbosity(optuna.logging.WARNING)
x, y = load_digits(return_X_y=True)
x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
x_val, _, y_val, _ = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
mean, std = x_tr.mean(), x_tr.std()
as_t = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8)
x_tr, x_val = as_t(x_tr), as_t(x_val)
y_tr, y_val = torch.tensor(y_tr), torch.tensor(y_val)
ACT = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}


def net(filters, activation, dropout):
    layers, channels, size = [], 1, 8
    for f in filters:
        layers += [nn.Conv2d(channels, f, 3, padding=1, bias=False), nn.BatchNorm2d(f), ACT[activation](),
                   nn.MaxPool2d(2), nn.Dropout(dropout)]
        channels, size = f, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, 64), ACT[activation](),
                         nn.Dropout(0.5), nn.Linear(64, 10))


def objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    activation = trial.suggest_categorical("activation", ["relu", "silu", "elu"])
    batch = trial.suggest_categorical("batch_size", [64, 128, 256])
    filters = trial.suggest_categorical("filters", ["16,32", "32,64"])
    torch.manual_seed(0)
    model = net([int(f) for f in filters.split(",")], activation, dropout)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    best = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        best = max(best, accuracy)
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return best


sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=max(3, min(10, trials // 3)))
pruner = optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 4)), n_warmup_steps=1)
study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
t = time.perf_counter()
study.optimize(objective, n_trials=trials)
print(json.dumps({"optimize_seconds": time.perf_counter() - t, "best": study.best_value,
                  "pruned": sum(x.state.name == "PRUNED" for x in study.trials)}))
'''


def deepworks_config(path: Path, epochs: int) -> Path:
    cfg = {
        "name": "tune-overhead", "seed": 0, "data": {"dataset": "digits"},
        "model": {"name": "cnn", "filters": [16, 32], "hidden": [64], "dropout": 0.25, "activation": "relu"},
        "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"name": "sgd", "lr": 0.01},
                  "monitor": "val_accuracy", "progress": "none", "precision": "fp32"},
        "report": True,
        "tune": {"metric": "val_accuracy", "sampler": "tpe", "pruner": "median", "space": {
            "train.optimizer.lr": {"log_uniform": [1.0e-4, 1.0e-1]}, "model.dropout": {"uniform": [0, 0.5]},
            "model.activation": {"choice": ["relu", "silu", "elu"]}, "train.batch_size": {"choice": [64, 128, 256]},
            "model.filters": {"choice": [[16, 32], [32, 64]]}}},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_side(side: str, work: Path, trials: int, epochs: int) -> dict:
    if side == "hand":
        args = [sys.executable, "-c", HAND, str(trials), str(epochs)]
    else:
        study = work / f"study-{time.time_ns()}"
        args = [sys.executable, "-m", "deepworks", "tune", str(deepworks_config(work / "tune.yaml", epochs)),
                "--trials", str(trials), "--study-dir", str(study)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=work, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    if side == "hand":
        result = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        summary = json.loads((study / "study.json").read_text())
        with open(study / "trials.csv", newline="") as f:
            states = [row["state"] for row in csv.DictReader(f)]
        result = {"best": summary["best"]["values"]["val_accuracy"], "pruned": states.count("pruned")}
    result["process_seconds"] = round(seconds, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="each side this many times, alternating")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tune_overhead.json")
    args = parser.parse_args()
    common.warn_if_busy()
    order = []
    for r in range(args.rounds):
        order += ["hand", "deepworks"] if r % 2 == 0 else ["deepworks", "hand"]
    results: dict[str, list[dict]] = {"hand": [], "deepworks": []}
    with tempfile.TemporaryDirectory() as work:
        for side in order:
            results[side].append(run_side(side, Path(work), args.trials, args.epochs))
            print(side, json.dumps(results[side][-1]), flush=True)
    hand = statistics.median(r["process_seconds"] for r in results["hand"])
    ours = statistics.median(r["process_seconds"] for r in results["deepworks"])
    summary = {"hand_process_seconds_median": hand, "deepworks_process_seconds_median": ours,
               "ratio": round(ours / hand, 3), "target": 1.5}
    print(json.dumps(summary, indent=2))
    common.write_json(args.out, {"machine": common.machine(), "trials": args.trials, "epochs": args.epochs,
                                 "order": order, "results": results, "summary": summary,
                                 "load_average_at_end": [round(v, 2) for v in os.getloadavg()]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
