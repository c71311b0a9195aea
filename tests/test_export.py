"""deepworks export --format onnx: parity of ONNX Runtime with the run's PyTorch model, checked here
independently (fresh inputs built from the sidecar alone, batch sizes 1, 3 and 7), on a digits CNN, a
table MLP with a categorical column, a bidirectional LSTM on texts of mixed lengths and a
mobilenet_v3_small backbone under transfer learning; the failure path and the command line."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

import deepworks
from cli_in_process import refused, run as in_process
from deepworks.exporting import to_onnx as onnx_export
from deepworks.data.features import TableEncoder
from deepworks.data.text import TextEncoder
from deepworks.errors import DeepworksError
from deepworks.exporting import ExportError
from deepworks.pipeline import prepare_data

QUIET = {"progress": "none", "batch_size": 32, "epochs": 1}
WORDS = ["the", "film", "plot", "was", "quite", "acting", "and", "a", "story", "cast", "ending", "music"]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_vs_torch(path: Path, graph_in: np.ndarray, model: torch.nn.Module, torch_in: torch.Tensor) -> float:
    s = session(path)
    got = s.run(None, {s.get_inputs()[0].name: graph_in})[0]
    with torch.no_grad():
        want = model(torch_in).float().numpy()
    assert got.shape == want.shape
    return float(np.abs(got - want).max())


def batch_is_dynamic(path: Path) -> bool:
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    return bool(dim.dim_param) and not dim.dim_value


@pytest.fixture
def cnn_run(digits_cnn_copy):
    """This test's copy of the session's digits CNN run (tests/conftest.py): an export writes
    into the run's summary.json, so no two tests share one."""
    return deepworks.load_run(digits_cnn_copy)


def test_cnn_export_matches_pytorch_on_fresh_batches(cnn_run):
    result = deepworks.export(cnn_run.dir)
    path = cnn_run.dir / "model.onnx"
    assert result["path"] == str(path) and path.exists() and batch_is_dynamic(path)
    sidecar = json.loads((cnn_run.dir / "model.onnx.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["classes"] == [str(i) for i in range(10)] and sidecar["task"]["name"] == "classification"
    assert sidecar["input"]["name"] == "pixels" and sidecar["input"]["shape"] == ["batch", 1, 8, 8]
    pre = sidecar["preprocessing"]
    info = json.loads((cnn_run.dir / "data.json").read_text())
    assert pre["dataset_scale"] == pytest.approx(1 / 16) and pre["scale"] == pytest.approx(1 / 255)
    assert pre["in_graph"]["mean"] == info["mean"]
    assert pre["image"] == info["image"]
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and set(sidecar["parity"]["batches"]) == {"1", "7"}
    assert sidecar["opset"] == 18 and set(sidecar["versions"]) >= {"torch", "onnx", "onnxruntime"}
    summary = json.loads((cnn_run.dir / "summary.json").read_text())
    assert summary["export"]["max_abs_diff"] == sidecar["parity"]["max_abs_diff"]
    assert summary["export"]["sha256"] == sidecar["sha256"]

    # the oracle: fresh validation and test images, pixels in [0, 1] as the sidecar says, against
    # the run's model on the pipeline's own normalised input
    run = deepworks.load_run(cnn_run.dir)
    data = prepare_data(run.config)
    for split, rows in [(data.val, torch.arange(1)), (data.val, torch.arange(20, 27)), (data.test, torch.arange(5, 8))]:
        pixels = split.x[rows].numpy().astype(np.float32) * np.float32(pre["dataset_scale"])
        assert ort_vs_torch(path, pixels, run.model, split.inputs(rows)) <= 1e-4


def test_cnn_export_agrees_with_predict_on_image_files(cnn_run, tmp_path):
    """A consumer with the sidecar alone: the file decoded to uint8, times ``scale``, into the graph;
    softmax of the logits is what deepworks.predict says."""
    deepworks.export(cnn_run.dir, out=tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    digits = load_digits()
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(files[-1])
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.uint8)[None] for f in files]).astype(np.float32)
    s = session(tmp_path / "m.onnx")
    logits = s.run(None, {"pixels": pixels * np.float32(sidecar["preprocessing"]["scale"])})[0]
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    for p, predicted in zip(probs, deepworks.predict(cnn_run.dir, files, top_k=1)):
        assert sidecar["classes"][int(p.argmax())] == predicted["prediction"]
        assert float(p.max()) == pytest.approx(predicted["top_k"][0]["probability"], abs=1e-5)


