"""The HTTP server of a run: FastAPI app, micro-batcher and the run's preprocessing.

Requests and what they become (the same functions ``deepworks.predict`` uses, so a served
prediction equals the CLI's on the same input):

- an image upload (multipart field ``file``): :func:`deepworks.data.images.decode_image_bytes`
  (the bytes counterpart of ``load_pixels``'s decoder; the pixel count from the header is checked
  before decoding), the run's channels and resize (data.json ``image``), then ``ToInput`` with the
  training mean/std;
- JSON ``{"rows": [{column: value, ...}, ...]}`` for a table run: the run's ``TableEncoder``;
- JSON ``{"texts": ["...", ...]}`` for a text run: the run's ``TextEncoder`` (or its sentence
  encoder, weights checked).

Under load: each request's input waits in a bounded asyncio queue; one worker task takes up to
``max_batch`` rows (waiting at most ``max_wait_ms`` for more after the first), runs the model once
in its own thread, and hands each request its rows. A full queue answers 503 with ``Retry-After``
at once; a body over ``max_body_bytes`` answers 413; an image over ``max_pixels`` 413; an
undecodable or truncated one 400. Errors are JSON ``{"error": "..."}``.

With an API key (``create_app(api_key=...)``, ``deepworks serve --api-key`` or ``DEEPWORKS_API_KEY``)
every request but ``/health`` needs it; a missing or wrong one answers 401 (:class:`ApiKey`).
"""


import asyncio
import gc
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.data.images import ImageTooLarge
from deepworks.errors import ConfigError, DataError
from deepworks.kinds import RunInputs, inputs_for_run
from deepworks.runs import existing_run

