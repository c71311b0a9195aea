"""How long does `deepworks report` take on a Fashion-MNIST run? (acceptance: under 10 s)

The run is the reference CNN of examples/configs/fashion-mnist-cnn.yaml trained for one epoch
(about 30 s on a 2-core CPU), with per-layer gradient norms every 20 steps so that every
section of the page is drawn: 9,000 validation and 10,000 test predictions, a 10-class
confusion matrix, calibration, 16 wrong images, 20 gradient records. Or pass --run RUN_DIR.

Two figures, each the median of --repeats:
  cli:        `python -m deepworks report RUN_DIR` in a fresh process, start to exit (what a
              person waits for: the Python, torch and matplotlib imports included);
  in_process: deepworks.report(RUN_DIR) in this process after one warm-up call (the cost the
              end of `deepworks train` adds, where the imports are already paid).

    python benchmarks/report_time.py                  # -> results/report_time.json
    python benchmarks/report_time.py --run runs/fashion-mnist-cnn-20261124-101500
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deepworks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "fashion-mnist-cnn.yaml"
LIMIT_SECONDS = 10.0


def train_run(root: Path) -> Path:
    run = deepworks.train(CONFIG, run_dir=root / "fashion-mnist",
                          overrides={"train.epochs": 1, "train.log_gradients": 20, "train.progress": "none"})
    return run.dir


def time_cli(run_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deepworks", "report", str(run_dir)], check=True, capture_output=True)
    return time.perf_counter() - started


def time_in_process(run_dir: Path) -> float:
    started = time.perf_counter()
    deepworks.report(run_dir)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an existing run directory (default: train one, 1 epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "report_time.json"))
    args = parser.parse_args()
    machine = common.machine()
    common.warn_if_busy()
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        run_dir = args.run or train_run(Path(tmp))
        cli = [time_cli(run_dir) for _ in range(args.repeats)]
        time_in_process(run_dir)  # warm-up: imports and matplotlib's font cache
        warm = [time_in_process(run_dir) for _ in range(args.repeats)]
        page = run_dir / "report.html"
        result = {
            "run": str(args.run) if args.run else "fashion-mnist-cnn.yaml, train.epochs=1, train.log_gradients=20",
            "repeats": args.repeats,
            "cli_seconds": {"median": round(statistics.median(cli), 3), "all": [round(t, 3) for t in cli]},
            "in_process_seconds": {"median": round(statistics.median(warm), 3), "all": [round(t, 3) for t in warm]},
            "report_bytes": page.stat().st_size,
            "limit_seconds": LIMIT_SECONDS,
            "passed": statistics.median(cli) < LIMIT_SECONDS,
            "load_average_at_end": [round(v, 2) for v in __import__("os").getloadavg()],
        }
    print(f"deepworks report: {result['cli_seconds']['median']:.2f} s from the command line (median of {args.repeats}), "
          f"{result['in_process_seconds']['median']:.2f} s in process; page {result['report_bytes'] / 1e6:.2f} MB; "
          f"limit {LIMIT_SECONDS:.0f} s: {'pass' if result['passed'] else 'FAIL'}")
    common.write_json(Path(args.out), {"benchmark": "report_time", "machine": machine, "result": result})


if __name__ == "__main__":
    main()
