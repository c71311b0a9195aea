"""Tables at scale: deepworks training on a 2,000,000-row CSV against ``pandas.read_csv`` of it,
side by side in one run, each in its own fresh process.

Data (generated once, seeded, into --data): 2,000,000 rows of 31 columns: 20 numeric columns
(normal, about 2% of cells empty), 10 string categorical columns with 3, 5, 10, 20, 50, 100, 200,
300, 400 and 500 distinct values, and a yes/no target that depends on two numbers and one category.

  pandas      ``pandas.read_csv(path)`` with its default options, alone: the floor a user knows
  floor       ``read_csv`` and then the first ``torch.optim.AdamW``: the least a PyTorch training
              script on the file waits before its first batch (torch's first optimizer imports
              ``torch._dynamo``, 1.5 s or more on these machines, whoever builds it)
  deepworks   ``deepworks.train`` of the table (target ``target``, model ``mlp`` [64], batch 256,
              one epoch; everything else deepworks' defaults): read, split, check duplicates and
              give-away columns, fit the encoder on the training rows, slots in memory, estimate
              the batch's memory, one epoch with its validation pass; the process ends there (the
              test split, baselines and report that follow a run are not measured)

Measured for each side: peak resident memory of its process (``ru_maxrss``: interpreter and
imports included; for deepworks at the end of the epoch, and at the first batch) and seconds:
for pandas the ``read_csv`` call, for deepworks from the call of ``deepworks.train`` to the start
of the first training batch (a callback's clock; the import of deepworks before it is timed
apart) and to the end of the epoch. Targets: deepworks' peak within 2x pandas', its time to
the first batch within 1.5x pandas' read time. The sides alternate (pandas, deepworks, deepworks,
pandas, ...) so drift on the machine falls on both.

    python benchmarks/table_scale.py                              # 2,000,000 rows -> results/table_scale.json
    python benchmarks/table_scale.py --rows 100000 --rounds 1 --out /tmp/quick.json   # smoke test
    python benchmarks/table_scale.py --until first-batch --rounds 3   # the time to the first batch only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CARDINALITIES = (3, 5, 10, 20, 50, 100, 200, 300, 400, 500)
NUMERIC = 20
MISSING = 0.02

PANDAS = r'''
import json, resource, sys, time
import pandas as pd
t = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rows": len(frame), "columns": frame.shape[1],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

FLOOR = r'''
import json, resource, sys, time
import pandas as pd
import torch
t = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
read = time.perf_counter() - t
torch.optim.AdamW(torch.nn.Linear(frame.shape[1], 2).parameters())  # torch's first optimizer imports torch._dynamo
print(json.dumps({"seconds": time.perf_counter() - t, "read_seconds": read,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

DEEPWORKS = r'''
import json, os, resource, sys, time
t0 = time.perf_counter()
import deepworks
from deepworks.training import Callback
imported = time.perf_counter() - t0
seen = {}


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock(Callback):
    def on_epoch_begin(self, trainer, epoch):  # the epoch's first training batch is next
        seen["seconds_to_first_batch"], seen["peak_rss_mb_at_first_batch"] = time.perf_counter() - start, rss_mb()
        if sys.argv[3] == "first-batch":  # --until first-batch: the time to the first batch only
            print(json.dumps(seen), flush=True)
            os._exit(0)

    def on_epoch_end(self, trainer, epoch, logs):  # one epoch trained (and validated): the measurement ends
        seen.update(seconds_to_epoch_end=time.perf_counter() - start, peak_rss_mb=rss_mb(), import_seconds=imported,
                    val_accuracy=logs.get("val_accuracy"), batch_size=trainer.config.batch_size,
                    precision=trainer.precision.name, device=str(trainer.device))
        info = json.loads((trainer.run.path / "data.json").read_text())
        seen.update(sizes=info["sizes"], slots=info["input_shape"][0], features=len(info["feature_names"]))
        print(json.dumps(seen), flush=True)
        os._exit(0)  # the test split, the baselines and the report are not part of this measurement


config = {"name": "table-scale", "data": {"path": sys.argv[1], "target": "target"},
          "model": {"name": "mlp", "hidden": [64]},
          "train": {"epochs": 1, "batch_size": 256, "progress": "none"}, "report": False}
start = time.perf_counter()
deepworks.train(config, run_dir=sys.argv[2], callbacks=[Clock()])
'''


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """The table, written with pyarrow's CSV writer (quotes only where needed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for j in range(NUMERIC):
        values = rng.normal(j, 1 + j, rows).round(4)
        values[rng.random(rows) < MISSING] = np.nan
        columns[f"num{j:02d}"] = pa.array(values, from_pandas=True)  # NaN -> null -> an empty cell
    codes = {}
    for k in CARDINALITIES:
        codes[k] = rng.integers(0, k, rows)
        names = pa.array([f"c{k}_{i}" for i in range(k)])
        columns[f"cat{k}"] = names.take(pa.array(codes[k]))
    signal = np.nan_to_num(np.asarray(columns["num00"])) * 0.5 - np.nan_to_num(np.asarray(columns["num01"])) * 0.2
    signal = signal + (codes[3] == 0) + rng.normal(0, 1, rows)
    columns["target"] = pa.array(np.where(signal > np.median(signal), "yes", "no"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    pacsv.write_csv(pa.table(columns), tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))
    tmp.replace(path)


def run_side(side: str, data: Path, work: Path, until: str = "epoch") -> dict:
    if side in ("pandas", "floor"):
        args = [sys.executable, "-c", PANDAS if side == "pandas" else FLOOR, str(data)]
    else:
        args = [sys.executable, "-c", DEEPWORKS, str(data), str(work / f"run-{time.time_ns()}"), until]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--data", type=Path, default=None, help="the CSV (generated there when missing)")
    parser.add_argument("--rounds", type=int, default=2, help="pandas and deepworks each this many times, alternating")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "table_scale.json")
    parser.add_argument("--until", choices=["epoch", "first-batch"], default="epoch",
                        help="first-batch: stop deepworks at its first training batch (times only, no epoch)")
    args = parser.parse_args()
    common.warn_if_busy()
    data = args.data or common.DEFAULT_DATA_ROOT / f"table-scale-{args.rows}.csv"
    if not data.is_file():
        t = time.perf_counter()
        generate(data, args.rows)
        print(f"generated {data} ({data.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
    order = []
    for r in range(args.rounds):
        order += ["pandas", "deepworks", "floor"] if r % 2 == 0 else ["floor", "deepworks", "pandas"]
    results: dict[str, list[dict]] = {"pandas": [], "deepworks": [], "floor": []}
    with tempfile.TemporaryDirectory() as work:
        for side in order:
            results[side].append(run_side(side, data, Path(work), args.until))
            print(side, json.dumps(results[side][-1]), flush=True)
    pandas_seconds = statistics.median(r["seconds"] for r in results["pandas"])
    pandas_rss = max(r["peak_rss_mb"] for r in results["pandas"])
    first = statistics.median(r["seconds_to_first_batch"] for r in results["deepworks"])
    whole = args.until == "epoch"
    epoch = statistics.median(r["seconds_to_epoch_end"] for r in results["deepworks"]) if whole else None
    rss = max(r["peak_rss_mb" if whole else "peak_rss_mb_at_first_batch"] for r in results["deepworks"])
    summary = {
        "pandas_read_seconds_median": round(pandas_seconds, 2), "pandas_peak_rss_mb": round(pandas_rss),
        "deepworks_seconds_to_first_batch_median": round(first, 2),
        "deepworks_seconds_to_epoch_end_median": round(epoch, 2) if whole else None, "until": args.until,
        "deepworks_peak_rss_mb": round(rss),
        "time_ratio": round(first / pandas_seconds, 3), "rss_ratio": round(rss / pandas_rss, 3),
        # the least any PyTorch training on the file waits: the read and torch's first optimizer
        "floor_seconds_median": round(statistics.median(r["seconds"] for r in results["floor"]), 2),
        "floor_ratio": round(statistics.median(r["seconds"] for r in results["floor"]) / pandas_seconds, 3),
        "targets": {"rss_ratio": 2.0, "time_ratio": 1.5},
    }
    print(json.dumps(summary, indent=2))
    out = {"machine": common.machine(), "rows": args.rows, "data": str(data),
           "file_mb": round(data.stat().st_size / 1e6, 1), "order": order, "results": results, "summary": summary,
           "load_average_at_end": [round(v, 2) for v in os.getloadavg()]}
    common.write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
