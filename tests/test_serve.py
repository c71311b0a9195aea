"""``deepworks serve``: the HTTP server of a run (FastAPI + uvicorn), on a tiny digits CNN.

Served predictions equal ``deepworks.predict`` on the same files; malformed uploads get a 4xx
with a JSON error; 200 concurrent requests through real sockets (good and bad mixed, a small
queue) get correct 200s, 4xx or explicit 503s with Retry-After; the page works in headless
Chromium.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import shutil
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepworks

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'deepworks[serve]')")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from deepworks.serve import create_app  # noqa: E402

@pytest.fixture(scope="module")
def cnn_run(digits_cnn_run):
    """The session's digits CNN run (tests/conftest.py), read only: serving writes nothing into it."""
    return digits_cnn_run


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    files = []
    for i in range(6):
        path = folder / f"digit-{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").resize((32, 32)).save(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def expected(cnn_run, digit_files):
    return {f.name: r for f, r in zip(digit_files, deepworks.predict(cnn_run.dir, digit_files, top_k=3))}


class Served:
    """The app under uvicorn on a free loopback port, in a background thread; ``headers`` go with
    the readiness polls (the API key of a server that needs one)."""

    def __init__(self, app, headers: dict[str, str] | None = None):
        self.headers = headers or {}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    limit_concurrency=None, backlog=1024))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", headers=self.headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("the server did not become ready within 60 s")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with a tiny (wrong) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def wait_ready(client, seconds: float = 120.0, headers: dict[str, str] | None = None) -> None:
    """Until /ready answers 200; a model that failed to load fails the test with /ready's error."""
    deadline = time.monotonic() + seconds
    while (r := client.get("/ready", headers=headers)).status_code != 200:
        assert "failed" not in r.text and time.monotonic() < deadline, r.text
        time.sleep(0.02)


def check_served(client, body: dict, want: list[dict]) -> None:
    """POST body (JSON rows or texts) for the top 2 and check every answer against predict's."""
    r = client.post("/predict?top_k=2", json=body)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        check_prediction(g, w)


def check_prediction(got: dict, want: dict) -> None:
    labels = [p["label"] for p in got["predictions"]]
    assert labels == [p["class"] for p in want["top_k"]]
    for p, w in zip(got["predictions"], want["top_k"]):
        assert p["probability"] == pytest.approx(w["probability"], abs=1e-4)


def test_health_ready_and_predictions_equal_deepworks_predict(cnn_run, digit_files, expected):
    app = create_app(cnn_run.dir, max_batch=8)
    with Served(app) as served:
        assert httpx.get(served.url + "/health").json() == {"status": "ok"}
        assert httpx.get(served.url + "/ready").json()["kind"] == "image"
        for f in digit_files:
            r = httpx.post(served.url + "/predict", files={"file": (f.name, png_bytes(f), "image/png")})
            assert r.status_code == 200, r.text
            check_prediction(r.json(), expected[f.name])
        r = httpx.post(served.url + "/predict?top_k=1", files={"file": ("a.png", png_bytes(digit_files[0]), "image/png")})
        assert len(r.json()["predictions"]) == 1
        assert "/predict" in httpx.get(served.url + "/openapi.json").json()["paths"]


