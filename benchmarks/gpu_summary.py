"""The GPU run's summary: ``benchmarks/gpu.sh``'s last step.

Reads what the steps wrote into ``--dir`` (``benchmarks/results/gpu/``: ``steps.tsv``, the steps'
exit statuses and seconds; ``gpu_tests.xml``, pytest's JUnit report of the GPU-only tests;
``epoch_time*.json``; ``serve_load.json``), names the card (``torch.cuda.get_device_name()``),
its driver (``nvidia-smi``), CUDA and cuDNN as torch sees them, and writes ``summary.json``
there. With ``--results-md`` it also writes the figures into that file's GPU section (between
``<!-- gpu:start -->`` and ``<!-- gpu:end -->``). It refuses to run without a CUDA GPU: the
figures it summarises are the card's, and there is no card to name.

    python benchmarks/gpu_summary.py --dir benchmarks/results/gpu --results-md benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MD_START, MD_END = "<!-- gpu:start -->", "<!-- gpu:end -->"
# the epoch_time.py runs of gpu.sh: file -> what the row is
EPOCH_RUNS = {
    "epoch_time.json": "defaults (bf16), torch.compile off",
    "epoch_time_fp32.json": "train.precision fp32, torch.compile off",
    "epoch_time_compile.json": "defaults (bf16), torch.compile on",
}


def describe_gpu() -> dict:
    """The card (device 0) as torch and nvidia-smi see it."""
    import torch

    props = torch.cuda.get_device_properties(0)
    info = {
        "name": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "devices_visible": torch.cuda.device_count(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "driver": None,
    }
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            info["driver"] = out.stdout.strip().splitlines()[0].strip()
    return info


def read_steps(folder: Path) -> list[dict]:
    """``steps.tsv``: one line per step, ``name<TAB>exit status<TAB>seconds<TAB>state``."""
    path = folder / "steps.tsv"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        name, rc, seconds, state = line.split("\t")
        steps.append({"step": name, "exit_status": int(rc), "seconds": float(seconds), "state": state})
    return steps


def read_tests(folder: Path) -> dict | None:
    """Counts from pytest's JUnit report of the GPU-only tests, and the names of those that failed."""
    path = folder / "gpu_tests.xml"
    if not path.exists():
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "not_passed": failed}


EPOCH_KEYS = ("device", "precision", "s_per_epoch", "first_epoch_s", "s_per_epoch_after_first", "epoch_seconds",
              "test_accuracy", "compiled", "data_on_gpu", "cuda_allocated_at_train_begin_bytes",
              "in_memory_data_bytes", "channels_last", "optimizer_impl", "error")


def read_epochs(folder: Path) -> list[dict]:
    rows = []
    for name, what in EPOCH_RUNS.items():
        path = folder / name
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        for framework, r in report["results"].items():
            row = {"file": name, "run": what, "framework": framework, "epochs": report["settings"]["epochs"]}
            row.update({k: r[k] for k in EPOCH_KEYS if k in r})
            if framework == "deepworks" and "resolved_train_config" in r:
                cfg = r["resolved_train_config"]
                row.update(deterministic=cfg.get("deterministic"), compile_setting=cfg.get("compile"))
                row["channels_last"] = r.get("resolved_runtime", {}).get("channels_last")
            rows.append(row)
    return rows


def read_serve(folder: Path) -> list[dict]:
    path = folder / "serve_load.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["results"]


