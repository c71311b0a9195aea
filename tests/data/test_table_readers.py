"""Table files of every kind (CSV with a sniffed delimiter, TSV, JSON Lines, Parquet) and a pandas
DataFrame read into typed columns, with pandas as the oracle; the encoder works on arrays, never a
Python string per cell; the model's TableInput expands slots exactly as the encoder does."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

import deepworks
from deepworks.data.features import ColumnValues, TableEncoder
from deepworks.data.tabular import load_table, peek_table, read_frame, sniff_delimiter
from deepworks.errors import DataError
from deepworks.kinds.table import TableInput
from deepworks.pipeline import prepare_data


def mixed_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.normal(10, 3, n).round(3)
    size[rng.random(n) < 0.1] = np.nan
    colour = rng.choice(["red", "blue", "green", "light grey"], n).astype(object)
    colour[rng.random(n) < 0.1] = None
    return pd.DataFrame({
        "size": size,
        "count": rng.integers(0, 5, n),
        "colour": colour,
        "note": rng.choice(["a; b", "c, d", "plain"], n),  # separators inside (quoted) values
        "label": rng.choice(["yes", "no"], n),
    })


def write_all(frame: pd.DataFrame, folder) -> dict[str, object]:
    sources = {"DataFrame": frame}
    frame.to_csv(folder / "t.csv", index=False)
    sources["csv"] = folder / "t.csv"
    frame.to_csv(folder / "semi.csv", index=False, sep=";")
    sources["semicolon csv"] = folder / "semi.csv"
    frame.to_csv(folder / "t.tsv", index=False, sep="\t")
    sources["tsv"] = folder / "t.tsv"
    frame.to_json(folder / "t.jsonl", orient="records", lines=True)
    sources["jsonl"] = folder / "t.jsonl"
    frame.to_parquet(folder / "t.parquet")
    sources["parquet"] = folder / "t.parquet"
    return sources


@pytest.mark.parametrize("kind", ["csv", "semicolon csv", "tsv", "jsonl", "parquet", "DataFrame"])
def test_every_source_reads_the_columns_pandas_reads(kind, tmp_path):
    """The oracle: the DataFrame itself. Numbers equal (NaN where pandas has NaN), text cells the
    same strings (missing where pandas has None), for each file kind and the frame given directly."""
    frame = mixed_frame()
    source = write_all(frame, tmp_path)[kind]
    table = load_table(source, "label")
    assert list(table.columns) == ["size", "count", "colour", "note"]
    for name in ("size", "count"):
        np.testing.assert_array_equal(table.columns[name].numeric(), frame[name].to_numpy(float))
    for name in ("colour", "note"):
        codes, texts = table.columns[name].codes()
        got = [None if c < 0 else texts[c] for c in codes]
        assert got == [None if v is None or v != v else v for v in frame[name]], name
    y, classes, task = deepworks.data.tabular.table_target(table)
    assert classes == ["no", "yes"] and task == "classification"
    assert y.tolist() == [classes.index(v) for v in frame["label"]]


def test_every_source_gives_the_same_slots_and_features(tmp_path):
    """One encoder fitted on the CSV encodes the other sources to the same slots, bit for bit."""
    frame = mixed_frame()
    sources = write_all(frame, tmp_path)
    reference = load_table(sources["csv"], "label")
    encoder = TableEncoder.fit(reference.columns)
    want = encoder.encode(reference.columns)
    assert want.shape == (len(frame), 4)  # one slot per column, whatever its number of categories
    for kind, source in sources.items():
        table = load_table(source, "label")
        np.testing.assert_array_equal(encoder.encode(table.columns), want, err_msg=kind)
    x = encoder.transform(reference.columns)
    assert x.shape == (len(frame), len(encoder.feature_names))


def test_delimiter_is_sniffed_from_the_header_and_data_delimiter_overrides_it(tmp_path):
    path = tmp_path / "pipes.csv"
    path.write_text("a|b|label\n1|x,y|p\n2|z|q\n3|x,y|p\n")
    assert sniff_delimiter(path) == "|"
    frame = peek_table(path)
    pd.testing.assert_frame_equal(frame, pd.read_csv(path, sep="|"), check_dtype=False)
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b,c;label\n1;2,5;x\n3;4,5;y\n")  # the header splits into more names on ';'
    assert sniff_delimiter(semi) == ";"
    assert list(peek_table(semi).columns) == ["a", "b,c", "label"]
    assert list(peek_table(semi, delimiter=",").columns) == ["a;b", "c;label"]
    cfg = deepworks.load_config({"data": {"path": str(semi), "target": "c;label", "delimiter": ","}})
    assert cfg.data.delimiter == ","


def test_peek_table_reads_the_first_rows_by_the_same_rules(tmp_path):
    frame = mixed_frame(200)
    sources = write_all(frame, tmp_path)
    for kind in ("csv", "semicolon csv", "tsv", "jsonl", "parquet"):
        head = peek_table(sources[kind], rows=25)
        assert len(head) == 25 and list(head.columns) == list(frame.columns), kind
        np.testing.assert_array_equal(head["size"].to_numpy(float), frame["size"].to_numpy(float)[:25])


def test_bad_tsv_and_jsonl_files_are_one_line_errors(tmp_path):
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("x\tlabel\n1\ta\n\n2\tb\textra\n")
    with pytest.raises(DataError, match=r"ragged.tsv: line 4 has 3 field\(s\) but the header has 2"):
        load_table(ragged, "label")
    for name, content, message in [
        ("empty.jsonl", b"", "the file is empty"),
        ("broken.jsonl", b'{"x": 1, "label": "a"}\n{"x": 2, "label"\n', "not a readable JSON Lines file"),
        ("latin.tsv", "a\tlabel\n1\tcaf\xe9\n".encode("latin-1"), "not a UTF-8 text file"),
        ("dup.tsv", b"x\tx\tlabel\n1\t2\ta\n", "appear more than once"),
        ("unnamed.csv", b"x,,label\n1,2,a\n", "have no name"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=message):
            load_table(path, "label")


def test_a_dataframe_trains_like_its_csv(tmp_path):
    frame = mixed_frame(120)
    frame.to_csv(tmp_path / "t.csv", index=False)
    from deepworks.kinds.table import prepare_table

    cfg = deepworks.load_config({"data": {"path": str(tmp_path / "t.csv"), "target": "label"}})
    a = prepare_data(cfg)
    from deepworks.kinds.table import prepare

    for b in (prepare_table(cfg, load_table(frame, "label")), prepare(cfg, source=frame)):
        assert a.info["feature_names"] == b.info["feature_names"] and b.info["source"] == "DataFrame"
        torch.testing.assert_close(a.train.x, b.train.x, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(a.test.y, b.test.y)


def test_the_encoder_never_makes_a_python_object_per_cell():
    """100,000 rows of 2 numeric and 2 text columns: fitting and encoding them allocates a few
    arrays per column (about 0.8 MB each), far below the 100,000 x 4 Python strings (about 23 MB)
    that a cell-by-cell encoder builds (tracemalloc counts numpy's buffers as well)."""
    n = 100_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "a": rng.normal(size=n), "b": rng.integers(0, 1000, n).astype(float),
        "c": pd.Series(rng.choice([f"city-{i}" for i in range(20)], n), dtype="str"),
        "d": pd.Series(rng.choice(["low", "mid", "high", "?"], n), dtype="str"),
    })
    per_cell = n * 4 * (49 + 8)  # a short str object and its list slot, per cell
    tracemalloc.start()
    try:
        columns = {name: ColumnValues.of(frame[name]) for name in frame.columns}
        encoder = TableEncoder.fit(columns)
        slots = encoder.encode(columns)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert slots.shape == (n, 4) and np.isnan(slots[:, 3]).any()  # "?" is a missing cell
    assert peak < per_cell / 4, (peak, per_cell)


