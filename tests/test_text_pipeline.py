"""Text classification end to end: a tiny sentiment CSV ("good"/"bad" decide the label) trained with
an LSTM, the TF-IDF baseline against scikit-learn, evaluate, and predict on raw strings from Python
and the command line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score
from sklearn.pipeline import make_pipeline

import deepworks
from cli_in_process import refused, run as in_process
from deepworks.errors import DataError
from deepworks.pipeline import prepare_data


@pytest.fixture
def text_run(sentiment_lstm_run):
    """The session's text run (tests/conftest.py: SENTIMENT_LSTM, an LSTM on sentiment_csv's 200
    texts, 8% of their labels flipped), read only: nothing here writes into it."""
    return sentiment_lstm_run


def test_lstm_learns_the_sentiment_words(text_run):
    summary = text_run.summary
    assert summary["test"]["accuracy"] >= 0.85  # 8% of the labels are flipped: about 0.92 is the ceiling
    info = json.loads((text_run.dir / "data.json").read_text())
    assert info["kind"] == "text" and info["input_shape"] == [12]
    assert info["input"]["vocab_size"] == len(info["text"]["vocab"])
    assert {"good", "bad"} <= set(info["text"]["vocab"])
    html = (text_run.dir / "report.html").read_text()
    assert "Texts" in html and "tokenizer" in html and "tfidf_logistic" in html


def test_tfidf_baseline_equals_scikit_learn_on_the_same_split(text_run):
    data = prepare_data(text_run.config)  # the run's split, as training made it
    oracle = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=2000, random_state=0))
    oracle.fit(data.raw["train"], data.train.y.numpy())
    baselines = text_run.summary["baselines"]
    assert set(baselines) == {"majority_class", "tfidf_logistic"}
    for split in ("val", "test"):
        y = getattr(data, split).y.numpy()
        pred = oracle.predict(data.raw[split])
        ours = baselines["tfidf_logistic"][split]
        assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert ours["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert ours["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
        assert ours["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro"))
        majority = np.bincount(data.train.y.numpy()).argmax()
        assert baselines["majority_class"][split]["accuracy"] == pytest.approx(float((y == majority).mean()))
    scores = [baselines["tfidf_logistic"][split]["accuracy"] for split in ("val", "test")]
    assert min(scores) > 0.5 and min(scores) < 1.0  # the flipped labels cost it too: the scores are not trivial


def test_evaluate_equals_a_forward_pass_of_the_saved_weights(text_run):
    """The oracle: each split's raw texts turned into ids by hand (the words, lowercased, looked up
    in data.json's vocabulary, <unk> = 1 for the others, right-padded with 0 to max_length), fed
    to a fresh copy of the network holding model.safetensors (read with safetensors), scored by
    scikit-learn."""
    model = copy.deepcopy(text_run.model)
    model.load_state_dict(load_file(text_run.dir / "model.safetensors"))
    model.eval()
    vocab = {token: i for i, token in enumerate(json.loads((text_run.dir / "data.json").read_text())["text"]["vocab"])}
    torch.manual_seed(text_run.config.seed)
    data = prepare_data(text_run.config)
    for split in ("val", "test"):
        texts = data.raw[split]
        ids = torch.zeros(len(texts), 12, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [vocab.get(w, 1) for w in text.lower().split()]  # filler words and good/bad only
            ids[row, : len(words)] = torch.tensor(words)
        y = getattr(data, split).y
        with torch.no_grad():
            logits = model(ids)
        pred = logits.argmax(1).numpy()
        report = deepworks.evaluate(text_run.dir, split=split)
        assert report["accuracy"] == pytest.approx(accuracy_score(y.numpy(), pred), abs=1e-12)
        assert report["macro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="macro"), abs=1e-12)
        assert report["confusion_matrix"] == confusion_matrix(y.numpy(), pred, labels=[0, 1]).tolist()
        assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)


def test_predict_raw_strings_from_python(text_run, tmp_path):
    texts = ["a good film", "the plot was bad", "GOOD acting, good music", "bad bad ending", "", "unseen words only"]
    results = deepworks.predict(text_run.dir, texts=texts, top_k=2)
    assert [r["text"] for r in results] == texts
    assert [r["prediction"] for r in results[:4]] == ["pos", "neg", "pos", "neg"]
    for r in results:
        assert [t["class"] for t in r["top_k"]][0] == r["prediction"]
        assert sum(t["probability"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)
    lines = tmp_path / "more.txt"
    lines.write_text("a good film\n\nthe plot was bad\n", encoding="utf-8")
    from_file = deepworks.predict(text_run.dir, [lines])
    assert [(r["line"], r["prediction"]) for r in from_file] == [(1, "pos"), (3, "neg")]
    assert from_file[0]["top_k"] == deepworks.predict(text_run.dir, texts=["a good film"])[0]["top_k"]
    with pytest.raises(DataError, match="at least one input"):
        deepworks.predict(text_run.dir)


def test_predict_from_the_command_line(text_run, tmp_path, capsys):
    # the CLI in this process (tests/cli_in_process.py): what it prints and its exit status are what is checked
    table = tmp_path / "new.csv"
    table.write_text("review\na good story\nbad acting\n", encoding="utf-8")
    code, out, err = in_process(["predict", text_run.dir, "--text", "a good film", "--text", "the plot was bad", table,
                                 "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert [(r["text"], r["prediction"]) for r in results] == [
        ("a good film", "pos"), ("the plot was bad", "neg"), ("a good story", "pos"), ("bad acting", "neg"),
    ]
    assert results[2]["file"] == str(table) and results[2]["line"] == 2
    code, out, err = in_process(["predict", text_run.dir, "--text", "a good film", "--top-k", "2"], capsys)
    assert code == 0 and "a good film" in out and "pos" in out, out + err
    refused(["predict", text_run.dir, tmp_path / "ghost.txt"], capsys, "ghost.txt")


def test_texts_are_refused_by_an_image_run(digits_cnn_run):
    with pytest.raises(DataError, match="not a text run"):
        deepworks.predict(digits_cnn_run.dir, texts=["a good film"])


def test_inspect_a_text_config(text_run):
    from deepworks.inspection import inspect_config

    summary = inspect_config(text_run.config)
    vocab = json.loads((text_run.dir / "data.json").read_text())["input"]["vocab_size"]
    assert summary["vocab_size"] == vocab and summary["input_shape"] == [12]
    assert summary["layers"][0]["type"] == "Embedding" and summary["output_shape"] == [2]
