"""Tabular data: CSV files of numeric features and a label column, their errors, and per-feature standardisation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from deepworks.data import ImageDataset, channel_stats, load_csv, load_dataset, normalize, split_dataset
from deepworks.errors import ConfigError, DataError, ShapeError
from deepworks.models import create_model


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def flowers(tmp_path) -> Path:
    rows = [
        [5.1, 3.5, "setosa", 1.4], [7.0, 3.2, "versicolor", 4.7], [6.3, 3.3, "virginica", 6.0],
        [4.9, 3.0, "setosa", 1.4], [6.4, 3.2, "versicolor", 4.5], [5.8, 2.7, "virginica", 5.1],
    ]
    return write_csv(tmp_path / "flowers.csv", ["sepal_length", "sepal_width", "species", "petal_length"], rows)


# ----------------------------------------------------------------------------- loading


def test_numeric_features_and_string_labels(flowers):
    ds = load_csv(flowers, "species")
    assert isinstance(ds, ImageDataset) and ds.name == "csv"
    assert ds.x.shape == (6, 3) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.classes == ["setosa", "versicolor", "virginica"]
    assert ds.features == ["sepal_length", "sepal_width", "petal_length"]  # file order, target left out
    assert ds.input_shape == (3,) and ds.is_tabular and ds.test_x is None
    assert torch.allclose(ds.x[1], torch.tensor([7.0, 3.2, 4.7]))
    assert ds.source == str(flowers.resolve())


def test_integer_labels_sort_numerically(tmp_path):
    rows = [[0.5 * i, (i * 7) % 5, [10, 2, -1, 2][i % 4]] for i in range(12)]
    path = write_csv(tmp_path / "n.csv", ["a", "b", "label"], rows)
    ds = load_csv(path, "label")
    assert ds.classes == ["-1", "2", "10"]  # numerically, not as strings ("-1", "10", "2")
    assert ds.y.tolist() == [{10: 2, 2: 1, -1: 0}[r[2]] for r in rows]
    assert ds.x.shape == (12, 2)


def test_features_pick_and_order_columns(flowers):
    ds = load_csv(flowers, "species", features=["petal_length", "sepal_length"])
    assert ds.features == ["petal_length", "sepal_length"] and ds.input_shape == (2,)
    assert torch.allclose(ds.x[0], torch.tensor([1.4, 5.1]))


def test_load_dataset_routes_csv(flowers):
    by_path = load_dataset(path=flowers, target="species")
    by_name = load_dataset("csv", path=str(flowers), target="species", features=["sepal_width"])
    assert by_path.x.shape == (6, 3) and by_name.x.shape == (6, 1)
    assert by_path.classes == by_name.classes == ["setosa", "versicolor", "virginica"]
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset("csv", target="species")
    with pytest.raises(ConfigError, match="remove one of the two"):
        load_dataset("digits", path=flowers, target="species")


def test_blank_lines_whitespace_and_bom(tmp_path):
    path = tmp_path / "messy.csv"
    path.write_text("\ufeff x , y ,label\n1, 2 ,a\n\n3,4, b\n5,6,a\n", encoding="utf-8")
    ds = load_csv(path, "label")
    assert ds.features == ["x", "y"] and ds.classes == ["a", "b"]
    assert ds.x.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]] and ds.y.tolist() == [0, 1, 0]


# ----------------------------------------------------------------------------- errors


def message(exc_info) -> str:
    return str(exc_info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file") as e:
        load_dataset(path=tmp_path / "nope.csv", target="label")
    assert str(tmp_path / "nope.csv") in message(e) and "data.path" in message(e)


def test_no_target(flowers):
    with pytest.raises(DataError, match="set data.target") as e:
        load_dataset(path=flowers)
    assert str(flowers) in message(e)


def test_missing_target_column_lists_columns_and_a_close_match(flowers):
    with pytest.raises(DataError) as e:
        load_csv(flowers, "specie")
    text = message(e)
    assert str(flowers) in text and "'specie'" in text and "data.target" in text
    assert "Did you mean 'species'?" in text
    for col in ("sepal_length", "sepal_width", "species", "petal_length"):
        assert repr(col) in text


def test_semicolon_file_is_read_and_a_wrong_delimiter_gets_a_hint(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("a;b;label\n1;2;x\n3;4;y\n")
    ds = load_csv(path, "label")  # the delimiter is taken from the header row
    assert ds.features == ["a", "b"] and ds.x.tolist() == [[1, 2], [3, 4]] and ds.classes == ["x", "y"]
    with pytest.raises(DataError, match="seems to use ';' as a separator"):
        load_csv(path, "label", delimiter=",")


def test_text_columns_are_one_hot_encoded(tmp_path):
    rows = [[1.0, "red", "a"], [2.0, "blue", "b"], [3.0, "red", "a"]]
    path = write_csv(tmp_path / "colours.csv", ["size", "colour", "label"], rows)
    ds = load_csv(path, "label")
    assert ds.features == ["size", "colour=blue", "colour=red", "colour=other"]
    assert ds.x.tolist() == [[1, 0, 1, 0], [2, 1, 0, 0], [3, 0, 1, 0]]
    assert load_csv(path, "label", features=["size"]).x.shape == (3, 1)


def test_missing_values_are_imputed_with_indicators_and_missing_labels_dropped(tmp_path):
    rows = [[1, "", "a"], [2, 5, "b"], ["NA", "nan", "a"], [4, "?", "b"]]
    path = write_csv(tmp_path / "gaps.csv", ["p", "q", "label"], rows)
    ds = load_csv(path, "label")
    assert ds.features == ["p", "p=missing", "q", "q=missing"]
    assert ds.x[:, 0].tolist() == [1, 2, 2, 4] and ds.x[:, 1].tolist() == [0, 0, 1, 0]  # median of 1, 2, 4
    assert ds.x[:, 2].tolist() == [5, 5, 5, 5] and ds.x[:, 3].tolist() == [1, 0, 1, 1]
    path = write_csv(tmp_path / "nolabel.csv", ["p", "label"], [[1, "a"], [2, ""], [3, "b"], [4, "a"]])
    with pytest.warns(UserWarning, match=r"1 row\(s\) have no value in the target column 'label' \(first on line 3\)"):
        ds = load_csv(path, "label")
    assert ds.x[:, 0].tolist() == [1, 3, 4]


def test_fewer_than_two_classes(tmp_path):
    path = write_csv(tmp_path / "one.csv", ["x", "label"], [[1, "cat"], [2, "cat"], [3, "cat"]])
    with pytest.raises(DataError, match=r"1 distinct value\(s\) \(every row is 'cat'\).*at least 2 classes") as e:
        load_csv(path, "label")
    assert str(path) in message(e)


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="the file is empty") as e:
        load_csv(empty, "label")
    assert str(empty) in message(e)
    header_only = tmp_path / "header.csv"
    header_only.write_text("x,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_csv(header_only, "label")


def test_other_shape_errors(tmp_path, flowers):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x,label\n1,a\n2,b,extra\n")
    with pytest.raises(DataError, match="line 3 has 3 field"):
        load_csv(ragged, "label")
    with pytest.raises(DataError, match="'petal_lenght'.*Did you mean 'petal_length'"):
        load_csv(flowers, "species", features=["petal_lenght"])
    with pytest.raises(DataError, match="includes the target column"):
        load_csv(flowers, "species", features=["species", "sepal_width"])
    dup = tmp_path / "dup.csv"
    dup.write_text("x,x,label\n1,2,a\n3,4,b\n")
    with pytest.raises(DataError, match="more than once"):
        load_csv(dup, "label")
    inf = write_csv(tmp_path / "inf.csv", ["x", "label"], [[1, "a"], ["inf", "b"]])
    with pytest.raises(DataError, match="infinite value"):
        load_csv(inf, "label")


def test_image_models_refuse_tabular_input():
    for name in ("cnn", "resnet18"):
        with pytest.raises(ShapeError, match=f"model.name: {name} needs image input.*use mlp or softmax"):
            create_model(name, input_shape=(7,), num_classes=3)
    for name in ("softmax", "mlp"):
        model = create_model(name, input_shape=(7,), num_classes=3).eval()
        assert model(torch.randn(5, 7)).shape == (5, 3)
    with pytest.raises(ShapeError, match="input_shape"):
        create_model("softmax", input_shape=(7, 2, 3, 4), num_classes=3)
    # a window of a series (steps, features): the flat models flatten it, image models refuse it
    assert create_model("mlp", input_shape=(7, 2), num_classes=3).eval()(torch.randn(5, 7, 2)).shape == (5, 3)
    with pytest.raises(ShapeError, match="cnn cannot read series windows"):
        create_model("cnn", input_shape=(7, 2), num_classes=3)
    with pytest.raises(ShapeError, match="mlp cannot read text"):
        create_model("mlp", input_shape=(7,), num_classes=3, vocab_size=100)


# ----------------------------------------------------------------------------- standardisation


def test_standardisation_uses_training_split_only_like_standard_scaler(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    table = np.column_stack([
        rng.normal(50.0, 10.0, n),  # large offset and scale
        rng.exponential(0.01, n),  # tiny scale
        np.full(n, 3.0),  # constant: centred, not scaled
        rng.integers(0, 5, n),
    ])
    labels = rng.integers(0, 3, n)
    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "d", "label"], [[*r, l] for r, l in zip(table, labels)])
    ds = load_csv(path, "label")
    s = split_dataset(ds, seed=0)
    (xtr, _), (xva, _), (xte, _) = s.train, s.val, s.test
    mean, std = channel_stats(xtr)
    scaler = StandardScaler().fit(xtr.numpy().astype(np.float64))
    assert np.allclose(mean, scaler.mean_, rtol=1e-12, atol=1e-12)
    assert np.allclose(std, scaler.scale_, rtol=1e-12, atol=1e-12)
    assert std[2] == 1.0
    # not the statistics of all the data: val and test did not leak in
    assert not np.allclose(mean, ds.x.double().mean(dim=0).numpy(), rtol=1e-6)
    for x in (xtr, xva, xte):
        z = normalize(x, mean, std)
        assert z.shape == x.shape and z.dtype == torch.float32
        assert np.allclose(z.numpy(), scaler.transform(x.numpy().astype(np.float64)), atol=1e-5)
    assert torch.allclose(normalize(xte[0], mean, std), normalize(xte, mean, std)[0])  # one sample (F,)
    with pytest.raises(DataError, match="4 feature"):
        normalize(xtr, mean[:3], std[:3])


def test_four_d_statistics_unchanged():
    x = torch.rand(10, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x[:, 1] = 0.5
    mean, std = channel_stats(x)
    assert np.allclose(mean[0], x[:, 0].double().mean().item()) and std[1] == 1e-6  # images keep STD_FLOOR
