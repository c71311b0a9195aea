#!/usr/bin/env bash
# The GPU column of benchmarks/RESULTS.md, measured in one go on a machine with one GPU:
#
#   bash benchmarks/gpu.sh             # with a GPU: run every step (under 8 minutes); without one: the dry run
#   bash benchmarks/gpu.sh --dry-run   # check that every step is ready to run, run nothing (exits 0)
#
# Steps (each writes under benchmarks/results/gpu/, its output also in <step>.log there):
#   gpu-tests      pytest -m gpu: the tests that need a CUDA GPU                         -> gpu_tests.xml
#   epoch          epoch_time.py, deepworks (defaults: bf16, data on the GPU) against the
#                  hand-tuned limit on the GPU, in the same run, torch.compile off          -> epoch_time.json
#   epoch-fp32     the same deepworks row in fp32                                          -> epoch_time_fp32.json
#   serve          serve_load.py, the torch backend and the plain endpoint on the GPU      -> serve_load.json
#   epoch-compile  the deepworks row with torch.compile on                                 -> epoch_time_compile.json
#   summary        gpu_summary.py: the card, driver, CUDA, torch and every figure          -> summary.json,
#                  and the GPU section of benchmarks/RESULTS.md
#
# Without a GPU (or with --dry-run) it says so in one line, lists the steps it would run, checks
# that every script, test file and config they use is there, that each Python step accepts its
# arguments and that pytest finds the GPU tests, and exits 0.
#
# Set-up on a fresh clone: the Python environment is $PYTHON if set, else .venv/bin/python, else a
# python3 that has the dependencies (src/ goes on PYTHONPATH); with none, a GPU run runs `make setup`
# first. Fashion-MNIST comes from the Debian package dataset-fashion-mnist (installed with apt-get
# when missing and run as root). Neither counts against the time budget: GPU_BUDGET_S (default 420)
# seconds for the steps, each step also capped; a step that overruns is stopped and recorded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="benchmarks/results/gpu"
DATA="/usr/share/datasets/fashion-mnist"
BUDGET_S="${GPU_BUDGET_S:-420}"
SUMMARY_RESERVE_S=30
EPOCHS=3

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$arg'; the only option is --dry-run (or --help)." >&2; exit 2 ;;
  esac
done

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
NEEDS="import torch, torchvision, yaml, pydantic, pytest, fastapi, uvicorn, httpx, multipart"

find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"; return; fi
  if command -v python3 >/dev/null 2>&1 && python3 -c "$NEEDS" >/dev/null 2>&1; then command -v python3; return; fi
  echo ""
}

SMI=""
if command -v nvidia-smi >/dev/null 2>&1; then
  SMI="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)"
fi
PY="$(find_python)"
if [ -z "$PY" ] && [ "$DRY" = 0 ] && [ -n "$SMI" ]; then
  echo "gpu.sh: no Python environment with deepworks' dependencies: running make setup (not timed)"
  make setup
  PY="$ROOT/.venv/bin/python"
fi
TORCH_GPU=""
if [ -n "$PY" ]; then
  TORCH_GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)"
fi

# the test files that hold GPU tests (marked gpu); pytest -m gpu selects the tests in them
mapfile -t GPU_TEST_FILES < <(grep -rlE 'mark\.gpu\b' tests --include='*.py' | sort)
P="${PY:-python}"  # (shown as python in the dry run's list when there is no environment)
EPOCH=("$P" benchmarks/epoch_time.py --epochs "$EPOCHS")
STEPS=(gpu-tests epoch epoch-fp32 serve epoch-compile summary)
declare -A CAP=([gpu-tests]=120 [epoch]=120 [epoch-fp32]=90 [serve]=90 [epoch-compile]=180 [summary]=$SUMMARY_RESERVE_S)

