"""Concept labs: wall-clock seconds of every `deepworks lab CONCEPT` in full mode (and --fast).

Each lab runs in its own fresh process through the command line, as a learner starts it, so
its figure includes Python start-up, importing torch and deepworks, loading the data, every
training run and writing the PNGs. The target: each lab under 60 s on a 2-core CPU. Labs
whose optional piece is missing exit 2 and are reported as skipped.

    python benchmarks/labs_time.py                 # every lab, full mode
    python benchmarks/labs_time.py --fast          # every lab, --fast
    python benchmarks/labs_time.py --only gan,cnn
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LIMIT_S = 60.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="labs to run, comma-separated (default: all)")
    p.add_argument("--fast", action="store_true", help="time --fast mode instead of the full mode")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/labs_time[_fast].json)")
    args = p.parse_args()
    from deepworks.labs import LABS

    names = args.only.split(",") if args.only else list(LABS)
    common.warn_if_busy()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepworks-labs-") as tmp:
        for name in names:
            cmd = [sys.executable, "-m", "deepworks", "lab", name, "--out", str(Path(tmp) / name)]
            if args.fast:
                cmd.append("--fast")
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            seconds = time.perf_counter() - start
            record = Path(tmp) / name / "lab.json"
            inner = json.loads(record.read_text())["seconds"] if record.exists() else None
            status = "ok" if proc.returncode == 0 else ("skipped (optional piece missing)" if proc.returncode == 2 else "failed")
            row = {"lab": name, "seconds": round(seconds, 2), "lab_seconds": inner, "rc": proc.returncode, "status": status,
                   "under_limit": proc.returncode == 0 and seconds < LIMIT_S}
            if proc.returncode != 0:
                row["stderr_tail"] = proc.stderr[-2000:]
            rows.append(row)
            print(f"{name:22s} {seconds:6.1f} s  (in the lab {inner if inner is not None else '-'} s)  {status}", flush=True)
    ok = [r for r in rows if r["rc"] == 0]
    print(f"\n{len(ok)} of {len(rows)} labs ran; slowest {max((r['seconds'] for r in ok), default=0):.1f} s; "
          f"all under {LIMIT_S:.0f} s: {all(r['under_limit'] for r in ok)}")
    out = Path(args.out or f"benchmarks/results/labs_time{'_fast' if args.fast else ''}.json")
    common.write_json(out, {"benchmark": "labs_time", "mode": "fast" if args.fast else "full", "limit_s": LIMIT_S,
                            "machine": common.machine(), "labs": rows})
    print(f"wrote {out}")
    return 0 if all(r["rc"] in (0, 2) for r in rows) and all(r["under_limit"] for r in ok) else 1


if __name__ == "__main__":
    sys.exit(main())
