"""``benchmarks/gpu.sh``: its dry run checks every step and exits 0, and its summary reads what the
steps write. (The GPU run itself needs a GPU; these run anywhere.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# the steps described in benchmarks/README.md, in order, and what each one's command must hold
STEPS = {
    "gpu-tests": ["-m pytest", "-m gpu", "tests/evaluation/test_metrics.py", "tests/data/test_augment.py",
                  "tests/test_serve.py", "--junitxml benchmarks/results/gpu/gpu_tests.xml"],
    "epoch": ["benchmarks/epoch_time.py", "--only deepworks,limit", "--set train.compile=off",
              "--out benchmarks/results/gpu/epoch_time.json"],
    "epoch-fp32": ["benchmarks/epoch_time.py", "--only deepworks", "--set train.precision=fp32",
                   "--out benchmarks/results/gpu/epoch_time_fp32.json"],
    "serve": ["benchmarks/serve_load.py", "--device cuda", "--backends torch", "--out benchmarks/results/gpu/serve_load.json"],
    "epoch-compile": ["benchmarks/epoch_time.py", "--only deepworks", "--set train.compile=on",
                      "--out benchmarks/results/gpu/epoch_time_compile.json"],
    "summary": ["benchmarks/gpu_summary.py", "--dir benchmarks/results/gpu", "--results-md benchmarks/RESULTS.md"],
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_lists_and_checks_every_step_and_exits_0():
    out_dir = BENCH / "results" / "gpu"
    before = sorted(out_dir.iterdir()) if out_dir.exists() else None
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpu.sh: --dry-run asked for") and "dry run: nothing is measured" in lines[0]
    if not torch.cuda.is_available():
        assert "no GPU" in lines[0]
    listed = [re.match(r"  step (\d+): (\S+) \(at most \d+ s\): (.*)", x) for x in lines]
    listed = [m for m in listed if m]
    assert [m[2] for m in listed] == list(STEPS)
    assert [int(m[1]) for m in listed] == list(range(1, len(STEPS) + 1))
    for m in listed:
        assert m[3].startswith(sys.executable + " ")
        for part in STEPS[m[2]]:
            assert part in m[3], (m[2], part)
    checked = {x.split(":")[1].strip() for x in lines if x.startswith("  ok: ")}
    assert checked == set(STEPS), proc.stdout
    assert not any("FAILED" in x or "MISSING" in x for x in lines)
    assert re.search(r"pytest finds [1-9]\d* GPU test", proc.stdout)
    assert lines[-1] == "gpu.sh: dry run complete: every step is ready to run on a GPU."
    assert (sorted(out_dir.iterdir()) if out_dir.exists() else None) == before  # a dry run writes nothing


def _load_summary_module():
    """benchmarks/gpu_summary.py (not a package; it puts benchmarks/ on sys.path for its common.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deepworks_bench_gpu_summary", BENCH / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_summary = _load_summary_module()


def test_summary_reads_the_steps_files_into_the_results_section(tmp_path):
    # the files a GPU run leaves, here with the CPU figures of benchmarks/results/ (the same formats)
    folder = tmp_path / "gpu"
    folder.mkdir()
    epoch = json.loads((BENCH / "results" / "epoch_time.json").read_text())
    epoch["results"] = {k: epoch["results"][k] for k in ("deepworks", "limit")}
    (folder / "epoch_time.json").write_text(json.dumps(epoch))
    shutil.copy(BENCH / "results" / "serve_load.json", folder / "serve_load.json")
    (folder / "steps.tsv").write_text("gpu-tests\t1\t41\tfailed\nepoch\t0\t95\tok\nepoch-compile\t124\t180\ttimed out after 180 s\n")
    (folder / "gpu_tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="test_x"/>'
        '<testcase classname="tests.a" name="test_y"><failure message="no"/></testcase>'
        '<testcase classname="tests.b" name="test_z"><skipped/></testcase></testsuite></testsuites>')
    gpu = {"name": "card", "memory_gib": 1.0, "compute_capability": "9.0", "devices_visible": 1,
           "cuda_runtime": "12.8", "cudnn": 91000, "torch": "2.x", "driver": "570.1"}
    summary = gpu_summary.summarise(folder, gpu)

    assert summary["gpu_tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1, "not_passed": ["tests.a::test_y"]}
    assert [(s["step"], s["state"]) for s in summary["steps"]] == [
        ("gpu-tests", "failed"), ("epoch", "ok"), ("epoch-compile", "timed out after 180 s")]
    rows = {r["framework"]: r for r in summary["epoch_time"]}
    for fw in ("deepworks", "limit"):
        assert rows[fw]["s_per_epoch"] == epoch["results"][fw]["s_per_epoch"]
        assert rows[fw]["test_accuracy"] == epoch["results"][fw]["test_accuracy"]
    serve = json.loads((BENCH / "results" / "serve_load.json").read_text())["results"]
    assert [r["requests_per_s"] for r in summary["serve_load"]] == [r["requests_per_s"] for r in serve]

    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# head\n\n<!-- gpu:start -->\nNot measured.\n<!-- gpu:end -->\n\n## tail\n")
    gpu_summary.write_section(results_md, gpu_summary.markdown(summary))
    text = results_md.read_text()
    assert text.startswith("# head\n\n<!-- gpu:start -->\n## GPU\n") and text.endswith("<!-- gpu:end -->\n\n## tail\n")
    assert "Not measured" not in text and "**card**" in text and "driver 570.1" in text
    for fw in ("deepworks", "limit"):
        assert f"| {epoch['results'][fw]['s_per_epoch']:.2f} |" in text
    assert f"| {serve[0]['requests_per_s']} |" in text
    assert "1 passed, 1 failed, 0 errors, 1 skipped" in text and "`tests.a::test_y`" in text
    assert "epoch-compile (timed out after 180 s, exit status 124, 180 s)" in text
    # the repository's RESULTS.md has the section gpu.sh writes into
    assert text.count(gpu_summary.MD_START) == 1
    assert (BENCH / "RESULTS.md").read_text().count(gpu_summary.MD_START) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_summary_refuses_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        gpu_summary.main(["--dir", str(tmp_path)])
    assert not (tmp_path / "summary.json").exists()
