"""One input path per kind of data: Predictor, the server and the exported graph build the same
model input from the same file, and answer the same; runs written before the kind modules still
load, predict and serve; predict streams inputs of any number in batches.

Oracles: for each kind, the ONNX graph is fed from its sidecar alone (the recipe a consumer without
deepworks follows), and the server is reached over HTTP (FastAPI's TestClient); the old runs'
answers were recorded by deepworks at 77911f5 (tests/fixtures/runs-77911f5/expected.json)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepworks
from cli_in_process import refused, run as in_process
from deepworks import Predictor
from deepworks.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "runs-77911f5"
QUIET = {"epochs": 1, "batch_size": 64, "progress": "none", "precision": "fp32", "optimizer": {"name": "adamw", "lr": 0.01}}


def _reviews(folder: Path) -> Path:
    path = folder / "reviews.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["review", "sentiment"]] + [
            [f"a {'good' if i % 2 else 'bad'} film number {i}", "pos" if i % 2 else "neg"] for i in range(60)])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_cnn_run, penguin_species_run, sentiment_lstm_run, run_copy):
    """One run of each kind, trained by today's code: the session's digits CNN, penguins.yaml and
    text runs (tests/conftest.py), copied here (an export writes into a run's summary.json)."""
    folder = tmp_path_factory.mktemp("kinds")
    shared = {"image": digits_cnn_run, "table": penguin_species_run, "text": sentiment_lstm_run}
    return {kind: run_copy(run, folder / kind).dir for kind, run in shared.items()}


@pytest.fixture(scope="module")
def embeddings_run(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    folder = tmp_path_factory.mktemp("embeddings")
    reviews = _reviews(folder)
    return deepworks.train({"data": {"path": str(reviews), "text": "review", "target": "sentiment",
                                     "encoder": "all-MiniLM-L6-v2", "on_duplicates": "keep"},
                            "model": {"name": "softmax"}, "train": QUIET, "report": False}, run_dir=folder / "run").dir


def _digit_png(path: Path, i: int = 0, size: int = 16) -> Path:
    from sklearn.datasets import load_digits

    image = load_digits().images[i]
    Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").resize((size, size)).save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------- runs from before the kinds


@pytest.mark.parametrize("kind", ["image", "table", "text", "embeddings", "series"])
def test_runs_written_at_77911f5_still_predict_the_same(kind, tmp_path, monkeypatch):
    if kind == "embeddings":
        pytest.importorskip("sentence_transformers")
    monkeypatch.chdir(tmp_path)  # a forecast's PNG goes under the working directory
    expected = json.loads((OLD / "expected.json").read_text())
    inputs, texts = OLD / "inputs", expected["texts"]
    if kind == "image":
        got = deepworks.predict(OLD / "image", sorted(inputs.glob("digit-*.png")), top_k=2)
    elif kind == "table":
        got = deepworks.predict(OLD / "table", [inputs / "penguins.csv"], top_k=2)
    elif kind == "series":
        got = deepworks.predict(OLD / "series", [inputs / "co2-history.csv"], out=tmp_path / "forecast.json")
        for r in got:
            assert Path(r["png"]).exists() and Path(r["out"]).exists()
            r.pop("png"), r.pop("out")
    else:
        got = deepworks.predict(OLD / kind, texts=texts, top_k=2)
    for r in got:
        if "file" in r:
            r["file"] = Path(r["file"]).name
    assert got == expected["predictions"][kind]
    assert Predictor(OLD / kind).kind == kind  # read from what the old data.json holds


@pytest.mark.parametrize("kind", ["image", "table", "text"])
def test_runs_written_at_77911f5_still_serve(kind):
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    expected = json.loads((OLD / "expected.json").read_text())["predictions"][kind]
    with TestClient(create_app(OLD / kind)) as client:
        _wait_ready(client)
        if kind == "image":
            answers = [client.post("/predict?top_k=2", files={"file": (p.name, p.read_bytes(), "image/png")}).json()
                       for p in sorted((OLD / "inputs").glob("digit-*.png"))]
        elif kind == "table":
            with (OLD / "inputs" / "penguins.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
            answers = client.post("/predict?top_k=2", json={"rows": rows}).json()["results"]
        else:
            texts = json.loads((OLD / "expected.json").read_text())["texts"]
            answers = client.post("/predict?top_k=2", json={"texts": texts}).json()["results"]
    for answer, want in zip(answers, expected, strict=True):
        if "predictions" in answer:
            assert [(p["label"], p["probability"]) for p in answer["predictions"]] == [
                (t["class"], t["probability"]) for t in want["top_k"]]
        else:
            assert answer["prediction"] == pytest.approx(want["prediction"], rel=1e-6)


def _wait_ready(client, seconds: float = 60) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = client.get("/ready")
        if r.status_code == 200:
            return
        assert "failed" not in r.json()["error"], r.json()["error"]
        time.sleep(0.05)
    raise AssertionError("the server was not ready in time")


def test_new_runs_record_their_kind(runs, embeddings_run):
    for kind, run_dir in {**runs, "embeddings": embeddings_run}.items():
        assert json.loads((run_dir / "data.json").read_text())["kind"] == kind


def test_the_kind_chosen_from_a_config_matches_each_builtin_datasets_listing():
    """config.data_kind decides the kind from names alone; the datasets' own listing says what they hold."""
    from deepworks.config import data_kind
    from deepworks.data.datasets import _BUILTIN_INFO

    for name, listed in _BUILTIN_INFO.items():
        want = {"text": "text"}.get(listed.get("input"), "series" if listed.get("task") == "forecasting" else "image")
        assert data_kind({"dataset": name}) == want, name
    assert data_kind({"dataset": "rotten-tomatoes", "encoder": "all-MiniLM-L6-v2"}) == "embeddings"
    assert data_kind({"path": "x.PARQUET", "target": "y"}) == "table"
    assert data_kind({"path": "photos"}) == "image"
    with pytest.raises(deepworks.ConfigError, match="data.encoder"):
        data_kind({"dataset": "digits", "encoder": "all-MiniLM-L6-v2"})


# ----------------------------------------------------------------------------- one input path, three consumers


def _sidecar_input(kind: str, sidecar: dict, file: Path) -> np.ndarray:
    """The graph's input made from the sidecar alone, as its ``how`` says (no Predictor involved)."""
    pre = sidecar["preprocessing"]
    if kind == "image":
        from deepworks.data.images import ImageSpec, load_pixels

        return load_pixels(file, ImageSpec.from_dict(pre["image"])).numpy()[None].astype(np.float32) * np.float32(pre["scale"])
    if kind == "table":
        import pandas as pd

        from deepworks.data.features import TableEncoder

        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        # the graph takes slots: a scaled number or a category's code per column, NaN where missing
        return TableEncoder.from_dict(pre["encoder"]).encode({c: list(frame[c]) for c in frame.columns})
    texts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if kind == "text":
        from deepworks.data.text import TextEncoder

        return TextEncoder.from_dict(pre["text"]).encode(texts).ids.numpy()
    from deepworks.data.encoders import embed_texts, resolve_encoder

    source = resolve_encoder(pre["encoder"]["name"])
    assert source.sha256 == pre["encoder"]["sha256"]
    return embed_texts(source, texts, cache=False, progress=False, features=pre["encoder"]["features"]).vectors


def _input_file(kind: str, folder: Path) -> Path:
    if kind == "image":
        return _digit_png(folder / "digit.png", 3)
    if kind == "table":
        with (ROOT / "examples" / "data" / "penguins.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))[:5]
        path = folder / "rows.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path
    path = folder / "texts.txt"
    path.write_text("a good film\na bad film number 7\nwords never seen\n")
    return path


def _request(kind: str, file: Path) -> dict:
    if kind == "image":
        return {"files": {"file": (file.name, file.read_bytes(), "image/png")}}
    if kind == "table":
        with file.open(newline="") as f:
            return {"json": {"rows": list(csv.DictReader(f))}}
    return {"json": {"texts": [line for line in file.read_text().splitlines() if line.strip()]}}


@pytest.mark.parametrize("kind", ["image", "table", "text", "embeddings"])
def test_predictor_server_and_onnx_build_the_same_input(kind, runs, embeddings_run, tmp_path):
    """The model input Predictor builds from a file, the one the server builds from the same file
    sent over HTTP, and the one the ONNX graph gets from the sidecar's recipe are equal; the three
    give the same probabilities (within 1e-5; the server's are rounded to 6 places)."""
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    import onnxruntime as ort

    from deepworks.serve import create_app
    from deepworks.serve.app import ServedModel

    run_dir = embeddings_run if kind == "embeddings" else runs[kind]
    file = _input_file(kind, tmp_path)
    # 1. Predictor
    p = Predictor(run_dir, device="cpu")
    batch = next(p.inputs.batches([Path(file)], 64))
    predictor_input = p.inputs.to_model(batch.x)
    probs = p.predict_proba([Path(file)])
    # 2. the server, over HTTP: the batch its model call receives
    app = create_app(run_dir)
    served = app.state.predictor
    seen = []
    served.forward = lambda b: seen.append(b) or ServedModel.forward(served, b)
    with TestClient(app) as client:
        _wait_ready(client)
        seen.clear()  # the warm-up batch
        answer = client.post(f"/predict?top_k={len(p.classes)}", **_request(kind, file)).json()
    server_input = served.inputs.to_model(seen[0])
    results = answer["results"] if "results" in answer else [answer]
    server_probs = np.array([[dict((q["label"], q["probability"]) for q in r["predictions"])[c] for c in p.classes]
                             for r in results])
    # 3. ONNX from the sidecar alone
    deepworks.export(run_dir, out=tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    graph_input = _sidecar_input(kind, sidecar, file)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {sidecar["input"]["name"]: graph_input})[0]
    onnx_probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()

    # equal, bit for bit (a table's slots hold NaN where a value is missing)
    torch.testing.assert_close(server_input, predictor_input, rtol=0, atol=0, equal_nan=True)
    if kind == "image":  # the graph takes pixels in [0, 1]; the normalisation is inside it
        assert np.array_equal(graph_input, p.inputs.onnx_feed(batch.x))
    elif kind == "embeddings":
        assert np.allclose(graph_input, predictor_input.numpy(), atol=1e-6, rtol=0)
    else:
        assert np.array_equal(graph_input, predictor_input.numpy(), equal_nan=kind == "table")
    assert probs.shape == (len(batch.names), len(p.classes))
    assert np.abs(server_probs - probs).max() <= 1e-5
    assert np.abs(onnx_probs - probs).max() <= 1e-5


def test_series_predict_and_export_read_the_same_window(tmp_path, monkeypatch):
    """A forecasting run: the window Predictor builds from a history file equals the sidecar's
    recipe applied to the same file by hand (pandas, mean/std); the graph's forecast equals
    predict's in the target's units."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    run = deepworks.train({"data": {"dataset": "co2", "lookback": 8, "horizon": 2}, "model": {"name": "mlp", "hidden": [4]},
                           "train": QUIET, "report": False}, run_dir=tmp_path / "run")
    history = tmp_path / "history.csv"
    frame = pd.DataFrame({"date": pd.date_range("1960-01-02", periods=20, freq="7D").strftime("%Y-%m-%d"),
                          "co2": np.linspace(316, 318, 20).round(2)})
    frame.to_csv(history, index=False)
    p = Predictor(run.dir)
    window = p.inputs.window(p.inputs.history(history))
    deepworks.export(run.dir, out=tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    src = sidecar["preprocessing"]["input"]
    by_hand = ((frame[src["columns"]].to_numpy()[-src["lookback"]:] - np.array(src["mean"])) / np.array(src["std"]))
    assert np.allclose(window.numpy()[0], by_hand.astype(np.float32), atol=1e-6, rtol=0)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"windows": by_hand.astype(np.float32)[None]})[0][0]
    task = sidecar["task"]
    values = out * np.array(task["std"] * src["horizon"]) + np.array(task["mean"] * src["horizon"])
    forecast = p.predict([history])[0]["forecast"]
    assert np.allclose(values, [step["co2"] for step in forecast], rtol=1e-5)
    assert p.predict_proba([history]).shape == (1, src["horizon"], 1)


# ----------------------------------------------------------------------------- what Predictor takes


def test_predictor_takes_folders_globs_arrays_tensors_and_pil_images(runs, tmp_path):
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    files = [_digit_png(folder / f"d{i}.png", i) for i in range(4)]
    (folder / "notes.txt").write_text("not an image")  # a folder's other files are not images to predict
    p = Predictor(runs["image"], batch_size=3)
    by_file = p.predict_proba(files)
    assert np.array_equal(p.predict_proba(tmp_path / "images"), by_file)
    assert np.array_equal(p.predict_proba(str(tmp_path / "images" / "*" / "d*.png")), by_file)
    from deepworks.data.images import load_pixels

    decoded = torch.stack([load_pixels(f, p.inputs.spec) for f in files])  # the run's own decode and resize
    assert np.allclose(p.predict_proba(decoded.numpy()), by_file, atol=1e-6)
    assert np.allclose(p.predict_proba(decoded), by_file, atol=1e-6)
    assert np.allclose(p.predict_proba(decoded.float() / 255), by_file, atol=1e-6)
    pil = [Image.open(f) for f in files]
    assert np.allclose(p.predict_proba(pil), by_file, atol=1e-6)
    results = p.predict(files, top_k=2)
    assert [r["file"] for r in results] == [str(f) for f in files]
    assert all(len(r["top_k"]) == 2 and r["prediction"] == r["top_k"][0]["class"] for r in results)


def test_predictor_takes_dataframes_rows_and_arrays_for_a_table(runs, tmp_path):
    import pandas as pd

    file = _input_file("table", tmp_path)
    p = Predictor(runs["table"])
    by_file = p.predict_proba(file)
    frame = pd.read_csv(file)
    assert np.allclose(p.predict_proba(frame), by_file, atol=1e-6)
    assert np.allclose(p.predict_proba(frame.to_dict("records")), by_file, atol=1e-6)
    assert np.allclose(p.predict_proba(frame[p.inputs.columns].to_numpy(dtype=object)), by_file, atol=1e-6)
    frame.to_parquet(tmp_path / "rows.parquet")
    assert np.allclose(p.predict_proba(tmp_path / "rows.parquet"), by_file, atol=1e-6)
    with pytest.raises(DataError, match=r"expected \(N, 7\)"):
        p.predict_proba(np.zeros((2, 3)))


def test_on_error_skip_answers_for_the_rest_and_names_each_bad_input(runs, tmp_path):
    good = [_digit_png(tmp_path / f"d{i}.png", i) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    p = Predictor(runs["image"], batch_size=2, workers=0)
    with pytest.raises(DataError, match="broken.png"):
        p.predict([good[0], bad, good[1]])
    with pytest.warns(UserWarning, match="1 input"):
        results = p.predict([good[0], bad, good[1], good[2]], on_error="skip")
    assert [Path(r["file"]).name for r in results] == ["d0.png", "d1.png", "d2.png"]
    assert len(p.skipped) == 1 and p.skipped[0]["file"] == str(bad) and "cannot be decoded" in p.skipped[0]["error"]
    # the same rows answer as they do alone: a bad file does not shift the others' answers
    assert np.allclose(Predictor(runs["image"]).predict_proba(good), p.predict_proba(good))

    rows = _input_file("table", tmp_path)
    text = rows.read_text().splitlines()
    text[2] = text[2].replace(text[2].split(",")[2], "inf", 1)  # a numeric cell that is not finite
    (tmp_path / "bad-rows.csv").write_text("\n".join(text) + "\n")
    t = Predictor(runs["table"])
    with pytest.raises(DataError, match="line 3"):
        t.predict(tmp_path / "bad-rows.csv")
    with pytest.warns(UserWarning):
        answered = t.predict(tmp_path / "bad-rows.csv", on_error="skip")
    assert [r["line"] for r in answered] == [2, 4, 5, 6] and t.skipped[0]["line"] == 3


# ----------------------------------------------------------------------------- batches and memory


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    from sklearn.datasets import load_digits

    images = (load_digits().images * 255 / 16).astype(np.uint8)
    for i in range(5000):
        (folder / ("a" if i < 500 else "b")).mkdir(exist_ok=True)
        # 128x128 (the run reads 8x8): decoded images held by mistake would show, at 16 KB each
        image = Image.fromarray(images[i % len(images)], mode="L").resize((128, 128))
        image.save(folder / ("a" if i < 500 else "b") / f"{i:05d}.png")
    return folder


def test_5000_images_run_in_batches_no_larger_than_the_batch_size(runs, many_images):
    p = Predictor(runs["image"], batch_size=256, workers=2)
    sizes = []
    p.run.model.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    done = p.predict_to(many_images, many_images.parent / "all.csv", top_k=1)
    assert done["rows"] == 5000 and sum(sizes) == 5000
    assert max(sizes) <= 256 and len(sizes) == 20  # 19 full batches and one of 136
    with (many_images.parent / "all.csv").open() as f:
        assert sum(1 for _ in f) == 5001


MEASURE = r"""
import json, os, sys, threading, time
from pathlib import Path
import deepworks

def footprint(pid, child=False):
    # the process's resident memory, plus each descendant's private pages (what a forked worker
    # adds; its pages shared with the parent are already counted): consistent across a fork,
    # where a sum of PSS read process by process counts the shared pages twice for a moment
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split(":")[0] in ("Rss", "Private_Clean", "Private_Dirty")}
        total = (fields["Private_Clean"] + fields["Private_Dirty"] if child else fields["Rss"]) * 1024
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(footprint(int(c), True) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError, KeyError, PermissionError):
        pass
    return total

run, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
p = deepworks.Predictor(run, batch_size=64, workers=2)
p.predict_to([sorted(Path(folder).glob("a/*.png"))[0]], out, top_k=1)  # first call: lazy imports done
files = sorted(Path(folder).glob("*/*.png"))  # the caller's list of inputs: the caller's memory, not predict's
before = footprint(os.getpid())
peak, done = before, False
def sample():
    global peak
    while not done:
        peak = max(peak, footprint(os.getpid()))
        time.sleep(0.005)
t = threading.Thread(target=sample); t.start()
p.predict_to(files, out, top_k=1)
done = True; t.join()
print(json.dumps({"before": before, "peak": peak}))
"""


def test_peak_memory_stays_flat_from_500_to_5000_images(runs, many_images, tmp_path):
    """The process and its decoding workers together (the process's resident memory plus its
    workers' private memory, sampled while predicting): the growth of the peak over the memory
    before predicting is about the same for 5,000 images as for 500: within 16 MB, where the
    4,500 more images decoded (128x128) would take 70 MB if they were held. (Predict keeps one file
    name per input, in the process and in each decoding worker's copy, about 3.5 MB for 4,500; the
    growth for 500 images itself varies from 21 to 30 MB between runs on one machine, so a ratio of
    the two is no test.)"""
    small = tmp_path / "small"
    shutil.copytree(many_images / "a", small / "a")
    growth = {}
    for name, folder in (("500", small), ("5000", many_images)):
        done = subprocess.run([sys.executable, "-c", MEASURE, str(runs["image"]), str(folder), str(tmp_path / "o.csv")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        m = json.loads(done.stdout.strip().splitlines()[-1])
        growth[name] = m["peak"] - m["before"]
    assert growth["500"] > 0
    assert growth["5000"] - growth["500"] <= 16 * 2**20, growth


# ----------------------------------------------------------------------------- the command line


def test_cli_writes_predictions_as_csv_parquet_and_jsonl(runs, penguin_regression_run, tmp_path, capsys):
    import pandas as pd

    files = [_digit_png(tmp_path / f"d{i}.png", i) for i in range(3)]
    want = Predictor(runs["image"]).predict_proba(files)
    for suffix in (".csv", ".parquet", ".jsonl"):
        out = tmp_path / f"preds{suffix}"
        code, printed, err = in_process(["predict", runs["image"], tmp_path, "--out", out, "--probabilities"], capsys)
        assert code == 0, err
        assert f"wrote 3 prediction(s) to {out}" in printed
        frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out) if suffix == ".parquet" else (
            pd.read_json(out, lines=True))
        assert list(frame["file"]) == [str(f) for f in files]
        got = frame[[f"p_{c}" for c in range(10)]].to_numpy()
        assert np.abs(got - want).max() <= 1e-6
        assert list(frame["prediction"].astype(str)) == [str(int(i)) for i in want.argmax(1)]
        assert np.allclose(frame["probability"], want.max(1), atol=1e-6)
    regression = penguin_regression_run.run
    rows = _input_file("table", tmp_path)
    assert in_process(["predict", regression.dir, rows, "--out", tmp_path / "values.csv"], capsys)[0] == 0
    values = pd.read_csv(tmp_path / "values.csv")
    assert list(values.columns) == ["file", "line", "row", "prediction"]
    assert np.allclose(values["prediction"], Predictor(regression.dir).predict_proba(rows)[:, 0], rtol=1e-6)


@pytest.mark.parametrize("case", ["empty folder", "unreadable folder", "missing column", "string to image run",
                                  "unknown suffix"])
def test_cli_bad_inputs_are_one_line_with_the_fix(case, runs, tmp_path, capsys):
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("no images here")
        args, want = ("predict", runs["image"], tmp_path / "empty"), "holds no image files"
    elif case == "unreadable folder":
        (tmp_path / "broken").mkdir()
        for i in range(3):
            (tmp_path / "broken" / f"b{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        args, want = ("predict", runs["image"], tmp_path / "broken", "--on-error", "skip"), "none of the 3 input(s)"
    elif case == "missing column":
        (tmp_path / "rows.csv").write_text("island,sex\nBiscoe,male\n")
        args, want = ("predict", runs["table"], tmp_path / "rows.csv"), "missing here"
    elif case == "string to image run":
        args, want = ("predict", runs["image"], "--text", "a fine film"), "not a text run"
    else:
        args, want = ("predict", runs["image"], _digit_png(tmp_path / "d.png"), "--out", tmp_path / "p.xlsx"), ".xlsx"
    refused(args, capsys, want, "Fix")
    assert not (tmp_path / "p.xlsx").exists()


def test_a_png_named_jpg_is_read_by_its_content_in_predict_and_serve(runs, tmp_path):
    """Both the file path and an upload pick the decoder by the first bytes, not the name."""
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    disguised = tmp_path / "photo.jpg"
    shutil.copy(_digit_png(tmp_path / "d.png", 5), disguised)
    predicted = deepworks.predict(runs["image"], [disguised], top_k=3)[0]
    with TestClient(create_app(runs["image"])) as client:
        _wait_ready(client)
        served = client.post("/predict", files={"file": ("photo.jpg", disguised.read_bytes(), "image/jpeg")}).json()
    assert [(p["label"], p["probability"]) for p in served["predictions"]] == [
        (t["class"], t["probability"]) for t in predicted["top_k"]]
    # a JPEG saved as .png decodes with the JPEG decoder the training folder used
    jpeg = io.BytesIO()
    Image.open(disguised).save(jpeg, format="JPEG", quality=90)
    (tmp_path / "photo.png").write_bytes(jpeg.getvalue())
    from deepworks.data.images import decode_image, decode_image_bytes

    assert torch.equal(decode_image(tmp_path / "photo.png"), decode_image_bytes(jpeg.getvalue()))


def test_non_finite_cells_are_refused_by_predict_and_serve_for_an_old_numeric_table(tmp_path):
    """A table run from before the encoder (numeric features standardised by data.json's mean/std):
    the server read cells with float(), so "nan" gave a NaN prediction; now both refuse it."""
    from fastapi.testclient import TestClient

    from deepworks.serve import create_app

    run = tmp_path / "old-numeric"
    shutil.copytree(OLD / "table", run)
    info = json.loads((run / "data.json").read_text())
    # the data.json of a numeric table from before the encoder: features, mean and std, no encoder
    features = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    old = {k: v for k, v in info.items() if k not in ("encoder", "kind", "feature_names", "feature_groups")}
    old.update({"features": features, "input_shape": [4], "mean": [44.0, 17.0, 200.0, 4200.0],
                "std": [5.0, 2.0, 14.0, 800.0]})
    (run / "data.json").write_text(json.dumps(old))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(run / "model.safetensors", "pt") as f:
        metadata = f.metadata()  # deepworks' model-file record, kept
    weights = load_file(run / "model.safetensors")
    first = next(k for k in weights if k.endswith("weight"))
    weights[first] = weights[first][:, :4].contiguous()
    save_file(weights, run / "model.safetensors", metadata=metadata)
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(features) + "\n39.1,18.7,181,3750\n39.5,nan,186,3800\n")
    with pytest.raises(DataError, match="'nan' is not a finite number"):
        deepworks.predict(run, [rows])
    with TestClient(create_app(run)) as client:
        _wait_ready(client)
        r = client.post("/predict", json={"rows": [dict(zip(features, ["39.5", "nan", "186", "3800"]))]})
        assert r.status_code == 422 and "not a finite number" in r.json()["error"]
        ok = client.post("/predict", json={"rows": [dict(zip(features, [39.1, 18.7, 181, 3750]))]})
        assert ok.status_code == 200
    assert Predictor(run).predict_proba(rows, on_error="skip").shape == (1, 3)