def summarise(folder: Path, gpu: dict) -> dict:
    return {
        "benchmark": "gpu",
        "command": "bash benchmarks/gpu.sh",
        "gpu": gpu,
        "machine": common.machine(),
        "steps": read_steps(folder),
        "gpu_tests": read_tests(folder),
        "epoch_time": read_epochs(folder),
        "serve_load": read_serve(folder),
    }


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    """The RESULTS.md section (between the markers) for ``summary``."""
    g, m = summary["gpu"], summary["machine"]
    lines = [
        MD_START,
        "## GPU",
        "",
        f"Measured by `bash benchmarks/gpu.sh`, {m['date']}: **{g['name']}** ({g['memory_gib']} GiB, compute "
        f"capability {g['compute_capability']}), driver {g['driver'] or 'unknown'}, CUDA {g['cuda_runtime']} and "
        f"cuDNN {g['cudnn']} as torch {g['torch']} sees them; host CPU {m['cpu']}, {m['usable_cores']} cores. Raw "
        "JSON: `results/gpu/` (`summary.json` collects it).",
        "",
    ]
    epochs = summary["epoch_time"]
    if epochs:
        n = epochs[0]["epochs"]
        lines += [
            f"Seconds per epoch, the reference CNN on Fashion-MNIST (`epoch_time.py`, {n} epochs, 51,000 training "
            "and 9,000 validation images per epoch, batch 128); deepworks with its other defaults "
            "(`train.deterministic: true`, evaluation batch 512). \"data on the GPU\": the memory allocated on the "
            "card when training began, against the bytes of the in-memory uint8 images.",
            "",
            "| run | row | device | precision | torch.compile | data on the GPU | s/epoch | after the first "
            "| test accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in epochs:
            if "error" in r:
                lines.append(f"| {r['run']} | {r['framework']} | failed: {r['error']} | | | | | | |")
                continue
            compiled = {True: "on", False: "off", None: "-"}[r.get("compiled")]
            on_gpu = {True: "yes", False: "no", None: "-"}[r.get("data_on_gpu")]
            if r["framework"] == "limit":
                compiled, on_gpu = "off", "yes (moved once)" if r.get("device") == "cuda" else "no"
            precision = r.get("precision") or "?"
            if r.get("channels_last"):
                precision += " + channels_last"
            lines.append(
                f"| {r['run']} | {r['framework']} | {r.get('device')} | {precision} | {compiled} | {on_gpu} | "
                f"{_fmt(r.get('s_per_epoch'))} | {_fmt(r.get('s_per_epoch_after_first'))} | "
                f"{_fmt(r.get('test_accuracy'), '.4f')} |")
        lines.append("")
    serve = summary["serve_load"]
    if serve:
        lines += [
            f"Serving (`serve_load.py --device cuda --backends torch,plain`): the reference CNN, one epoch, fp32, "
            f"{serve[0]['requests']:,} PNG uploads from {serve[0]['concurrency']} concurrent clients; each server "
            "(`deepworks serve`, the plain FastAPI endpoint at batch 1) a separate process.",
            "",
            "| backend | device | max_batch | requests/s | p50 | p95 | p99 | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in serve:
            lines.append(f"| {r['backend']} | {r.get('device', '?')} | {r['max_batch']} | {r['requests_per_s']} | "
                         f"{r['p50_ms']} ms | {r['p95_ms']} ms | {r['p99_ms']} ms | {r.get('errors', '-')} |")
        lines.append("")
    tests = summary["gpu_tests"]
    if tests is not None:
        text = (f"GPU-only tests (`pytest -m gpu`): {tests['passed']} passed, {tests['failed']} failed, "
                f"{tests['errors']} errors, {tests['skipped']} skipped.")
        if tests["not_passed"]:
            text += " Not passed: " + ", ".join(f"`{t}`" for t in tests["not_passed"]) + "."
        lines.append(text)
    bad = [s for s in summary["steps"] if s["state"] != "ok"]
    if bad:
        lines.append("Steps that did not complete: " + ", ".join(
            f"{s['step']} ({s['state']}, exit status {s['exit_status']}, {s['seconds']:.0f} s)" for s in bad) + ".")
    total = sum(s["seconds"] for s in summary["steps"])
    if summary["steps"]:
        lines.append(f"The steps took {total:.0f} s in all.")
    lines.append(MD_END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path`` (which must have them) with ``section``."""
    text = path.read_text(encoding="utf-8")
    if MD_START not in text or MD_END not in text:
        sys.exit(f"{path}: no {MD_START} ... {MD_END} section to write into. Fix: add the two markers where the "
                 "GPU figures go.")
    head, rest = text.split(MD_START, 1)
    path.write_text(head + section + rest.split(MD_END, 1)[1], encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu",
                   help="where the steps wrote their files; summary.json goes there too")
    p.add_argument("--results-md", type=Path, default=None, help="also write the figures into this file's GPU section")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_summary.py: no CUDA GPU is visible to torch; the summary names the card the figures were "
                 "measured on. Fix: run it on the GPU machine, as the last step of benchmarks/gpu.sh.")
    summary = summarise(args.dir, describe_gpu())
    common.write_json(args.dir / "summary.json", summary)
    print(f"wrote {args.dir / 'summary.json'}")
    if args.results_md is not None:
        write_section(args.results_md, markdown(summary))
        print(f"wrote the GPU section of {args.results_md}")


if __name__ == "__main__":
    main()