# the command of each step, in the array CMD
step_command() {
  case "$1" in
    gpu-tests) CMD=("$P" -m pytest -q -p no:randomly -m gpu "${GPU_TEST_FILES[@]}" --junitxml "$OUT/gpu_tests.xml") ;;
    epoch) CMD=("${EPOCH[@]}" --only deepworks,limit --set train.compile=off --out "$OUT/epoch_time.json") ;;
    epoch-fp32) CMD=("${EPOCH[@]}" --only deepworks --set train.compile=off --set train.precision=fp32
                     --out "$OUT/epoch_time_fp32.json") ;;
    serve) CMD=("$P" benchmarks/serve_load.py --device cuda --backends torch,plain --requests 1000 --concurrency 32
                --out "$OUT/serve_load.json") ;;
    epoch-compile) CMD=("${EPOCH[@]}" --only deepworks --set train.compile=on --out "$OUT/epoch_time_compile.json") ;;
    summary) CMD=("$P" benchmarks/gpu_summary.py --dir "$OUT" --results-md benchmarks/RESULTS.md) ;;
    *) echo "gpu.sh: no step named $1" >&2; exit 2 ;;
  esac
}

list_steps() {
  local i=0 name
  for name in "${STEPS[@]}"; do
    i=$((i + 1))
    step_command "$name"
    echo "  step $i: $name (at most ${CAP[$name]} s): ${CMD[*]}"
  done
}

# ------------------------------------------------------------------ the dry run

# Is each step ready? One process reads the steps' commands (one a line, arguments separated by
# tabs): pytest collects the GPU tests (at least one must be found); a script runs as it would, its
# imports included, until its argument parser has accepted the arguments, then stops; deepworks
# validates the --set overrides against the reference CNN's config.
CHECK_STEPS='
import argparse, contextlib, io, os, runpy, sys
parse = argparse.ArgumentParser.parse_args
class Parsed(Exception):
    pass
def parse_then_stop(self, *args, **kwargs):
    parse(self, *args, **kwargs)  # a bad argument exits here with status 2 and the parser'"'"'s message
    raise Parsed
argparse.ArgumentParser.parse_args = parse_then_stop
problems = 0
for line in sys.stdin.read().splitlines():
    name, *cmd = line.split("\t")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if cmd[1:3] == ["-m", "pytest"]:
                import pytest
                class Count:
                    found = 0
                    def pytest_collection_finish(self, session):
                        Count.found = len(session.items)
                args = cmd[3:]
                if "--junitxml" in args:  # nothing is written in a dry run
                    i = args.index("--junitxml")
                    del args[i:i + 2]
                status = pytest.main([*args, "--collect-only"], plugins=[Count()])
                ok, what = status == 0 and Count.found > 0, f"pytest finds {Count.found} GPU test(s)"
            else:
                sys.argv = cmd[1:]
                try:
                    runpy.run_path(cmd[1], run_name="__main__")
                    ok, what = False, f"{cmd[1]} ran past its argument parser"
                except Parsed:
                    ok, what = True, f"{cmd[1]} accepts its arguments"
                sets = [v for k, v in zip(cmd, cmd[1:]) if k == "--set"]
                if ok and sets:  # deepworks overrides: checked against the config epoch_time.py trains
                    from deepworks.config import load_config
                    load_config("benchmarks/configs/reference-cnn.yaml", sets)
                    what += " and deepworks its --set " + " ".join(sets)
    except SystemExit as exc:
        ok, what = False, f"{cmd[1]} refuses its arguments (exit status {exc.code})"
    except Exception as exc:
        ok, what = False, f"{cmd[1]}: {type(exc).__name__}: {exc}"
    if not ok:
        problems += 1
        for x in out.getvalue().splitlines()[-5:]:
            print("    " + x)
    mark = "ok" if ok else "FAILED"
    print(f"  {mark}: {name}: {what}", flush=True)
sys.stdout.flush()
os._exit(1 if problems else 0)  # at once: the imported libraries'"'"' exit handlers take seconds and matter not here
'