def test_table_export_with_the_encoder_in_the_sidecar(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "plants.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["height", "width", "colour", "kind"])
        for i in range(240):
            colour = ["red", "blue", "green"][i % 3]
            h, wd = rng.normal(5, 2), rng.normal(3, 1)
            w.writerow([f"{h:.3f}", "" if i % 17 == 0 else f"{wd:.3f}", colour,
                        "tall" if h + (colour == "red") > 5.5 else "short"])
    run = deepworks.train({"data": {"path": str(path), "target": "kind"}, "model": {"name": "mlp", "hidden": [16]},
                           "train": QUIET, "report": False}, run_dir=tmp_path / "run")
    out = tmp_path / "exported" / "plants.onnx"
    deepworks.export(run.dir, out=out)
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    # the graph takes slots: a scaled number or a category's code per column (NaN where missing)
    assert sidecar["input"]["name"] == "columns" and sidecar["classes"] == run.classes
    assert sidecar["input"]["shape"] == ["batch", 3] and sidecar["preprocessing"]["slots"] == ["height", "width", "colour"]
    assert sidecar["preprocessing"]["columns"] == ["height", "width", "colour"]
    assert any(n.startswith("colour=") for n in sidecar["preprocessing"]["feature_names"])
    assert batch_is_dynamic(out)
    # the oracle: raw rows (a missing width, an unseen colour) encoded from the sidecar's JSON alone
    encoder = TableEncoder.from_dict(sidecar["preprocessing"]["encoder"])
    loaded = deepworks.load_run(run.dir)
    for n in (1, 3, 7):
        cells = {"height": [f"{4 + i * 0.7:.2f}" for i in range(n)], "width": ["" if i == 1 else "2.5" for i in range(n)],
                 "colour": [["red", "purple", "blue"][i % 3] for i in range(n)]}
        x = encoder.encode(cells)
        assert np.isnan(x).any() if n > 1 else True  # the missing width reaches the graph as NaN
        assert ort_vs_torch(out, x, loaded.model, torch.from_numpy(x)) <= 1e-4


def sentiment_csv(path: Path, n: int = 160) -> Path:
    rng = np.random.default_rng(1)
    rows = [["review", "sentiment"]]
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(1, 14))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if i % 2 else "bad")
        rows.append([" ".join(words), "pos" if i % 2 else "neg"])
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize("model", [
    None,  # the session's text run (tests/conftest.py): two bidirectional LSTM layers, max-pooled
    # one layer, one direction, the last state (named: on texts the defaults are both ways, max-pooled)
    {"name": "lstm", "embedding": 16, "hidden": 16, "bidirectional": False, "pool": "last"},
    {"name": "gru", "embedding": 16, "hidden": 16, "bidirectional": True, "pool": "last"},  # the last state of both directions
], ids=["bilstm-max", "lstm-last", "bigru-last"])
def test_lstm_text_export_handles_padding(tmp_path, model, request, run_copy):
    if model is None:  # its copy: the export writes model.onnx into the run
        run = run_copy(request.getfixturevalue("sentiment_lstm_run"), tmp_path / "run")
        assert run.config.model.params["layers"] == 2 and run.config.model.params["pool"] == "max"
    else:
        config = {
            "data": {"path": str(sentiment_csv(tmp_path / "reviews.csv")), "text": "review", "target": "sentiment",
                     "min_freq": 1, "max_length": 12, "on_duplicates": "keep"},
            "model": model,
            "train": {**QUIET, "batch_size": 16}, "report": False,
        }
        run = deepworks.train(config, run_dir=tmp_path / "run")
    result = deepworks.export(run.dir)
    assert result["exporter"] == "torchscript"  # packed sequences: the dynamo exporter is tried and fails
    assert "dynamo" in result["exporters_tried"]
    assert set(result["parity"]["batches"]) == {"1", "7", "padding"} and result["parity"]["max_abs_diff"] <= 1e-4
    sidecar = json.loads((run.dir / "model.onnx.json").read_text())
    assert sidecar["input"] == {**sidecar["input"], "name": "token_ids", "dtype": "int64", "shape": ["batch", 12]}
    path = run.dir / "model.onnx"
    assert batch_is_dynamic(path)
    encoder = TextEncoder.from_dict(sidecar["preprocessing"]["text"])
    loaded = deepworks.load_run(run.dir)
    texts = ["good", "", "the film was quite bad and the acting and the story and the cast and the ending were bad",
             "a good story", "bad", "unknownword good film", "music"]
    for n in (1, 3, 7):
        ids = encoder.encode(texts[:n] if n != 1 else texts[2:3]).ids
        assert ort_vs_torch(path, ids.numpy(), loaded.model, ids) <= 1e-4
    lengths = (encoder.encode(texts).ids != 0).sum(1)
    assert lengths.min() == 0 and lengths.max() == 12  # an empty text and one cut at max_length were in the batch


