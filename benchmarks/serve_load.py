"""``deepworks serve`` under load against a plain FastAPI endpoint: throughput and latency
(p50/p95/p99) of POST /predict with PNG uploads at a given concurrency, each server in its own process.

The Fashion-MNIST reference CNN (``configs/reference-cnn.yaml``: 32/64 filters, a 128-unit head; one
epoch, fp32) is trained once (or ``--run RUN_DIR`` serves an existing run). Each server is started by
this script as a separate process on a loopback port, with ``--workers`` worker processes:

- ``onnx``, ``torch``: ``python -m deepworks serve RUN --backend B --workers W`` (micro-batched,
  ``--max-batch`` 32 by default; ``--max-batch 32,1`` adds the one-at-a-time rows);
- ``plain``: ``python -m uvicorn benchmarks.plain_endpoint:app --workers W``, the endpoint a competent
  user writes by hand (``plain_endpoint.py``: PIL, the run's normalisation, the model at batch 1 under
  ``torch.inference_mode()``).

Readiness is polled (``/ready``, ``/health``); then httpx, in this process, sends 20 warm-up requests
and ``--requests`` uploads of real Fashion-MNIST test images (28x28 PNG) from ``--concurrency``
clients at once; the server is stopped with SIGTERM. Each row records the CPU seconds the server's
processes and the clients' process spent during the timed requests (``server_cpu_s``,
``client_cpu_s``): on a small machine the httpx clients take about 5 ms of CPU a request, a core's
worth, and ``--client aiohttp`` (about 0.3 ms) leaves the cores to the server. Every answer must be a 200 and agree with
``Predictor.predict_proba`` on the same PNG files: the predicted class for every server, and for
``deepworks serve`` every class's probability within ``--atol`` (1e-5). A disagreement is recorded in
the JSON and makes the script exit with status 1.
Client and servers share the machine's cores, so the figures are this machine's, not a limit.

    python benchmarks/serve_load.py                        # -> results/serve_load.json
    python benchmarks/serve_load.py --workers 2            # both kinds of server with 2 worker processes
    python benchmarks/serve_load.py --client aiohttp --out results/serve_load_aiohttp.json
    python benchmarks/serve_load.py --device cuda --backends torch,plain   # the model on the GPU

``--device`` is where the torch backend and the plain endpoint run the model (``cpu`` by default, as
``deepworks serve``); the onnx backend runs on the CPU either way. The training run uses the GPU when
there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import deepworks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

BACKENDS = ("onnx", "torch", "plain")


def fashion_pngs(n: int, folder: Path) -> list[Path]:
    """The first ``n`` Fashion-MNIST test images as PNG files in ``folder``."""
    from deepworks.data.datasets import load_dataset

    ds = load_dataset("fashion-mnist", root=str(common.prepare_data_root()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.png"
        Image.fromarray(ds.test_x[i, 0].numpy(), mode="L").save(path, format="PNG")
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(backend: str, run_dir: Path, port: int, workers: int, max_batch: int,
                   max_wait_ms: float | None, device: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start one server."""
    env = dict(os.environ)
    # the server processes import deepworks (and benchmarks.plain_endpoint) as this script does
    paths = [str(HERE.parent), str(Path(deepworks.__file__).resolve().parent.parent)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if backend == "plain":
        env["DEEPWORKS_PLAIN_RUN"] = str(run_dir)
        env["DEEPWORKS_PLAIN_DEVICE"] = device
        return [sys.executable, "-m", "uvicorn", "benchmarks.plain_endpoint:app", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--log-level", "warning"], env
    cmd = [sys.executable, "-m", "deepworks", "serve", str(run_dir), "--port", str(port), "--backend", backend,
           "--workers", str(workers), "--max-batch", str(max_batch)]
    if max_wait_ms is not None:
        cmd += ["--max-wait-ms", str(max_wait_ms)]
    if backend == "torch":
        cmd += ["--device", device]
    return cmd, env


def wait_ready(proc: subprocess.Popen, url: str, path: str, log: Path, deadline_s: float = 300) -> float:
    """Poll ``url + path`` until it answers 200; seconds from the start. Fails if the server exits."""
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready:\n"
                               + log.read_text()[-3000:])
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # between polls
    raise RuntimeError(f"the server was not ready after {deadline_s:.0f} s:\n" + log.read_text()[-3000:])


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by the process ``pid`` and its worker processes
    (psutil, when installed: the benchmark's own measure of where the time goes)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.asynccontextmanager
async def http_client(kind: str, url: str, concurrency: int):
    """``post(path, png) -> (status, JSON or text)`` over ``concurrency`` keep-alive connections:
    httpx (the default) or aiohttp (a client that costs less CPU a request, which matters when the
    clients share the server's cores)."""
    if kind == "aiohttp":
        try:
            import aiohttp
        except ImportError:
            raise SystemExit("serve_load.py --client aiohttp needs aiohttp: pip install aiohttp") from None

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def post(path: str, png: bytes) -> tuple[int, object]:
                form = aiohttp.FormData()
                form.add_field("file", png, filename="d.png", content_type="image/png")
                async with session.post(path, data=form) as r:
                    return r.status, (await r.json() if r.status == 200 else (await r.text())[:300])

            yield post
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def post(path: str, png: bytes) -> tuple[int, object]:
            r = await client.post(path, files={"file": ("d.png", png, "image/png")})
            return r.status_code, (r.json() if r.status_code == 200 else r.text[:300])

        yield post


async def load(url: str, pngs: list[bytes], requests: int, concurrency: int, query: str,
               server_pid: int, client_kind: str = "httpx") -> tuple[dict, list]:
    """The load: 20 warm-up requests, then ``requests`` from ``concurrency`` clients; the figures and
    every timed answer as (image index, status, JSON or text)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    answers: list[tuple[int, int, object]] = []
    async with http_client(client_kind, url, concurrency) as post:
        async def one(i: int) -> None:
            k = i % len(pngs)
            t = time.perf_counter()
            status, body = await post("/predict" + query, pngs[k])
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
            answers.append((k, status, body))

        for i in range(20):  # warm-up: connections, the model's first batches
            await one(i)
        latencies.clear()
        statuses.clear()
        answers.clear()
        queue = iter(range(requests))

        async def client_loop() -> None:
            for i in queue:
                await one(i)

        server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_end = cpu_seconds(server_pid)
        server_cpu = None if server_cpu is None or server_end is None else server_end - server_cpu
    ms = np.array(latencies) * 1000
    return {"requests": requests, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "requests_per_s": round(requests / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": sum(v for k, v in statuses.items() if k != 200),
            # CPU seconds spent during the timed requests: the server's processes, the clients' process
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
            "client_cpu_s": round(client_cpu, 2)}, answers


def answer_probs(backend: str, body: dict, classes: list[str]) -> np.ndarray:
    if backend == "plain":
        probs = body["probabilities"]
    else:
        probs = {p["label"]: p["probability"] for p in body["predictions"]}
    return np.array([probs[c] for c in classes], dtype=np.float64)


def check_answers(backend: str, answers: list, expected: np.ndarray, classes: list[str], atol: float) -> dict:
    """Every answer against ``Predictor.predict_proba`` on the same PNG files: the class for all,
    the probabilities (within ``atol``) for deepworks serve."""
    wrong_class, worst, first_bad = 0, 0.0, None
    for k, status, body in answers:
        if status != 200:
            first_bad = first_bad or f"image {k}: status {status}: {body}"
            continue
        probs = answer_probs(backend, body, classes)
        label = body["prediction"] if backend == "plain" else body["predictions"][0]["label"]
        if label != classes[int(expected[k].argmax())]:
            wrong_class += 1
            first_bad = first_bad or f"image {k}: {label!r}, predict says {classes[int(expected[k].argmax())]!r}"
        worst = max(worst, float(np.abs(probs - expected[k]).max()))
    ok = all(status == 200 for _, status, _ in answers) and wrong_class == 0 and (
        backend == "plain" or worst <= atol)
    if ok is False and first_bad is None:
        first_bad = f"a probability differs from predict's by {worst:.2e} (> {atol:.0e})"
    return {"answers_checked": len(answers), "classes_differing": wrong_class,
            "max_abs_probability_diff": float(f"{worst:.3g}"), "matches_predict": ok, "first_mismatch": first_bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="worker processes of every server")
    parser.add_argument("--backends", default="onnx,torch,plain",
                        help="servers to measure: onnx and torch (deepworks serve --backend), plain (plain_endpoint.py)")
    parser.add_argument("--max-batch", default="32", help="deepworks serve --max-batch; a comma list gives a row each")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="deepworks serve --max-wait-ms (its default)")
    parser.add_argument("--atol", type=float, default=1e-5, help="deepworks serve's probabilities against predict's")
    parser.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx",
                        help="the HTTP client that sends the load (aiohttp costs the shared cores less)")
    parser.add_argument("--run", type=Path, default=None, help="serve this run instead of training one")
    parser.add_argument("--device", default="cpu", help="where torch runs the model: cpu, cuda or cuda:N")
    args = parser.parse_args()
    backends = args.backends.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"--backends: expected some of {', '.join(BACKENDS)}, got {', '.join(unknown)}")
    info = common.machine()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            run_dir = args.run.resolve()
        else:
            config = HERE / "configs" / "reference-cnn.yaml"
            run_dir = deepworks.train(str(config), run_dir=Path(tmp) / "run", overrides={
                "train.epochs": 1, "train.progress": "none", "train.precision": "fp32", "report": False,
                "data.root": str(common.prepare_data_root())}).dir
        if "onnx" in backends and not (run_dir / "model.onnx").exists():
            deepworks.export(run_dir)  # before the server starts, so that no timing includes it
        paths = fashion_pngs(256, Path(tmp) / "pngs")
        pngs = [p.read_bytes() for p in paths]
        predictor = deepworks.Predictor(run_dir, device="cpu", progress=False)
        expected = predictor.predict_proba([str(p) for p in paths])
        classes = list(predictor.classes)
        del predictor
        results = []
        failed = False
        for backend in backends:
            for max_batch in ([int(b) for b in args.max_batch.split(",")] if backend != "plain" else [1]):
                port = free_port()
                cmd, env = server_command(backend, run_dir, port, args.workers, max_batch, args.max_wait_ms,
                                          args.device)
                log = Path(tmp) / f"{backend}-{max_batch}.log"
                url = f"http://127.0.0.1:{port}"
                with open(log, "wb") as log_file:
                    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=HERE.parent)
                    try:
                        ready_s = wait_ready(proc, url, "/health" if backend == "plain" else "/ready", log)
                        query = "" if backend == "plain" else f"?top_k={len(classes)}"
                        r, answers = asyncio.run(load(url, pngs, args.requests, args.concurrency, query, proc.pid,
                                                        args.client))
                    finally:
                        code = stop(proc)
                r.update(server="plain FastAPI endpoint" if backend == "plain" else "deepworks serve",
                         backend=backend, device="cpu" if backend == "onnx" else args.device,
                         workers=args.workers, client=args.client, max_batch=max_batch, ready_s=round(ready_s, 1), exit_status=code,
                         command=" ".join(Path(c).name if c == sys.executable else c for c in cmd))
                r.update(check_answers(backend, answers, expected, classes, args.atol))
                failed |= not r["matches_predict"]
                print({k: v for k, v in r.items() if k != "command"}, flush=True)
                results.append(r)
    by = {(r["backend"], r["max_batch"]): r for r in results}
    plain = by.get(("plain", 1))
    ratios = {}
    if plain:
        for r in results:
            if r["backend"] != "plain":
                ratios[f"{r['backend']} (max_batch {r['max_batch']}) / plain"] = {
                    "requests_per_s": round(r["requests_per_s"] / plain["requests_per_s"], 2),
                    "p99": round(r["p99_ms"] / plain["p99_ms"], 2)}
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    common.write_json(args.out, {
        "benchmark": "serve_load", "model": "the Fashion-MNIST reference CNN (421,738 parameters), fp32, "
                                            "28x28 grayscale PNG uploads",
        "note": "each server a separate process started by the benchmark; the clients (httpx, asyncio) in the "
                "benchmark's process on the same cores, so the figures are this machine's, not the server's limit",
        "machine": info,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "workers": args.workers,
                     "max_wait_ms": args.max_wait_ms, "atol": args.atol,
                     "client": args.client},
        "ratios_to_plain": ratios,
        "results": results,
    })
    for name, v in ratios.items():
        print(f"{name}: {v['requests_per_s']}x the requests/s, {v['p99']}x the p99")
    if failed:
        print("some answers differ from predict's (see matches_predict in the JSON)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
