"""Mutation check of the core numeric modules: evaluation/metrics.py, training/step.py, data/splits.py.

mutmut (configured in pyproject.toml, ``[tool.mutmut]``) changes one thing at a time in those files
(``<`` to ``<=``, ``+ 1``, a dropped argument, ...) and runs the fast tests that exercise the changed
function; a mutant the tests do not notice "survives". This script runs it, writes every survivor
(file, line, diff) to ``benchmarks/results/mutation.json`` and a table to ``benchmarks/RESULTS.md``,
and with ``--check`` fails (exit 1) when a survivor in metrics.py or splits.py is not in the allowlist
``.ci/mutation-allowed.txt`` (equivalent mutants, each with the reason it cannot change a result).

By default it runs a fixed sample, the mutants whose number ends in 0 (one in ten: mutmut numbers the
mutants of each function 1, 2, ..., so the sample is the same on every run while the function is
unchanged), which fits CI's budget on two cores; ``--sample 5`` runs those ending in 0 or 5, ``--all``
every mutant (1,701 of them; not timed: about half an hour at the one-in-five sample's rate of ~1 a second
on two busy cores).

    python benchmarks/mutation.py                   # the one-in-ten sample, write the results
    python benchmarks/mutation.py --check           # ... and fail on a survivor not in the allowlist
    python benchmarks/mutation.py --sample 5        # one in five
    python benchmarks/mutation.py --all             # every mutant
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results" / "mutation.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
ALLOWLIST = ROOT / ".ci" / "mutation-allowed.txt"
GATED = ("src/deepworks/evaluation/metrics.py", "src/deepworks/data/splits.py")  # survivors here fail --check
MODULES = ("deepworks.evaluation.metrics", "deepworks.training.step", "deepworks.data.splits")
SAMPLES = {10: "0", 5: "[05]", 2: "[02468]"}  # one in N: the last digits of the mutant numbers taken


sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def sample_patterns(every: int | None) -> list[str]:
    """mutmut name patterns of the sample (all of them for ``None``)."""
    return [] if every is None else [f"{module}.*__mutmut_*{SAMPLES[every]}" for module in MODULES]
MD_START, MD_END = "<!-- mutation:start -->", "<!-- mutation:end -->"
# mutmut's exit codes of a mutant's test run (mutmut/stats.py)
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "killed", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "crashed", -9: "crashed"}


def module_path(mutant: str) -> str:
    """``deepworks.data.splits.x_normalize__mutmut_3`` -> ``src/deepworks/data/splits.py``."""
    module = mutant.rsplit(".", 1)[0]
    return "src/" + module.replace(".", "/") + ".py"


def function_name(mutant: str) -> str:
    """``...x_normalize__mutmut_3`` -> ``normalize``; ``...xǁMetricAccumulatorǁcompute__mutmut_1`` ->
    ``MetricAccumulator.compute``."""
    name = re.sub(r"__mutmut_\d+$", "", mutant.rsplit(".", 1)[1])
    if name.startswith("xǁ"):
        return ".".join(name[2:].split("ǁ"))
    return name[2:]


def def_lines(path: Path) -> dict[str, int]:
    """The line of each function's ``def`` (methods as ``Class.method``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = item.lineno
    return out


def changed_line(diff: str) -> tuple[int, str, str]:
    """(line in the function, 1-based; the original line; the mutated line) of a unified diff."""
    lines = diff.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("@@"))
    old = int(re.match(r"@@ -(\d+)", lines[start]).group(1))
    offset = 0
    before = after = ""
    for line in lines[start + 1:]:
        if line.startswith("-") and not before:
            before = line[1:]
        elif line.startswith("+") and not after:
            after = line[1:]
        elif not before:
            offset += 1
    return old + offset, before.strip(), after.strip()


def allow_key(file: str, function: str, before: str, after: str) -> str:
    return f"{Path(file).name} :: {function} :: {before} => {after}"


