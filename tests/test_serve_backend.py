"""`deepworks serve --backend auto` (the default): ONNX Runtime when the run has a passing export, the
torch backend otherwise, each with the reason."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from deepworks.serve.app import choose_backend

pytest.importorskip("onnxruntime")


def _run(tmp_path, max_abs_diff=1e-6, tolerance=1e-4, sha=None, onnx_first=False):
    run = tmp_path / "run"
    run.mkdir()
    weights, onnx = run / "model.safetensors", run / "model.onnx"
    weights.write_bytes(b"weights")
    onnx.write_bytes(b"an exported graph")
    digest = sha or hashlib.sha256(onnx.read_bytes()).hexdigest()
    (run / "model.onnx.json").write_text(json.dumps(
        {"sha256": digest, "parity": {"max_abs_diff": max_abs_diff, "tolerance": tolerance}}))
    later, earlier = (weights, onnx) if onnx_first else (onnx, weights)
    os.utime(earlier, (1_000_000, 1_000_000))
    os.utime(later, (2_000_000, 2_000_000))
    return run


def test_a_passing_export_is_served_on_onnx_runtime(tmp_path):
    backend, why = choose_backend(_run(tmp_path))
    assert backend == "onnx" and "passed its parity check (largest difference 1e-06)" in why


@pytest.mark.parametrize("case, want", [
    ({"max_abs_diff": 1e-3}, "missed its parity check (0.001 > 0.0001)"),
    ({"sha": "0" * 64}, "not the file its export recorded"),
    ({"onnx_first": True}, "older than the run's weights"),
])
def test_anything_but_a_passing_export_is_served_by_torch(tmp_path, case, want):
    backend, why = choose_backend(_run(tmp_path, **case))
    assert backend == "torch" and want in why


def test_no_export_or_a_gpu_means_torch(tmp_path):
    (tmp_path / "bare").mkdir()
    backend, why = choose_backend(tmp_path / "bare")
    assert backend == "torch" and "no model.onnx yet (`deepworks export" in why
    backend, why = choose_backend(_run(tmp_path), device="cuda")
    assert backend == "torch" and "--device cuda" in why


def test_an_unknown_backend_is_one_line(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    from cli_in_process import refused

    refused(["serve", _run(tmp_path), "--backend", "gpu"], capsys,
            "--backend gpu: expected auto, torch or onnx", one_line=True)