def test_table_input_expands_slots_as_the_encoder_and_the_old_dense_encoding():
    """TableInput (in the model and its ONNX graph) against TableEncoder.expand and against the
    per-cell one-hot the encoder used to build: the same features, bit for bit; a code that is
    no category (out of range, a fraction) sets no one-hot feature."""
    train = {"size": ["1", "3", "", "7"], "colour": ["red", "blue", "red", ""], "when": ["2024-01-01", "2024-02-15",
                                                                                        "", "2024-03-01"]}
    encoder = TableEncoder.fit(train)
    slots = encoder.encode({"size": ["2", "", "9"], "colour": ["green", "blue", ""], "when": ["", "2025-07-04",
                                                                                              "2024-01-01"]})
    dense = encoder.expand(slots)
    got = TableInput(encoder.expansion)(torch.from_numpy(slots)).numpy()
    np.testing.assert_array_equal(got, dense)
    # the one-hot block of "colour": blue, red, other, and its missing indicator
    block = encoder.groups["colour"]
    assert dense[:, block].tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1]]  # missing -> most frequent
    odd = slots.copy()
    odd[:, encoder.input_groups["colour"][0]] = [2.5, 99.0, -1.0]
    assert TableInput(encoder.expansion)(torch.from_numpy(odd)).numpy()[:, block[:3]].sum() == 0
    sparse = encoder.expand_sparse(slots)
    np.testing.assert_array_equal(sparse.toarray().astype(np.float32), dense)


