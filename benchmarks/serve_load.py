"""``deepworks serve`` under load: throughput and latency (p50/p95/p99) of POST /predict with PNG
uploads at a given concurrency, micro-batched (``max_batch`` 32) against unbatched (``max_batch``
1), on the torch and the onnx backend.

The Fashion-MNIST reference CNN (``configs/reference-cnn.yaml``: 32/64 filters, a 128-unit head; one
epoch, fp32) is trained once (or ``--run RUN_DIR`` serves an existing run); each setting serves it with
uvicorn on a loopback port in this process (a background thread) and httpx sends ``--requests``
uploads of real Fashion-MNIST test images (28x28 PNG) from ``--concurrency`` clients at once, after
20 warm-up requests.
The queue limit is above the concurrency, so every request is answered (503s are counted).
Client and server share the machine's cores, so the figures are this machine's, not a limit.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py      # -> results/serve_load.json
    python benchmarks/serve_load.py --device cuda --backends torch   # the torch backend on the GPU

``--device`` is where the torch backend runs the model (``cpu`` by default, as ``deepworks serve``);
the onnx backend runs on the CPU either way. The training run uses the GPU when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import deepworks
from deepworks.serve import create_app

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def fashion_pngs(n: int) -> list[bytes]:
    """The first ``n`` Fashion-MNIST test images as PNG files' bytes."""
    from deepworks.data.datasets import load_dataset

    ds = load_dataset("fashion-mnist", root=str(common.prepare_data_root()))
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(ds.test_x[i, 0].numpy(), mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def serve_in_thread(app):
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", backlog=2048))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return server, thread, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)


async def load(url: str, pngs: list[bytes], requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            t = time.perf_counter()
            r = await client.post("/predict", files={"file": ("d.png", pngs[i % len(pngs)], "image/png")})
            latencies.append(time.perf_counter() - t)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        for i in range(20):  # warm-up: connections, the model's first batches
            await one(i)
        latencies.clear()
        statuses.clear()
        queue = iter(range(requests))

        async def client_loop() -> None:
            for i in queue:
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "requests_per_s": round(requests / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "serve_load.json")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    # ONNX Runtime first: after the torch settings, torch's idle OpenMP threads measured slowing the ONNX
    # settings that followed in the same process (170-185 requests/s instead of 470-490)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--run", type=Path, default=None, help="serve this run instead of training one")
    parser.add_argument("--device", default="cpu", help="where the torch backend runs the model: cpu, cuda or cuda:N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            run_dir = args.run
        else:
            config = Path(__file__).resolve().parent / "configs" / "reference-cnn.yaml"
            run_dir = deepworks.train(str(config), run_dir=Path(tmp) / "run", overrides={
                "train.epochs": 1, "train.progress": "none", "train.precision": "fp32", "report": False,
                "data.root": str(common.prepare_data_root())}).dir
        pngs = fashion_pngs(256)
        results = []
        for backend in args.backends.split(","):
            for max_batch in (32, 1):
                app = create_app(run_dir, backend=backend, max_batch=max_batch, max_wait_ms=2,
                                 queue_limit=4 * args.concurrency,
                                 device=args.device if backend == "torch" else "cpu")
                server, thread, url = serve_in_thread(app)
                try:
                    r = asyncio.run(load(url, pngs, args.requests, args.concurrency))
                finally:
                    server.should_exit = True
                    thread.join(timeout=30)
                batcher = app.state.serve["batcher"]
                r.update(backend=backend, device=str(app.state.predictor.predictor.device), max_batch=max_batch,
                         mean_batch=round(batcher.rows / max(1, batcher.batches), 2))
                print(r, flush=True)
                results.append(r)
    common.write_json(args.out, {
        "benchmark": "serve_load", "model": "the Fashion-MNIST reference CNN (421,738 parameters), 28x28 grayscale PNG uploads",
        "note": "client and server in one process (one GIL) on the same cores, so the figures are this "
                "machine's, not the server's limit",
        "machine": common.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "results": results,
    })


if __name__ == "__main__":
    main()