dry_run() {
  local why="$1" problems=0 name path
  echo "gpu.sh: $why; dry run: nothing is measured, the steps are checked. A GPU run would run:"
  list_steps
  for path in benchmarks/epoch_time.py benchmarks/serve_load.py benchmarks/plain_endpoint.py benchmarks/gpu_summary.py \
              benchmarks/common.py \
              benchmarks/configs/reference-cnn.yaml benchmarks/RESULTS.md "${GPU_TEST_FILES[@]}"; do
    [ -f "$path" ] || { echo "  MISSING: $path"; problems=$((problems + 1)); }
  done
  [ "${#GPU_TEST_FILES[@]}" -gt 0 ] || { echo "  MISSING: no test file under tests/ marks a test gpu"; problems=$((problems + 1)); }
  grep -q -- '<!-- gpu:start -->' benchmarks/RESULTS.md && grep -q -- '<!-- gpu:end -->' benchmarks/RESULTS.md \
    || { echo "  MISSING: the <!-- gpu:start --> ... <!-- gpu:end --> section in benchmarks/RESULTS.md"; problems=$((problems + 1)); }
  if [ -d "$DATA" ]; then echo "  data: $DATA is there"
  else echo "  data: $DATA is missing; a GPU run installs dataset-fashion-mnist (apt-get, as root) first"; fi
  if [ -z "$PY" ]; then
    echo "  python: no environment with deepworks' dependencies (set PYTHON, or make setup): the arguments are not checked"
  else
    echo "  python: $PY"
    for name in "${STEPS[@]}"; do
      step_command "$name"
      (IFS=$'\t'; echo "$name	${CMD[*]}")
    done | "$PY" -c "$CHECK_STEPS" || problems=$((problems + 1))
  fi
  if [ "$problems" -gt 0 ]; then
    echo "gpu.sh: dry run: $problems problem(s) above; a GPU run would not complete."
    exit 1
  fi
  echo "gpu.sh: dry run complete: every step is ready to run on a GPU."
  exit 0
}

NO_GPU="no GPU (nvidia-smi finds none and torch.cuda.is_available() is false)"
if [ "$DRY" = 1 ]; then
  if [ -n "$TORCH_GPU" ]; then dry_run "--dry-run asked for, with a GPU here ($TORCH_GPU)"
  else dry_run "--dry-run asked for, and ${NO_GPU/nvidia-smi finds none/nvidia-smi finds ${SMI:-none}}"; fi
fi
if [ -z "$TORCH_GPU" ]; then
  if [ -n "$SMI" ]; then
    echo "gpu.sh: nvidia-smi sees a GPU ($SMI) but torch in ${PY:-(no Python environment)} cannot use it." \
         "Fix: a CUDA build of torch in that environment (pip install torch), then run gpu.sh again." >&2
    exit 1
  fi
  dry_run "$NO_GPU"
fi

# ------------------------------------------------------------------ the GPU run

if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
  else
    echo "gpu.sh: $DATA is missing. Fix: apt-get install dataset-fashion-mnist (as root), then run gpu.sh again." >&2
    exit 1
  fi
fi

echo "gpu.sh: GPU: $TORCH_GPU${SMI:+ (nvidia-smi: $SMI)}; python: $PY; budget ${BUDGET_S} s for the steps"
mkdir -p "$OUT"
rm -f "$OUT"/steps.tsv "$OUT"/*.log "$OUT"/gpu_tests.xml "$OUT"/epoch_time*.json "$OUT"/serve_load.json "$OUT"/summary.json
STARTED=$SECONDS
FAILED=0
for name in "${STEPS[@]}"; do
  step_command "$name"
  left=$((BUDGET_S - (SECONDS - STARTED)))
  [ "$name" = summary ] || left=$((left - SUMMARY_RESERVE_S))
  limit=${CAP[$name]}
  [ "$left" -ge "$limit" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, the time budget is spent"
    printf '%s\t%s\t%s\t%s\n' "$name" -1 0 "skipped (budget spent)" >> "$OUT/steps.tsv"
    FAILED=$((FAILED + 1))
    continue
  fi
  echo "== $name (at most $limit s): ${CMD[*]}"
  t0=$SECONDS
  set +e
  timeout -k 10 "$limit" "${CMD[@]}" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  state=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then state="timed out after $limit s"; elif [ "$rc" != 0 ]; then state=failed; fi
  [ "$state" = ok ] || FAILED=$((FAILED + 1))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$state" >> "$OUT/steps.tsv"
  echo "== $name: $state ($((SECONDS - t0)) s)"
done
echo "gpu.sh: $((SECONDS - STARTED)) s; $FAILED step(s) did not complete; figures in $OUT/summary.json and benchmarks/RESULTS.md"
[ "$FAILED" = 0 ]