log = logging.getLogger("deepworks.serve")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # 10 MiB: a large photo
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: decoding one costs ~120 MB of RGB
ENV_SETTINGS = "DEEPWORKS_SERVE_SETTINGS"  # JSON of create_app's arguments, for `--workers N` (app_from_env)
BACKENDS = ("torch", "onnx")
INLINE_DECODE_BYTES = 16 * 1024  # uploads up to this size are decoded on the event loop (a 28x28 PNG: under 1 KB)


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a message naming what was wrong and the fix."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ServedModel:
    """A run's model behind one backend (``torch``: the best weights, through
    :class:`deepworks.Predictor`; ``onnx``: ``model.onnx`` in ONNX Runtime, exported first when
    missing). Requests become model inputs through the run's kind module
    (:mod:`deepworks.kinds`), the same code ``deepworks.predict`` uses; this class adds only
    what is HTTP's: which request fits the kind, and the status of a refusal."""

    def __init__(self, run_dir: str | Path, backend: str = "torch", device: str = "cpu"):
        if "://" in str(run_dir):
            raise ConfigError(f"serve: {run_dir!r} looks like a URL; the server only serves a local run directory "
                              "and never fetches a model. Fix: download the run yourself and give its folder.")
        if backend not in BACKENDS:
            raise ConfigError(f"serve --backend: expected one of {', '.join(BACKENDS)}, got {backend!r}.")
        self.device = check_device(device, backend)
        self.run = existing_run(run_dir)
        self.run_dir, self.backend = self.run.path, backend
        if not self.run.data.exists():
            raise ConfigError(f"{self.run.data}: missing; {self.run.path} has not prepared its data yet. "
                              "Fix: serve a run that has trained at least one epoch.")
        self.info = self.run.read_json(self.run.data)
        self.inputs: RunInputs = inputs_for_run(self.run_dir, self.info)
        self.kind = self.inputs.kind
        if self.kind == "series":
            raise ConfigError(f"serve: {self.run.path} is a forecasting run; the server answers image, table and text "
                              "runs. Fix: use `deepworks predict RUN_DIR history.csv` for forecasts.")
        self.loaded = False

    def load(self) -> None:
        """Load the model (seconds); before this only the run's description is read."""
        from deepworks.predictor import Predictor

        self.predictor = Predictor(self.run_dir, device=self.device, progress=False)
        self.inputs = self.predictor.inputs  # loaded: a sentence encoder once, not per request
        self.task, self.classes = self.predictor.task, self.predictor.classes
        if self.backend == "onnx":
            self._load_onnx()
        self.loaded = True

    def _load_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("serve --backend onnx needs ONNX Runtime: pip install 'deepworks[export]'.") from None
        path = self.run_dir / "model.onnx"
        if not path.exists() or not path.with_name("model.onnx.json").exists():
            from deepworks.exporting import export

            export(self.run_dir)
        self.sidecar = json.loads(path.with_name("model.onnx.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        # idle intra-op threads sleep instead of spinning: spinning threads take the cores that the
        # event loop (and, on one machine, the clients) need between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.sidecar["input"]["name"]

    # -- requests -> model input (one tensor per request, its first axis the rows) --

    def image_input(self, data: bytes, max_pixels: int) -> torch.Tensor:
        """An uploaded file -> the kind's raw rows (for images uint8 (1, C, H, W), the pixels
        ``deepworks.predict`` gives the same file)."""
        if self.inputs.json_key is not None:
            raise RequestError(415, f"this run ({self.run_dir.name}) reads {self.inputs.reads}, not images. "
                                    f"Fix: POST JSON {self.inputs.json_example()}.")
        try:
            return self.inputs.from_upload(data, max_pixels)
        except ImageTooLarge as exc:
            raise RequestError(413, str(exc)) from None
        except DataError as exc:
            raise RequestError(400, str(exc)) from None

    def json_input(self, body: Any) -> torch.Tensor:
        """JSON ``{"rows": [...]}`` (table runs) or ``{"texts": [...]}`` (text runs) -> model input rows."""
        key = self.inputs.json_key
        if key is None:
            raise RequestError(415, f"this run ({self.run_dir.name}) reads images. Fix: upload the image file as the "
                                    "multipart form field `file` (curl -F file=@digit.png URL/predict).")
        if not isinstance(body, dict) or not isinstance(body.get(key), list) or not body[key]:
            raise RequestError(422, f"expected a JSON object {self.inputs.json_example()} with at least one entry in "
                                    f"{key!r}, got {_short(body)}.")
        try:
            return self.inputs.from_json(body[key])
        except DataError as exc:
            raise RequestError(422, str(exc)) from None

    def warmup_input(self) -> torch.Tensor:
        return self.inputs.warmup()

    @property
    def page_kind(self) -> str:
        """What the page at / asks for: an image upload, table rows or texts."""
        return {None: "image", "rows": "table", "texts": "text"}[self.inputs.json_key]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Model outputs (float32) for a batch of inputs made by the methods above."""
        if self.backend == "torch":
            return self.predictor.forward(batch)
        feed = self.inputs.onnx_feed(batch)
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: feed})[0], dtype=np.float32))

    def results(self, outputs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        """One result per row: ``predictions`` (label, probability; top_k) for classification, the
        task's own result (``prediction`` in the target's units) otherwise."""
        out = []
        for r in self.task.predict(outputs, top_k):
            if "top_k" in r:
                out.append({"predictions": [{"label": p["class"], "probability": p["probability"]} for p in r["top_k"]]})
            else:
                out.append(r)
        return out


def check_device(device: str, backend: str) -> str:
    """``device`` for the torch backend's model (``cpu``, ``cuda``, ``cuda:N``), checked before any loading."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"serve device: expected cpu, cuda or cuda:N, got {device!r}. Fix: device='cpu' (the default).")
    if device == "cpu":
        return device
    if backend != "torch":
        raise ConfigError(f"serve device: {device!r} applies to backend torch only; backend {backend} runs on the CPU "
                          "(ONNX Runtime's CPU provider). Fix: backend='torch', or device='cpu'.")
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ConfigError(f"serve device: {device!r} asked for, but {torch.cuda.device_count()} CUDA GPU(s) are "
                          "visible. Fix: device='cpu' (the default).")
    return device


def choose_backend(run_dir: str | Path, device: str = "cpu") -> tuple[str, str]:
    """``--backend auto``: (``onnx`` or ``torch``, why). ONNX Runtime when the run has a passing export
    (``model.onnx`` beside its sidecar, the file's SHA-256 as recorded, the parity check within its
    tolerance, written after the run's weights) and ONNX Runtime is installed, and the model runs on
    the CPU; the torch backend otherwise."""
    import importlib.util

    run = Path(run_dir)
    onnx, sidecar, weights = run / "model.onnx", run / "model.onnx.json", run / "model.safetensors"
    if device != "cpu":
        return "torch", f"--device {device}: ONNX Runtime here runs on the CPU"
    if not onnx.is_file() or not sidecar.is_file():
        return "torch", f"no model.onnx yet (`deepworks export {run}` makes one, and serve then runs it on ONNX Runtime)"
    try:
        record = json.loads(sidecar.read_text())
        parity = record["parity"]
        passed = float(parity["max_abs_diff"]) <= float(parity["tolerance"])
    except (ValueError, KeyError, TypeError):
        return "torch", f"{sidecar.name} is not an export's record (export the run again)"
    if not passed:
        return "torch", f"model.onnx missed its parity check ({parity['max_abs_diff']:.2g} > {parity['tolerance']:.2g})"
    if weights.is_file() and onnx.stat().st_mtime < weights.stat().st_mtime:
        return "torch", "model.onnx is older than the run's weights (export the run again)"
    from deepworks.data.encoders import cached_sha256

    if record.get("sha256") != cached_sha256(onnx):
        return "torch", "model.onnx is not the file its export recorded (export the run again)"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "ONNX Runtime is not installed (pip install 'deepworks[export]')"
    return "onnx", f"model.onnx passed its parity check (largest difference {float(parity['max_abs_diff']):.2g})"


def _short(value: Any) -> str:
    text = json.dumps(value)[:80] if not isinstance(value, bytes) else repr(value[:40])
    return text


@dataclass
class _Job:
    x: torch.Tensor
    future: asyncio.Future


class MicroBatcher:
    """Requests' inputs in a bounded queue; one worker runs up to ``max_batch`` rows at once.

    ``submit`` raises :class:`RequestError` 503 (``Retry-After``) at once when ``queue_limit``
    requests are already waiting, so an overloaded server refuses quickly instead of slowing
    every request down."""

    def __init__(self, forward: Any, max_batch: int = 32, max_wait_ms: float = 5.0, queue_limit: int = 256):
        if max_batch < 1 or queue_limit < 1 or max_wait_ms < 0:
            raise ConfigError(f"serve: max_batch and queue_limit must be >= 1 and max_wait_ms >= 0, got "
                              f"{max_batch}, {queue_limit} and {max_wait_ms}.")
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_limit)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepworks-model")
        self.task: asyncio.Task | None = None
        self.batches = 0  # how many model calls; rows / batches is the mean batch size
        self.rows = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def full(self) -> bool:
        return self.queue.full()

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs for ``x``'s rows (run with other requests' rows)."""
        job = _Job(x, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise RequestError(503, f"the server is at capacity ({self.queue.maxsize} requests waiting). "
                                    "Retry after a second.", {"Retry-After": "1"}) from None
        return await job.future

    async def run_now(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through the model outside the queue (the warm-up batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, x)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Job | None = None
        while True:
            first = carried or await self.queue.get()
            carried = None
            jobs, rows = [first], first.x.shape[0]
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                left = deadline - loop.time()
                try:
                    job = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if rows + job.x.shape[0] > self.max_batch:
                    carried = job  # first of the next batch
                    break
                jobs.append(job)
                rows += job.x.shape[0]
            jobs = [j for j in jobs if not j.future.done()]  # a client that went away
            if not jobs:
                continue
            try:
                batch = torch.cat([j.x for j in jobs]) if len(jobs) > 1 else jobs[0].x
                outputs = await loop.run_in_executor(self.executor, self.forward, batch)
            except Exception as exc:  # every request of the batch learns why
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            self.rows += int(batch.shape[0])
            start = 0
            for j in jobs:
                n = j.x.shape[0]
                if not j.future.done():
                    j.future.set_result(outputs[start:start + n])
                start += n


async def drain(receive: Any, limit: int) -> None:
    """Read and drop a request's body (up to ``limit`` bytes), so that a client still sending
    receives the refusal instead of a reset connection."""
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (JSON) before the app reads it.

    The declared ``Content-Length`` is checked first; a body without one is counted as it
    arrives. The rest of an oversized body is read and dropped (up to 16x the limit), so that
    the client, still sending, receives the 413 instead of a reset connection."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await drain(receive, 16 * self.limit)
            return await self._refuse(send, int(declared))
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracked(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await drain(receive, 16 * self.limit)
            await self._refuse(send, seen)

    async def _refuse(self, send: Any, size: int) -> None:
        body = json.dumps({"error": f"the request body is {size} bytes or more, over the limit of {self.limit} "
                                    "bytes. Fix: send a smaller file (or start the server with a larger "
                                    "--max-body-bytes)."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


ENV_API_KEY = "DEEPWORKS_API_KEY"  # the key when `deepworks serve --api-key` is not given
OPEN_PATHS = frozenset({"/health"})  # answered without the key (liveness probes)


def check_api_key(key: str) -> bytes:
    """The key as bytes, or :class:`ConfigError` (never quoting the key) when it cannot travel in a header."""
    if not isinstance(key, str) or not key or any(not ("!" <= c <= "~") for c in key):
        raise ConfigError("serve --api-key: the key must be a non-empty string of printable ASCII without spaces "
                          "(it travels in an HTTP header). Fix: generate one with "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
    return key.encode("ascii")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine: localhost, 127.0.0.0/8 or ::1."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # another host name: it may resolve to any interface
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning ``deepworks serve`` prints when it binds beyond loopback without a key; None otherwise."""
    if api_key or is_loopback(host):
        return None
    return (f"binding to {host}: the server is reachable from other machines and anyone who reaches it can use "
            f"the model. Fix: start it with --api-key KEY (or set {ENV_API_KEY}), or bind to 127.0.0.1.")