def read_allowlist() -> dict[str, str]:
    """Entries of .ci/mutation-allowed.txt: a key line ``FILE :: FUNCTION :: ORIGINAL => MUTATED`` and,
    indented under it, ``reason: ...`` (required)."""
    entries: dict[str, str] = {}
    if not ALLOWLIST.exists():
        return entries
    key = None
    for number, line in enumerate(ALLOWLIST.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if not line[0].isspace():
            key = line.strip()
            entries[key] = ""
        elif line.strip().startswith("reason:") and key is not None:
            entries[key] = line.strip()[len("reason:"):].strip()
    missing = [k for k, reason in entries.items() if not reason]
    if missing:
        raise SystemExit(f"{ALLOWLIST.relative_to(ROOT)}: entries without a `reason:` line: {missing}. "
                         "Fix: say under each entry why the mutant cannot change any result.")
    return entries


def run_mutmut(patterns: list[str], jobs: int) -> tuple[float, str]:
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # no results cached from another checkout
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *patterns]
    # one torch thread per mutant process: `jobs` of them share the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"mutmut run failed (exit {done.returncode}): {' '.join(cmd)}")
    return seconds, done.stdout


def collect(patterns: list[str]) -> list[dict]:
    """Every selected mutant with its status, and for those that were not killed their line and diff."""
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    mutants = []
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        source = Path(str(meta)[: -len(".meta")])
        file = str(source.relative_to(ROOT / "mutants"))
        defs = def_lines(ROOT / file)
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
            if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            status = "not checked" if code is None else STATUS.get(code, f"suspicious ({code})")
            entry = {"mutant": name, "file": file, "function": function_name(name), "status": status}
            if status not in ("killed", "not checked"):
                diff = get_diff_for_mutant(name, path=source)
                offset, before, after = changed_line(diff)
                entry.update(line=defs.get(entry["function"], 1) + offset - 1, original=before, mutated=after, diff=diff)
                entry["key"] = allow_key(file, entry["function"], before, after)
            mutants.append(entry)
    return mutants


