"""Activation projections: PCA against scikit-learn on activations taken by hand, t-SNE on
digits, stratified subsamples, layer names, the plots and the command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from torch import nn

import deepworks
from deepworks.analysis import projection
from deepworks.cli import main
from deepworks.errors import ConfigError, DataError
from deepworks.evaluation.projection import (
    capture_activations,
    default_layer,
    find_layer,
    plot_projection,
    project_2d,
    subsample,
)
from deepworks.data import normalize
from deepworks.pipeline import load_run, prepare_data


def assert_png(path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()


def read_points(path) -> tuple[np.ndarray, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "label"]
    return np.array([[float(r[0]), float(r[1])] for r in rows[1:]]), [r[2] for r in rows[1:]]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    config = {"data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [32]},
              "train": {"epochs": 2, "progress": "none"}}
    return deepworks.train(config, run_dir=tmp_path_factory.mktemp("projection") / "run").dir


def by_hand(run_dir, split: str, upto: int) -> tuple[np.ndarray, list[str]]:
    """Activations after the first ``upto`` modules of the run's Sequential, and the labels."""
    loaded = load_run(run_dir)
    prepared = prepare_data(loaded.config)
    data = getattr(prepared, split)
    # the model's input by hand: uint8 pixels -> [0, 1] -> standardised with the training statistics
    x = normalize(data.x.float() * prepared.info["pixels"]["scale"], prepared.info["mean"], prepared.info["std"])
    with torch.no_grad():
        acts = loaded.model.eval()[:upto](x)  # Flatten -> Linear -> ReLU -> Dropout -> Linear
    return acts.double().numpy(), [loaded.classes[int(i)] for i in data.y]


# ----------------------------------------------------------------------------- against scikit-learn


def test_pca_of_the_penultimate_features_matches_sklearn(mlp_run):
    result = projection(mlp_run, split="val")
    # the mlp is Flatten, Linear, ReLU, Dropout, Linear: the default is the last Linear's input
    assert (result["layer"], result["captured"], result["label"]) == ("4", "input", "4.input")
    assert result["png"] == str(mlp_run / "projection-4.input-pca-val.png")
    assert result["csv"] == str(mlp_run / "projection-4.input-pca-val.csv")
    acts, labels = by_hand(mlp_run, "val", 4)
    expected = PCA(n_components=2, random_state=0).fit_transform(acts)
    coords, csv_labels = read_points(result["csv"])
    sizes = json.loads((mlp_run / "data.json").read_text())["sizes"]
    assert len(coords) == result["points"] == sizes["val"] and result["dims"] == 32
    assert np.allclose(coords, expected, atol=1e-4)
    assert csv_labels == labels
    assert_png(result["png"])


def test_a_named_layer_gives_its_output(mlp_run):
    result = projection(mlp_run, layer="1", split="test")
    assert (result["layer"], result["captured"]) == ("1", "output")
    assert result["csv"].endswith("projection-1-pca-test.csv")
    acts, labels = by_hand(mlp_run, "test", 2)  # the output of the first Linear, before ReLU
    coords, csv_labels = read_points(result["csv"])
    assert np.allclose(coords, PCA(n_components=2).fit_transform(acts), atol=1e-4)
    assert csv_labels == labels


def test_tsne_on_digits_with_a_stratified_sample(mlp_run):
    result = projection(mlp_run, method="tsne", split="train", max_points=120, seed=3)
    coords, labels = read_points(result["csv"])
    assert len(coords) == result["points"] == 120 and np.isfinite(coords).all()
    counts = {c: labels.count(c) for c in set(labels)}
    assert len(counts) == 10 and all(10 <= n <= 14 for n in counts.values())  # each class's share kept
    assert_png(result["png"])
    again = projection(mlp_run, method="tsne", split="train", max_points=120, seed=3)
    assert np.array_equal(read_points(again["csv"])[0], coords)  # seeded


def test_unknown_layer_method_and_split(mlp_run):
    with pytest.raises(ConfigError) as e:
        projection(mlp_run, layer="11")
    text = str(e.value)
    assert "--layer '11'" in text and "Did you mean '1'" in text and "Layers include: 0 (Flatten), 1 (Linear), 2 (ReLU)," in text
    with pytest.raises(ConfigError, match="--method: expected pca or tsne, got 'tnse'. Did you mean 'tsne'"):
        projection(mlp_run, method="tnse")
    with pytest.raises(ConfigError, match="--split: expected train, val or test"):
        projection(mlp_run, split="validation")


# ----------------------------------------------------------------------------- the building blocks


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(self.shared(self.shared(x)))  # shared runs twice


def test_capture_input_output_and_shared_layers():
    net = Branches()
    assert default_layer(net) == "head.1"
    x = torch.randn(7, 4)
    with torch.no_grad():
        inner = torch.relu(net.shared(net.shared(x)))
    assert torch.allclose(capture_activations(net, x, "head.1", capture="input", batch_size=3), inner)
    assert torch.allclose(capture_activations(net, x, "head.0"), inner)
    assert find_layer(net, "head.1") is net.head[1]
    with pytest.raises(DataError, match="ran 2 times in one forward pass"):
        capture_activations(net, x, "shared")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    assert capture_activations(conv, torch.randn(5, 1, 8, 8), "0").shape == (5, 72)  # (B, 2, 6, 6) -> (B, 72)
    with pytest.raises(DataError, match="no layer that has parameters"):
        default_layer(nn.Sequential(nn.ReLU()))


def test_subsample_is_stratified_and_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 9 + [3])
    idx = subsample(labels, 20, seed=0)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=4).tolist() == [12, 6, 2, 0]
    assert np.array_equal(subsample(labels, 20, seed=0), idx) and not np.array_equal(subsample(labels, 20, seed=1), idx)
    assert len(subsample(labels, 25, seed=0, stratified=False)) == 25
    assert np.array_equal(subsample(labels, 500), np.arange(100))


def test_project_2d_single_feature_and_plots(tmp_path):
    coords = project_2d(np.arange(10.0)[:, None], "pca")
    assert coords.shape == (10, 2) and np.all(coords[:, 1] == 0)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 2))
    regression = plot_projection(points, rng.normal(size=40), value_name="price", title="by value")
    assert len(regression.axes) == 2 and regression.axes[1].get_ylabel() == "price"  # the colour bar
    regression.savefig(tmp_path / "r.png")
    assert_png(tmp_path / "r.png")
    classes = plot_projection(points, rng.integers(0, 3, size=40), classes=["cat", "dog", "owl"])
    assert [t.get_text() for t in classes.axes[0].get_legend().get_texts()] == ["cat", "dog", "owl"]


# ----------------------------------------------------------------------------- the command line


def test_cli_projection(mlp_run, capsys):
    args = ["projection", str(mlp_run), "--method", "tsne", "--max-points", "60", "--layer", "2"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["points"] == 60 and result["png"].endswith("projection-2-tsne-val.png")
    assert_png(result["png"])
    assert main(args) == 0
    assert "projection-2-tsne-val.csv" in capsys.readouterr().out
    for bad, needle in ((["--split", "nope"], "--split"), (["--method", "umap"], "--method"),
                        (["--layer", "lin"], "--layer")):
        assert main(["projection", str(mlp_run), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err and "Traceback" not in err