def test_data_json_records_the_slots_and_importance_groups(tmp_path):
    frame = mixed_frame(120)
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = prepare_data(deepworks.load_config({"data": {"path": str(tmp_path / "t.csv"), "target": "label"}}))
    info = json.loads(json.dumps(data.info))
    assert info["input"]["form"] == "slots" and info["input_shape"] == [4]
    assert info["input"]["names"] == ["size", "count", "colour", "note"]
    from deepworks.analysis import run_feature_groups

    assert run_feature_groups(info) == {"size": [0], "count": [1], "colour": [2], "note": [3]}
    assert read_frame(tmp_path / "t.csv")[1].unit == "line"


def test_spaces_after_the_delimiter_read_as_pandas_skipinitialspace_reads_them(tmp_path):
    """A file written "a, b" (spaces after each comma, a quoted value after one) reads as pandas
    reads it with skipinitialspace=True; a file with no such spaces in its head reads the same
    values whether or not a later cell has a stray space (text stripped, numbers parsed)."""
    spaced = tmp_path / "spaced.csv"
    spaced.write_text('size, note, label\n1.5, "x, y", yes\n2, plain, no\n, "x, y", yes\n')
    table = load_table(spaced, "label")
    oracle = pd.read_csv(spaced, skipinitialspace=True)
    np.testing.assert_array_equal(table.columns["size"].numeric(), oracle["size"].to_numpy(float))
    codes, texts = table.columns["note"].codes()
    assert [texts[c] for c in codes] == oracle["note"].tolist() == ["x, y", "plain", "x, y"]
    plain = tmp_path / "plain.csv"
    plain.write_text("size,note,label\n" + "1.5,a,yes\n" * 5000 + "2, b,no\n3, NA,yes\n 4,a , no\n")
    table = load_table(plain, "label")
    assert table.columns["size"].numeric()[-3:].tolist() == [2.0, 3.0, 4.0]
    codes, texts = table.columns["note"].codes()
    assert [texts[c] if c >= 0 else None for c in codes[-3:]] == ["b", None, "a"]
    y, classes, _ = deepworks.data.tabular.table_target(table)
    assert [classes[i] for i in y[-3:]] == ["no", "yes", "no"]