def _natural(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def machine() -> str:
    """The machine in one line, from the benchmarks' shared record (benchmarks/common.py)."""
    m = common.machine()
    load = m["load_average_at_start"][0]
    return f"{m['cpu']}, {m['usable_cores']} cores, Python {m['python']}, 1-minute load average {load:.2f} at the start"


def write_results(mutants, seconds, patterns, jobs, allowed, where) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for m in mutants:
        per_file = counts.setdefault(m["file"], {})
        per_file[m["status"]] = per_file.get(m["status"], 0) + 1
    remaining = [m for m in mutants if m["status"] not in ("killed", "not checked")]
    for m in remaining:
        m["allowed"] = allowed.get(m["key"])
    import importlib.metadata as md

    result = {
        "date": dt.date.today().isoformat(),
        "tool": f"mutmut {md.version('mutmut')}",
        "command": f"python benchmarks/mutation.py{'' if patterns else ' --all'} (mutmut run --max-children {jobs} "
                   + " ".join(repr(p) for p in patterns) + ")",
        "machine": where,
        "seconds": round(seconds, 1),
        "sample": list(patterns) or "all",
        "counts": counts,
        "not_killed": [{k: m[k] for k in ("file", "line", "function", "status", "mutant", "original", "mutated",
                                          "diff", "allowed")} for m in remaining],
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_markdown(result)
    return result


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else ""


def _write_markdown(result: dict) -> None:
    rows = ["| file | killed | survived | timeout | no tests | total |", "|---|---|---|---|---|---|"]
    for file, c in sorted(result["counts"].items()):
        total = sum(v for k, v in c.items() if k != "not checked")
        rows.append(f"| {file} | {c.get('killed', 0)} | {c.get('survived', 0)} | {c.get('timeout', 0)} | "
                    f"{c.get('no tests', 0)} | {total} |")
    table = ["| file:line | function | status | mutation (original => mutated) | why it is left |", "|---|---|---|---|---|"]
    for m in result["not_killed"]:
        if m["status"] == "timeout":
            why = "the tests ran past the time limit: the mutant loops or slows them (counted as caught)"
        else:
            why = m["allowed"] or ("**not in the allowlist**" if m["file"] in GATED else "step.py: listed, not gated")
        table.append(f"| {m['file'].removeprefix('src/deepworks/')}:{m['line']} | {m['function']} | {m['status']} | "
                     f"{_cell(m['original'])} => {_cell(m['mutated'])} | {why} |")
    section = "\n".join([
        MD_START,
        "## Mutation check: metrics, the training step, the splits",
        "",
        f"{result['date']}, {result['tool']}: `{result['command']}`, on {result['machine']}; "
        f"{result['seconds']:.0f} s in all (mutant generation, one traced run of the tests, then each mutant "
        "against the tests that reach its function). Configuration: `[tool.mutmut]` in `pyproject.toml` (the "
        "three files; the fast tests `tests/evaluation/test_metrics.py`, `tests/data/test_splits.py`, "
        "`tests/test_step.py` and the unit tests of `tests/test_subset.py`; error-message text and the console "
        "view `render_report` are not mutated). "
        + ("Every mutant was run." if result["sample"] == "all" else
           f"A fixed sample: the mutants whose number matches `{result['sample'][0].rsplit('*', 1)[1]}` at the end "
           "(mutmut numbers each function's mutants 1, 2, ...; `--sample 5` and `--all` run more)."),
        "CI (`.ci/run`, after `make test`) runs the same sample with `--check`: a survivor in metrics.py or "
        "splits.py that is not in `.ci/mutation-allowed.txt` (equivalent mutants, each with its reason) fails it. "
        "Every mutant that was not killed, with its diff: `results/mutation.json`.",
        "",
        *rows,
        "",
        *table,
        MD_END,
    ])
    text = RESULTS_MD.read_text(encoding="utf-8")
    if MD_START in text:
        head, rest = text.split(MD_START, 1)
        text = head + section + rest.split(MD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS_MD.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="run every mutant, not the fixed sample")
    parser.add_argument("--sample", type=int, choices=sorted(SAMPLES), default=10,
                        help="run one mutant in N (default 10: those whose number ends in 0)")
    parser.add_argument("--reuse", action="store_true",
                        help="do not run mutmut: judge the results it left in mutants/ again (after editing the allowlist)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a survivor in metrics.py or splits.py that is not in .ci/mutation-allowed.txt")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants run at once (default: the cores)")
    args = parser.parse_args(argv)
    allowed = read_allowlist()
    patterns = sample_patterns(None if args.all else args.sample)
    where = machine()
    if args.reuse:
        previous = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
        seconds, where = previous["seconds"], previous["machine"]
    else:
        seconds, _ = run_mutmut(patterns, args.jobs)
    mutants = collect(patterns)
    result = write_results(mutants, seconds, patterns, args.jobs, allowed, where)
    for file, c in sorted(result["counts"].items()):
        print(f"{file}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))
    print(f"{result['seconds']:.0f} s; survivors and diffs in {RESULTS_JSON.relative_to(ROOT)}")
    new = [m for m in result["not_killed"]
           if m["file"] in GATED and m["status"] in ("survived", "no tests") and not m["allowed"]]
    for m in new:
        print(f"\nNEW SURVIVOR {m['file']}:{m['line']} ({m['function']}, {m['mutant']}):\n{m['diff']}")
    if args.check and new:
        print(f"\n{len(new)} mutant(s) of metrics.py/splits.py survived the tests and are not in "
              f"{ALLOWLIST.relative_to(ROOT)}. Fix: add a test that fails on each (an oracle such as scikit-learn), "
              "or, if the mutant cannot change any result, add its key line (printed in results/mutation.json as "
              "file :: function :: original => mutated) with a `reason:` line to the allowlist.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