class ApiKey:
    """ASGI middleware: every request but ``GET /health`` needs the key, sent as
    ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or HTTP Basic with KEY as the password (what a
    browser sends for the page at ``/`` after asking its user). The key is compared in constant time
    (``hmac.compare_digest``); a missing or wrong one answers 401 JSON ``{"error": ...}`` with
    ``WWW-Authenticate`` and never repeats what was sent."""

    def __init__(self, app: Any, key: str, drain_limit: int = DEFAULT_MAX_BODY_BYTES):
        self.app, self.key, self.drain_limit = app, check_api_key(key), drain_limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        verdict = self.verdict(scope.get("headers") or [])
        if verdict == "ok":
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if verdict == "missing":
            message = "this server needs an API key."
        else:
            message = "the API key sent is not this server's key."
        message += (" Fix: send the header `Authorization: Bearer KEY` or `X-API-Key: KEY` with the key the server "
                    f"was started with (deepworks serve --api-key, or {ENV_API_KEY}).")
        await drain(receive, self.drain_limit)  # a client still sending receives the 401
        body = json.dumps({"error": message}).encode()
        # Bearer for API clients; Basic so that a browser opening the page asks its user for the key
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="deepworks"'),
            (b"www-authenticate", b'Basic realm="deepworks", charset="UTF-8"'), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def verdict(self, headers: list[tuple[bytes, bytes]]) -> str:
        """``ok``, ``wrong`` (a key was sent, none matches) or ``missing`` (no key was sent)."""
        import base64
        import binascii
        import hmac

        sent = []
        for name, value in headers:
            name = name.lower()
            if name == b"x-api-key":
                sent.append(value.strip())
            elif name == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    sent.append(credentials.strip())
                elif scheme.lower() == b"basic":
                    try:
                        sent.append(base64.b64decode(credentials.strip(), validate=True).partition(b":")[2])
                    except (binascii.Error, ValueError):
                        sent.append(b"")
        if not sent:
            return "missing"
        matches = [hmac.compare_digest(candidate, self.key) for candidate in sent]  # each compared in full
        return "ok" if any(matches) else "wrong"