def test_the_device_is_checked_before_anything_loads(cnn_run):
    from deepworks.errors import ConfigError

    with pytest.raises(ConfigError, match="backend torch only"):
        create_app(cnn_run.dir, backend="onnx", device="cuda")
    with pytest.raises(ConfigError, match="expected cpu, cuda or cuda:N, got 'gpu'"):
        create_app(cnn_run.dir, device="gpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a machine without one)
    with pytest.raises(ConfigError, match=f"'{missing}' asked for, but {torch.cuda.device_count()} CUDA GPU"):
        create_app(cnn_run.dir, device=missing)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_served_on_the_gpu_answers_as_predict_on_the_cpu(cnn_run, digit_files):
    on_cpu = deepworks.predict(cnn_run.dir, digit_files, top_k=10)  # deepworks.predict runs on the CPU
    app = create_app(cnn_run.dir, max_batch=8, device="cuda")
    with Served(app) as served:
        assert app.state.predictor.predictor.device.type == "cuda"
        for f, want in zip(digit_files, on_cpu):
            r = httpx.post(served.url + "/predict?top_k=10", files={"file": (f.name, png_bytes(f), "image/png")})
            assert r.status_code == 200, r.text
            got = {p["label"]: p["probability"] for p in r.json()["predictions"]}
            assert r.json()["predictions"][0]["label"] == want["top_k"][0]["class"]
            # cuDNN may convolve in TF32 on the GPU: the probabilities agree to a few thousandths
            for w in want["top_k"]:
                assert got[w["class"]] == pytest.approx(w["probability"], abs=5e-3)


def test_malformed_uploads_get_4xx_with_a_json_error(cnn_run, digit_files):
    app = create_app(cnn_run.dir, max_body_bytes=64 * 1024, max_pixels=4_000_000)
    good = png_bytes(digit_files[0])
    cases = {
        "not an image": (b"hello, this is text", 400),
        "truncated png": (good[: len(good) // 2], 400),
        "png header + garbage": (good[:16] + b"\x00garbage" * 50, 400),
        "huge dimensions": (huge_png(), 413),
        "oversized body": (b"\x89PNG" + b"\x00" * (200 * 1024), 413),
        "empty file": (b"", 400),
    }
    with Served(app) as served:
        for name, (data, status) in cases.items():
            r = httpx.post(served.url + "/predict", files={"file": ("x.png", data, "image/png")})
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.json()["error"], name
        r = httpx.post(served.url + "/predict", files={"other": ("x.png", good, "image/png")})
        assert r.status_code == 422 and "`file`" in r.json()["error"]
        r = httpx.post(served.url + "/predict", content=good, headers={"content-type": "image/png"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
        r = httpx.post(served.url + "/predict", json={"rows": [{"a": 1}]})
        assert r.status_code == 415 and "reads images" in r.json()["error"]
        assert httpx.get(served.url + "/health").status_code == 200


def test_ready_is_503_until_the_model_is_loaded_and_warmed_up(cnn_run, digit_files, expected):
    """The model's load and its warm-up batch are held on events: /ready (and /predict) must answer
    503 while the load is held, still 503 once it has loaded but the warm-up has not run, and 200
    only after both."""
    from fastapi.testclient import TestClient

    app = create_app(cnn_run.dir)
    predictor = app.state.predictor
    release_load, loaded, release_warmup = threading.Event(), threading.Event(), threading.Event()
    load, forward = predictor.load, predictor.forward
    calls: list[int] = []

    def held_load():
        assert release_load.wait(60), "the test never released the load"
        load()
        loaded.set()

    def held_forward(batch):
        calls.append(int(batch.shape[0]))
        if len(calls) == 1:  # the warm-up batch
            assert release_warmup.wait(60), "the test never released the warm-up"
        return forward(batch)

    # the server looks both up when it starts (the load task and the batcher), after this
    predictor.load, predictor.forward = held_load, held_forward
    f = digit_files[0]
    with TestClient(app) as client:
        try:
            assert client.get("/health").status_code == 200
            r = client.get("/ready")
            assert r.status_code == 503 and "loading" in r.json()["error"] and r.headers["retry-after"] == "1"
            r = client.post("/predict", files={"file": (f.name, png_bytes(f), "image/png")})
            assert r.status_code == 503 and "loading" in r.json()["error"]

            release_load.set()
            assert loaded.wait(60)
            r = client.get("/ready")  # loaded, but the warm-up batch is held: not ready yet
            assert r.status_code == 503 and "loading" in r.json()["error"]
            assert not app.state.serve["ready"]

            release_warmup.set()
            wait_ready(client)
            assert client.get("/ready").json()["kind"] == "image"
            r = client.post("/predict", files={"file": (f.name, png_bytes(f), "image/png")})
            assert r.status_code == 200, r.text
            check_prediction(r.json(), expected[f.name])
            assert calls == [1, 1]  # the warm-up, then the request
        finally:  # a failed assert must not leave the model's thread waiting
            release_load.set()
            release_warmup.set()


KEY = "test-key-5f2b9c8e1d"  # what the servers below require; a log or an error that shows it fails


def assert_401(r, *needles: str) -> None:
    """A refusal that says what to send, challenges for Bearer, and repeats no key."""
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    assert "Bearer" in r.headers.get_list("www-authenticate")[0]
    error = r.json()["error"]
    assert "Authorization: Bearer KEY" in error and "X-API-Key: KEY" in error, error
    for needle in needles:
        assert needle in error, error
    assert KEY not in r.text and "wrong-key" not in r.text and "Traceback" not in r.text


def test_api_key_guards_every_request_but_health(cnn_run, digit_files, expected):
    """With api_key, /health stays open; /ready, /predict, the page, the docs and unknown paths
    answer 401 without the key or with a wrong one, and accept it as Bearer, X-API-Key or Basic."""
    app = create_app(cnn_run.dir, api_key=KEY, max_body_bytes=256 * 1024)
    f = digit_files[2]
    upload = {"file": (f.name, png_bytes(f), "image/png")}
    with Served(app, headers={"Authorization": f"Bearer {KEY}"}) as served:
        url = served.url
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        for path in ("/ready", "/", "/docs", "/openapi.json", "/nothing-here"):
            assert_401(httpx.get(url + path), "needs an API key")
        assert_401(httpx.post(url + "/predict", files=upload), "needs an API key")
        # a body the server never reads (200 KB, under the limit): the client still gets the 401
        assert_401(httpx.post(url + "/predict", content=b"\x00" * 200_000, headers={"content-type": "image/png"}))
        for headers in ({"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Bearer {KEY[:-1]}"},
                        {"Authorization": "Bearer"}, {"X-API-Key": ""}):
            assert_401(httpx.get(url + "/ready", headers=headers), "not this server's key")
            assert_401(httpx.post(url + "/predict", files=upload, headers=headers), "not this server's key")
        assert_401(httpx.get(url + "/ready", auth=("user", "wrong-key")), "not this server's key")

        for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, {"X-API-Key": KEY}):
            assert httpx.get(url + "/ready", headers=headers).json()["kind"] == "image"
            r = httpx.post(url + "/predict", files=upload, headers=headers)
            assert r.status_code == 200, r.text
            check_prediction(r.json(), expected[f.name])
        # HTTP Basic with the key as password (any user name): what a browser sends for the page
        r = httpx.get(url + "/", auth=("anyone", KEY))
        assert r.status_code == 200 and "<html" in r.text
        r = httpx.post(url + "/predict", files=upload, auth=("", KEY))
        assert r.status_code == 200, r.text
        # the page's 401 also offers Basic, so that a browser asks its user for the key
        assert any(c.startswith("Basic") for c in httpx.get(url + "/").headers.get_list("www-authenticate"))


def test_an_api_key_that_cannot_travel_in_a_header_is_refused_without_quoting_it(cnn_run):
    from deepworks.errors import ConfigError

    for key in ("", "has space", "tab\tkey", "caf\u00e9-key"):
        with pytest.raises(ConfigError, match="printable ASCII") as info:
            create_app(cnn_run.dir, api_key=key)
        assert not key or key not in str(info.value)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False),
    ("example.com", False), ("::ffff:127.0.0.1", True),
])
def test_exposure_warning_only_off_loopback_and_only_without_a_key(host, loopback):
    from deepworks.serve.app import exposure_warning, is_loopback

    assert is_loopback(host) is loopback
    warning = exposure_warning(host, None)
    assert (warning is None) is loopback
    if warning:
        assert "--api-key" in warning and "DEEPWORKS_API_KEY" in warning and host in warning
    assert exposure_warning(host, KEY) is None


def test_cli_serve_takes_the_key_from_api_key_or_the_environment_and_warns_off_loopback(
        cnn_run, monkeypatch, capsys):
    """The serve command, in process, uvicorn.run replaced by a recorder: --host 0.0.0.0 without a
    key warns on stderr naming --api-key; DEEPWORKS_API_KEY (or --api-key, which wins) makes the
    app require the key, through the settings the --workers factory reads too; no output shows it."""
    import warnings

    from fastapi.testclient import TestClient

    from deepworks import cli
    from deepworks.serve.app import ENV_SETTINGS, app_from_env

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # the CLI replaces it
    monkeypatch.setenv(ENV_SETTINGS, "{}")  # the CLI sets it for --workers; restored afterwards
    monkeypatch.delenv("DEEPWORKS_API_KEY", raising=False)
    calls: list[tuple] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))

    def serve(*args: str):
        calls.clear()
        assert cli.main(["serve", str(cnn_run.dir), *args]) == 0
        captured = capsys.readouterr()
        assert KEY not in captured.out + captured.err
        (app, kwargs), = calls
        return (app_from_env() if kwargs.get("factory") else app), kwargs, captured

    def status(app, headers=None) -> int:
        # no lifespan: the model is not loaded, so a request past the key gets /ready's 503
        return TestClient(app).get("/ready", headers=headers).status_code

    app, kwargs, captured = serve("--host", "0.0.0.0")
    assert "warning" in captured.err and "--api-key" in captured.err and "0.0.0.0" in captured.err
    assert kwargs["host"] == "0.0.0.0" and kwargs["timeout_graceful_shutdown"] == 30
    assert status(app) == 503  # no key: open

    app, _, captured = serve("--host", "127.0.0.1")
    assert "--api-key" not in captured.err

    monkeypatch.setenv("DEEPWORKS_API_KEY", KEY)
    app, _, captured = serve("--host", "0.0.0.0")
    assert "--api-key" not in captured.err and "API key required" in captured.out
    assert status(app) == 401 and status(app, {"X-API-Key": KEY}) == 503

    app, _, _ = serve("--api-key", "from-the-option", "--workers", "2")  # the option wins over the variable
    assert status(app, {"X-API-Key": KEY}) == 401 and status(app, {"X-API-Key": "from-the-option"}) == 503

    calls.clear()
    assert cli.main(["serve", str(cnn_run.dir), "--api-key", "two words"]) == 2
    captured = capsys.readouterr()
    assert "printable ASCII" in captured.err and "two words" not in captured.err and not calls

    missing = f"cuda:{torch.cuda.device_count()}"  # --device: a GPU this machine lacks is refused before uvicorn
    assert cli.main(["serve", str(cnn_run.dir), "--device", missing]) == 2
    captured = capsys.readouterr()
    assert f"'{missing}' asked for" in captured.err and "Traceback" not in captured.err and not calls
    app, _, _ = serve("--device", "cpu", "--workers", "2")  # the workers' settings carry it
    assert app.state.predictor.device == "cpu"