def test_backbone_under_transfer_exports(tmp_path):
    weights = tmp_path / "mobilenet.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10).state_dict(), weights)
    run = deepworks.train({
        "data": {"dataset": "digits"},
        "model": {"name": "mobilenet_v3_small", "weights": str(weights), "resolution": 32},
        "transfer": {"mode": "feature_extraction"}, "train": QUIET, "report": False,
    }, run_dir=tmp_path / "run")
    result = deepworks.export(run.dir)
    assert result["parity"]["max_abs_diff"] <= 1e-4
    loaded = deepworks.load_run(run.dir)
    data = prepare_data(loaded.config)
    rows = torch.arange(3, 6)
    pixels = data.test.x[rows].numpy().astype(np.float32) / 16
    assert ort_vs_torch(run.dir / "model.onnx", pixels, loaded.model, data.test.inputs(rows)) <= 1e-4


def test_a_failed_parity_check_leaves_no_valid_looking_file(cnn_run, tmp_path, monkeypatch):
    run = cnn_run.dir  # this test's own copy, with a good export of its own
    good = deepworks.export(run)
    before = {name: (run / name).read_bytes() for name in ("summary.json", "model.onnx", "model.onnx.json")}
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # every difference, even 0, now exceeds it
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as e:
        deepworks.export(run, out=out)
    assert "differ from PyTorch's" in str(e.value) and "bad.onnx.failed" in str(e.value)
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert (tmp_path / "bad.onnx.failed").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
    # the run still describes the good export, byte for byte
    assert {name: (run / name).read_bytes() for name in before} == before
    assert json.loads(before["summary.json"])["export"]["path"] == good["path"] == str(run / "model.onnx")


def test_bad_arguments_are_user_errors(cnn_run, tmp_path):
    with pytest.raises(DeepworksError, match="--format: expected one of onnx"):
        deepworks.export(cnn_run.dir, format="tflite")
    with pytest.raises(DeepworksError, match="--opset"):
        deepworks.export(cnn_run.dir, opset=3)


def test_cli_export(cnn_run, tmp_path, capsys):
    # the CLI in this process (tests/cli_in_process.py): its exit status and what it prints are what is checked
    out = tmp_path / "cli.onnx"
    code, printed, err = in_process(["export", cnn_run.dir, "--format", "onnx", "--out", out], capsys)
    assert code == 0, printed + err
    assert "max abs diff" in printed and out.exists() and Path(str(out) + ".json").exists()
    refused(["export", cnn_run.dir, "--format", "tflite"], capsys, "--format", one_line=True)