def create_app(
    run_dir: str | Path,
    backend: str = "torch",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    queue_limit: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    default_top_k: int = 3,
    api_key: str | None = None,
    device: str = "cpu",
) -> Any:
    """The FastAPI app serving ``run_dir``'s best model (see the module's description).

    The run's description is checked here (a missing or unsuitable run fails at once); the model
    loads in the background when the server starts, then one warm-up batch runs: ``/ready``
    answers 503 until both are done, ``/health`` answers 200 as soon as the server is up.

    ``api_key``: when given, every request but ``/health`` needs it (see :class:`ApiKey`); the
    caller decides where it comes from (``deepworks serve`` takes ``--api-key`` or the environment
    variable ``DEEPWORKS_API_KEY``).

    ``device``: where the torch backend runs the model, ``cpu`` (the default) or ``cuda``/``cuda:N``;
    the onnx backend runs on the CPU."""
    try:
        from fastapi import FastAPI, Request
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'deepworks[serve]'.") from None
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from deepworks.serve.page import page_html

    if api_key is not None:
        check_api_key(api_key)
    predictor = ServedModel(run_dir, backend, device)
    for name, value in (("max_body_bytes", max_body_bytes), ("max_pixels", max_pixels)):
        if value < 1:
            raise ConfigError(f"serve: {name} must be >= 1, got {value}.")
    state: dict[str, Any] = {"ready": False, "error": None, "batcher": None}

    async def load_and_warm(batcher: MicroBatcher) -> None:
        try:
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(batcher.executor, predictor.load)
            await batcher.run_now(predictor.warmup_input())
            # the model, torch and the app are loaded for good: move their objects out of the collector's
            # reach, so a full collection under load walks only what requests make (hundreds of thousands of
            # long-lived objects made one take 140-275 ms, the tail of every request in flight)
            gc.collect()
            gc.freeze()
            state["ready"] = True
            log.info("deepworks serve: %s loaded and warmed up in %.2f s (backend %s)", predictor.run_dir,
                     time.perf_counter() - started, backend)
        except Exception as exc:  # /ready tells why; the process stays up for /health and the logs
            state["error"] = f"{type(exc).__name__}: {exc}"
            log.error("deepworks serve: loading %s failed: %s", predictor.run_dir, state["error"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(predictor.forward, max_batch, max_wait_ms, queue_limit)
        state["batcher"] = batcher
        loading = asyncio.get_running_loop().create_task(load_and_warm(batcher))
        batcher.start()
        try:
            yield
        finally:
            loading.cancel()
            await batcher.stop()

    app = FastAPI(
        title=f"deepworks: {predictor.run_dir.name}",
        description=f"Predictions of the run {predictor.run_dir.name} ({predictor.kind} input, backend {backend}).",
        lifespan=lifespan,
    )
    app.state.predictor, app.state.serve = predictor, state

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/health", summary="Liveness: 200 while the process serves HTTP")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once the model is loaded and warmed up, 503 before")
    async def ready() -> JSONResponse:
        if state["ready"]:
            return JSONResponse({"status": "ready", "run": predictor.run_dir.name, "backend": backend,
                                 "kind": predictor.kind})
        if state["error"]:
            return error(503, f"the model failed to load: {state['error']}")
        return error(503, "the model is loading; retry shortly.", {"Retry-After": "1"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page_html(predictor.run_dir.name, predictor.page_kind, default_top_k), headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "connect-src 'self'; img-src data: blob:"})

    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "rows": {"type": "array", "items": {"type": "object"}, "description": "table runs: column -> value"},
            "texts": {"type": "array", "items": {"type": "string"}, "description": "text runs"}}}},
    }}}

    @app.post("/predict", summary="Top-k labels with probabilities for an image upload, table rows or texts",
              openapi_extra=body_doc)
    async def predict(request: Request, top_k: int = default_top_k) -> JSONResponse:
        if top_k < 1:
            raise RequestError(422, f"top_k must be >= 1, got {top_k}.")
        if not state["ready"]:
            if state["error"]:
                raise RequestError(503, f"the model failed to load: {state['error']}")
            raise RequestError(503, "the model is loading; retry shortly.", {"Retry-After": "1"})
        batcher: MicroBatcher = state["batcher"]
        if batcher.full():  # refuse before spending time on decoding
            raise RequestError(503, f"the server is at capacity ({batcher.queue.maxsize} requests waiting). "
                                    "Retry after a second.", {"Retry-After": "1"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except _TooLarge:
                raise
            except Exception as exc:
                raise RequestError(400, f"the multipart body cannot be parsed ({exc}). Fix: send the image as "
                                        "the form field `file` (curl -F file=@digit.png URL/predict).") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "expected the image file in the multipart form field `file` "
                                        "(curl -F file=@digit.png URL/predict).")
            data = await upload.read()
            await form.close()
            if len(data) <= INLINE_DECODE_BYTES:  # a small image decodes faster than a hand-off to a thread
                x = predictor.image_input(data, max_pixels)
            else:  # a photo: decoded in a thread, so the event loop goes on with other requests
                x = await asyncio.to_thread(predictor.image_input, data, max_pixels)
        elif ctype == "application/json":
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"the body is not valid JSON ({exc}).") from None
            x = await asyncio.to_thread(predictor.json_input, body)
        else:
            raise RequestError(415, f"Content-Type {ctype or '(none)'} is not accepted: send multipart/form-data "
                                    "with the image in the field `file`, or application/json with rows or texts.")
        outputs = await batcher.submit(x)
        results = predictor.results(outputs, top_k)
        if predictor.inputs.json_key is None:  # one uploaded file, one answer
            return JSONResponse(results[0])
        return JSONResponse({"results": results})

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if api_key is not None:  # added last: the outermost layer, so a request without the key reaches nothing
        app.add_middleware(ApiKey, key=api_key, drain_limit=max_body_bytes)
    return app


def app_from_env() -> Any:
    """``create_app`` with the arguments in the environment variable ``DEEPWORKS_SERVE_SETTINGS``
    (JSON): the factory uvicorn imports in each worker process of ``deepworks serve --workers N``.
    The settings may hold the API key: nothing here logs them."""
    raw = os.environ.get(ENV_SETTINGS)
    if not raw:
        raise ConfigError(f"{ENV_SETTINGS} is not set; it holds create_app's arguments as JSON, e.g. "
                          '{"run_dir": "runs/digits"}. Start the server with `deepworks serve RUN_DIR`.')
    return create_app(**json.loads(raw))