def test_refuses_a_url_and_a_missing_run(tmp_path):
    from deepworks.errors import CheckpointError, ConfigError

    with pytest.raises(ConfigError, match="never fetches"):
        create_app("https://example.com/run")
    with pytest.raises(CheckpointError):
        create_app(tmp_path / "nothing")


def test_200_concurrent_requests_mixed_with_malformed_ones(cnn_run, digit_files, expected):
    """Through real sockets, a small queue: good -> correct 200 or an explicit 503 with Retry-After;
    bad -> 4xx (or 503 when refused before being read); /health answers afterwards."""
    app = create_app(cnn_run.dir, max_batch=16, max_wait_ms=5, queue_limit=24, max_body_bytes=64 * 1024,
                     max_pixels=4_000_000)
    good = {f.name: png_bytes(f) for f in digit_files}
    one = png_bytes(digit_files[0])
    bad = [b"not an image at all", one[: len(one) // 2], one[:16] + b"\xff" * 300, huge_png(),
           b"\x89PNG" + b"\x00" * (100 * 1024)]
    plan = []
    for i in range(200):
        if i % 4 == 3:
            plan.append(("bad", None, bad[(i // 4) % len(bad)]))
        else:
            name = digit_files[i % len(digit_files)].name
            plan.append(("good", name, good[name]))

    async def fire():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client:
            async def one_request(kind, name, data):
                r = await client.post("/predict", files={"file": ("x.png", data, "image/png")})
                return kind, name, r
            return await asyncio.gather(*(one_request(*p) for p in plan))

    with Served(app) as served:
        responses = asyncio.run(fire())
        counts = {"good200": 0, "bad4xx": 0, "503": 0}
        for kind, name, r in responses:
            if r.status_code == 503:
                assert r.headers.get("retry-after") == "1", r.text
                assert r.json()["error"]
                counts["503"] += 1
            elif kind == "good":
                assert r.status_code == 200, r.text
                check_prediction(r.json(), expected[name])
                counts["good200"] += 1
            else:
                assert 400 <= r.status_code < 500, (r.status_code, r.text)
                assert r.json()["error"]
                counts["bad4xx"] += 1
        assert counts["good200"] > 0 and counts["bad4xx"] > 0
        assert httpx.get(served.url + "/health").status_code == 200
        r = httpx.post(served.url + "/predict", files={"file": ("x.png", one, "image/png")})
        assert r.status_code == 200
        batcher = app.state.serve["batcher"]
        assert batcher.rows == counts["good200"] + 1  # + the request above (the warm-up is not counted)
        # how many model calls they shared depends on how the requests overlapped: not asserted here
        # (test_micro_batcher_groups_waiting_requests_up_to_max_batch checks the grouping)
    print(counts, f"{batcher.rows} rows in {batcher.batches} model calls")


def test_micro_batcher_groups_waiting_requests_up_to_max_batch():
    """The batcher driven directly, its forward held on an event: while the model runs the first
    request, five requests (seven rows) queue up; they then go in batches of at most max_batch
    rows, in order, a request that would overflow a batch starting the next one, and each request
    receives its own rows' outputs."""
    import torch

    from deepworks.serve import MicroBatcher

    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def forward(batch):
        sizes.append(int(batch.shape[0]))
        if len(sizes) == 1:
            entered.set()
            assert release.wait(30), "the test never released the first batch"
        return batch * 10

    first = torch.tensor([[0.0]])
    waiting = [torch.tensor([[1.0]]), torch.tensor([[2.0], [3.0]]), torch.tensor([[4.0], [5.0]]),
               torch.tensor([[6.0]]), torch.tensor([[7.0]])]

    async def main():
        batcher = MicroBatcher(forward, max_batch=4, max_wait_ms=0, queue_limit=16)
        batcher.start()
        try:
            futures = [asyncio.ensure_future(batcher.submit(first))]
            assert await asyncio.to_thread(entered.wait, 30)  # the model is busy with the first request
            futures += [asyncio.ensure_future(batcher.submit(x)) for x in waiting]
            for _ in range(1000):  # until every submit has run (each queues at once, without waiting)
                if batcher.queue.qsize() == len(waiting):
                    break
                await asyncio.sleep(0)
            assert batcher.queue.qsize() == len(waiting)
            release.set()
            results = await asyncio.wait_for(asyncio.gather(*futures), 60)
        finally:
            release.set()
            await batcher.stop()
        return batcher, results

    batcher, results = asyncio.run(main())
    # 1 (alone, the model was idle); 1 + 2 = 3 (the next request's 2 rows would make 5 > 4, so it
    # starts the next batch); 2 + 1 + 1 = 4
    assert sizes == [1, 3, 4]
    assert (batcher.batches, batcher.rows) == (3, 8)
    for x, out in zip([first, *waiting], results):
        assert torch.equal(out, x * 10)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_page_in_headless_chromium_shows_the_predicted_label(cnn_run, digit_files, expected):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    app = create_app(cnn_run.dir)
    want = expected[digit_files[0].name]["prediction"]
    requests: list[str] = []
    with Served(app) as served, sync_api.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(served.url + "/", wait_until="load")
            page.set_input_files("#file", str(digit_files[0]))
            first = page.locator(".prediction .label").first
            first.wait_for(timeout=20_000)
            assert first.text_content() == want
            assert page.locator(".prediction").count() == 3
            width = page.locator(".prediction .bar").first.evaluate("b => b.getBoundingClientRect().width")
            assert width > 0
        finally:
            browser.close()
    assert all(u.startswith(served.url) or u.startswith("blob:") for u in requests), requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cli(run_dir: Path, *args: str, launcher: list[str] | None = None, env: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`deepworks serve RUN_DIR ARGS` (or ``launcher + ["serve", ...]``) on a free port, once /ready
    answers 200 (polled with ``headers``); its stdout and stderr together in ``proc.stdout``."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1",
           **(env or {})}
    launcher = launcher or [sys.executable, "-m", "deepworks"]
    proc = subprocess.Popen([*launcher, "serve", str(run_dir), "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"deepworks serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/ready", headers=headers, timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"deepworks serve did not become ready:\n{proc.stdout.read()}")


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    """Until ``condition()`` is true; past the deadline the test fails naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.01)


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


# `deepworks serve` whose model calls after the warm-up wait for the file GATE/release once they
# have created GATE/entered: a test sees for sure that a request is inside the server
GATED_SERVE = """
import sys
import time
from pathlib import Path

gate = Path(sys.argv.pop(1))
from deepworks.serve import app as serve_app

init = serve_app.MicroBatcher.__init__


def gated_init(self, forward, *args, **kwargs):
    calls = []

    def gated(batch):
        calls.append(len(batch))
        if len(calls) > 1:  # the first call is the warm-up
            (gate / "entered").touch()
            deadline = time.monotonic() + 60
            while not (gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return forward(batch)

    init(self, gated, *args, **kwargs)


serve_app.MicroBatcher.__init__ = gated_init
from deepworks.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_cli_onnx_backend_and_sigterm_lets_the_request_in_flight_finish(cnn_run, digit_files, expected, tmp_path):
    """`deepworks serve --backend onnx` exports the run first and answers as predict does; a SIGTERM
    that arrives while a request is inside the server (its model call held on a file) stops the
    server from accepting connections, and the request, released only once the server is waiting
    for it, finishes with a 200."""
    run_dir = tmp_path / "run"
    shutil.copytree(cnn_run.dir, run_dir)
    gate = tmp_path / "gate"
    gate.mkdir()
    launcher = tmp_path / "gated_serve.py"
    launcher.write_text(GATED_SERVE)
    proc, url = _serve_cli(run_dir, "--backend", "onnx", launcher=[sys.executable, str(launcher), str(gate)])
    try:
        assert (run_dir / "model.onnx").exists()
        f = digit_files[1]
        result: dict = {}

        def post():
            try:
                result["r"] = httpx.post(url + "/predict", files={"file": (f.name, png_bytes(f), "image/png")},
                                         timeout=60)
            except Exception as exc:  # the asserts below show it
                result["error"] = exc

        output: list[str] = []  # the server's log lines as they come

        def read_output():
            for line in proc.stdout:
                output.append(line)

        threading.Thread(target=read_output, daemon=True).start()
        thread = threading.Thread(target=post)
        thread.start()
        wait_for((gate / "entered").exists, "the request to reach the model")
        proc.send_signal(signal.SIGTERM)
        # uvicorn has stopped listening and now waits (at most the CLI's graceful timeout) for the
        # connections in flight; its log line says so
        wait_for(lambda: any("Waiting for connections to close" in line for line in output),
                 "the server to wait for the request in flight after SIGTERM")
        assert refuses_connections(url)
        assert not result  # the request is still held in its model call
        (gate / "release").touch()
        thread.join(timeout=60)
        assert "r" in result, result
        r = result["r"]
        assert r.status_code == 200, r.text
        check_prediction(r.json(), expected[f.name])
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status says "ended by SIGTERM"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        (gate / "release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, penguin_species_run, run_copy):
    """The session's penguins.yaml run (tests/conftest.py), copied here (the ONNX backend exports
    into the run), six of the table's rows, and those rows as a CSV file."""
    import csv

    folder = tmp_path_factory.mktemp("table")
    run = run_copy(penguin_species_run, folder / "table")
    with (ROOT / "examples" / "data" / "penguins.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:6]
    sample = folder / "rows.csv"
    with sample.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run, rows, sample


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, sentiment_lstm_run, run_copy):
    """The session's LSTM run on texts whose class is the word good or bad (tests/conftest.py),
    copied here (the ONNX backend exports into the run)."""
    return run_copy(sentiment_lstm_run, tmp_path_factory.mktemp("text") / "text")


def test_json_rows_and_texts_equal_deepworks_predict(table_run, text_run):
    """A table run takes {"rows": [...]}, a text run {"texts": [...]}; both answer as predict does."""
    from fastapi.testclient import TestClient

    table, rows, sample = table_run
    want = deepworks.predict(table.dir, [sample], top_k=2)
    with TestClient(create_app(table.dir)) as client:
        wait_ready(client)
        check_served(client, {"rows": rows}, want)
        r = client.post("/predict", json={"rows": [{"nothing": 1}]})
        assert r.status_code == 422 and "lack the column" in r.json()["error"]
        r = client.post("/predict", json={"texts": ["x"]})
        assert r.status_code == 422 and '"rows"' in r.json()["error"]
        r = client.post("/predict", files={"file": ("x.png", b"\x89PNG", "image/png")})
        assert r.status_code == 415 and "reads table rows" in r.json()["error"]
        r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]

    texts = ["a good film", "a bad film", ""]
    want = deepworks.predict(text_run.dir, texts=texts, top_k=2)
    with TestClient(create_app(text_run.dir)) as client:
        wait_ready(client)
        check_served(client, {"texts": texts}, want)
        r = client.post("/predict", json={"texts": [1, 2]})
        assert r.status_code == 422 and "strings" in r.json()["error"]
        assert 'placeholder' in client.get("/").text


def test_onnx_backend_serves_table_rows_and_texts_as_predict_does(table_run, text_run):
    """backend="onnx" exports a table run and a text (LSTM) run first, then answers from ONNX Runtime
    with predict's labels and probabilities."""
    from fastapi.testclient import TestClient

    table, rows, sample = table_run
    texts = ["a good film", "a bad film number 3", ""]
    for run, body, want in [(table, {"rows": rows}, deepworks.predict(table.dir, [sample], top_k=2)),
                            (text_run, {"texts": texts}, deepworks.predict(text_run.dir, texts=texts, top_k=2))]:
        with TestClient(create_app(run.dir, backend="onnx")) as client:
            wait_ready(client)
            assert (run.dir / "model.onnx").exists()
            check_served(client, body, want)


def test_cli_workers_each_serve_the_run_and_the_api_key_stays_out_of_the_logs(cnn_run, digit_files, expected):
    """`--workers 2` with DEEPWORKS_API_KEY: uvicorn's worker processes build the app from the
    factory (the key travels in its settings) and answer as predict does with the key, 401 without
    it; nothing the server prints shows the key."""
    headers = {"X-API-Key": KEY}
    proc, url = _serve_cli(cnn_run.dir, "--workers", "2", env={"DEEPWORKS_API_KEY": KEY}, headers=headers)
    try:
        for f in digit_files[:4]:
            # each worker loads its model on its own: one may still be loading when the other is ready
            # (503 with Retry-After, as a client sees it), so a request is retried until it is not
            deadline = time.monotonic() + 60
            while True:
                r = httpx.post(url + "/predict", files={"file": (f.name, png_bytes(f), "image/png")},
                               headers=headers, timeout=30)
                if r.status_code != 503 or "loading" not in r.text or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 200, r.text
            check_prediction(r.json(), expected[f.name])
        for bad in ({}, {"Authorization": "Bearer wrong-key"}):
            assert_401(httpx.post(url + "/predict", files={"file": ("x.png", b"x", "image/png")}, headers=bad,
                                  timeout=30))
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        output = proc.stdout.read()
        assert "POST /predict" in output and "401" in output  # the access log was captured
        assert KEY not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_chunked_body_over_the_limit_is_counted_and_refused(cnn_run, digit_files):
    """No Content-Length: the body is counted as it arrives and refused with 413 past the limit."""
    app = create_app(cnn_run.dir, max_body_bytes=32 * 1024)
    boundary = "deepworks-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def chunks(size):
        yield head
        for _ in range(size // 4096):
            yield b"\x00" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    with Served(app) as served:
        r = httpx.post(served.url + "/predict", content=chunks(256 * 1024),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "over the limit of 32768 bytes" in r.json()["error"]
        body = b"".join(chunks(0))[:-len(f"\r\n--{boundary}--\r\n")] + png_bytes(digit_files[0]) + \
            f"\r\n--{boundary}--\r\n".encode()
        r = httpx.post(served.url + "/predict", content=iter([body[:100], body[100:]]),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 200, r.text


def test_decode_image_bytes_equals_decoding_the_file(tmp_path, digit_files):
    from deepworks.data.images import ImageTooLarge, decode_image, decode_image_bytes

    rgb = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(rgb, quality=90)
    rgba = tmp_path / "alpha.png"
    Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    for path in (rgb, rgba, digit_files[0]):
        assert torch_equal(decode_image_bytes(path.read_bytes(), path.name), decode_image(path))
    with pytest.raises(ImageTooLarge, match="30x40 = 1200 pixels, more than the limit of 1000 pixels"):
        decode_image_bytes(rgb.read_bytes(), "photo.jpg", max_pixels=1000)
    with pytest.raises(deepworks.errors.DataError, match="cannot be decoded"):
        decode_image_bytes(rgb.read_bytes()[:200], "photo.jpg")


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
