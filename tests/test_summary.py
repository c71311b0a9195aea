"""``deepworks inspect``: summarize, inspect_config and render_summary."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from deepworks import inspection
from deepworks.errors import ShapeError
from deepworks.inspection import inspect_config
from deepworks.models import create_model
from deepworks.models.summary import render_summary, summarize


def _total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_by_layer(model: nn.Sequential, input_shape) -> list[list[int]]:
    """Each layer's output shape (no batch dim), computed by running the Sequential by hand."""
    model.eval()
    x = torch.zeros(2, *input_shape)
    shapes = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            shapes.append(list(x.shape[1:]))
    return shapes


def _rows_of(s: dict, type_name: str) -> list[dict]:
    return [r for r in s["layers"] if r["type"] == type_name]


# ----------------------------------------------------------------------------- shapes

CNN_CASES = [
    ((1, 28, 28), dict(filters=[8, 16], padding="same", stride=1, pool="max", kernel_size=3)),
    ((3, 32, 32), dict(filters=[8, 16], padding="valid", stride=1, pool="avg", kernel_size=5)),
    ((1, 28, 28), dict(filters=[8, 16], padding=1, stride=2, pool="none", kernel_size=3)),
    ((1, 28, 28), dict(filters=[8, 16], padding="same", stride=2, pool="max", kernel_size=5)),  # asymmetric pad
    ((3, 32, 32), dict(filters=[4, 8], padding="valid", stride=2, pool="max", kernel_size=3)),
    ((1, 8, 8), dict(filters=[8, 16], padding="same", stride=1, pool="max", kernel_size=3)),
    ((1, 8, 8), dict(filters=[8], padding=1, stride=2, pool="avg", kernel_size=5)),
    (
        (3, 32, 32),
        dict(
            blocks=[{"filters": 8, "convs": 2, "pool": "avg"}, {"filters": 16, "stride": 2, "padding": "valid"}],
            batch_norm=False, activation="leaky_relu", global_pool=True,
        ),
    ),
]


@pytest.mark.parametrize(("input_shape", "params"), CNN_CASES)
def test_output_shapes_match_a_real_layer_by_layer_pass(input_shape, params):
    model = create_model("cnn", input_shape=input_shape, num_classes=7, **params)
    s = summarize(model, input_shape)
    expected = _layer_by_layer(model, input_shape)
    assert len(s["layers"]) == len(model) == len(expected)
    spatial = 0
    for i, (row, shape) in enumerate(zip(s["layers"], expected)):
        assert row["index"] == i and row["name"] == str(i)
        assert row["type"] == type(model[i]).__name__
        assert row["output_shape"] == shape, row
        spatial += row["type"] in {"Conv2d", "MaxPool2d", "AvgPool2d"}
    assert spatial >= 2
    assert s["output_shape"] == [7] == expected[-1]
    assert s["input_shape"] == list(input_shape)
    json.dumps(s)  # JSON-serialisable


def test_output_shapes_by_hand():
    # 28 -valid 5x5-> 24 -pool 2-> 12 -valid 5x5-> 8 -pool 2-> 4
    model = create_model(
        "cnn", input_shape=(1, 28, 28), num_classes=10, filters=[8, 16], padding="valid", kernel_size=5
    )
    s = summarize(model, (1, 28, 28))
    assert [r["output_shape"] for r in _rows_of(s, "Conv2d")] == [[8, 24, 24], [16, 8, 8]]
    assert [r["output_shape"] for r in _rows_of(s, "MaxPool2d")] == [[8, 12, 12], [16, 4, 4]]
    assert _rows_of(s, "Flatten")[0]["output_shape"] == [16 * 4 * 4]
    conv = _rows_of(s, "Conv2d")[0]
    assert conv["detail"] == "5x5 s1 p0, 1->8, no bias"
    assert _rows_of(s, "MaxPool2d")[0]["detail"] == "2x2 s2"
    assert _rows_of(s, "Linear")[0]["detail"] == "256->128"
    assert _rows_of(s, "Dropout")[0]["detail"] == "p=0.25"


def test_summarize_leaves_the_model_as_it_was():
    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[8])
    model.train()
    model[1].eval()  # a frozen batch norm stays in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, (1, 8, 8))
    assert model.training and not model[1].training and model[0].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert not model._forward_hooks and not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_a_forward_pass_that_fails_names_the_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ShapeError, match=r"layer '1' \(Linear 10->2\)"):
        summarize(model, (1, 8, 8))
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


# ----------------------------------------------------------------------------- receptive field


def _rf(s: dict) -> list[tuple[int | None, int | None]]:
    return [(r["receptive_field"], r["jump"]) for r in s["layers"]]


def test_receptive_field_two_3x3_convs_is_5():
    s = summarize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), (1, 16, 16))
    assert _rf(s) == [(3, 1), (5, 1)]


def test_receptive_field_conv_pool_conv_is_8():
    # conv 3x3: r = 1 + 2*1 = 3, j = 1; pool 2x2 s2: r = 3 + 1*1 = 4, j = 2; conv 3x3: r = 4 + 2*2 = 8
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    s = summarize(model, (1, 16, 16))
    assert _rf(s) == [(3, 1), (3, 1), (4, 2), (8, 2)]


def test_receptive_field_with_strides_and_dilation():
    # stride-2 convs: 3 (j2) -> 3 + 2*2 = 7 (j4) -> 7 + 2*4 = 15 (j4, stride 1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    )
    assert _rf(summarize(model, (1, 32, 32))) == [(3, 2), (7, 4), (15, 4)]
    # a dilated 3x3 (dilation 2) sees 5 pixels; a 5x5 stride-2 conv after it adds 4*1
    model = nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2, padding=2), nn.Conv2d(4, 4, 5, stride=2))
    assert _rf(summarize(model, (1, 32, 32))) == [(5, 1), (9, 2)]
    # avg pool 3 stride 2 after a 7x7 stride-2 conv: 7 (j2) -> 7 + 2*2 = 11 (j4)
    model = nn.Sequential(nn.Conv2d(1, 4, 7, stride=2, padding=3), nn.AvgPool2d(3, stride=2))
    assert _rf(summarize(model, (1, 32, 32))) == [(7, 2), (11, 4)]


def test_receptive_field_in_a_cnn_with_same_padding_and_stride_2():
    # ZeroPad2d (asymmetric same padding) leaves it at 1; conv 5x5 s2: 5 (j2); pool 2: 5 + 1*2 = 7 (j4);
    # after Flatten: null
    model = create_model("cnn", input_shape=(1, 28, 28), num_classes=10, filters=[8], stride=2, kernel_size=5)
    s = summarize(model, (1, 28, 28))
    by_type = {r["type"]: (r["receptive_field"], r["jump"]) for r in s["layers"]}
    assert s["layers"][0]["type"] == "ZeroPad2d" and _rf(s)[0] == (1, 1)
    assert by_type["Conv2d"] == (5, 2)
    assert by_type["BatchNorm2d"] == (5, 2)
    assert by_type["MaxPool2d"] == (7, 4)
    assert by_type["Flatten"] == (None, None)
    assert by_type["Linear"] == (None, None)
    assert all(r["receptive_field"] is None for r in s["layers"][s["layers"].index(_rows_of(s, "Flatten")[0]):])


def test_receptive_field_follows_branches():
    # resnet18 (behind its input adapter, which keeps the geometry): conv1 7x7 s2 -> 7 (j2); maxpool 3 s2 -> 11 (j4); layer1: four 3x3 -> 11 + 4*2*4 = 43 (j4);
    # layer2.0.conv1 3x3 s2 -> 51 (j8); conv2 -> 67 (j8); the downsample branch starts from the block input: 43 (j8)
    model = create_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    s = summarize(model, (3, 32, 32))
    rows = {}
    for r in s["layers"]:
        rows.setdefault(r["name"], (r["receptive_field"], r["jump"]))
    assert rows["net.conv1"] == (7, 2)
    assert rows["net.maxpool"] == (11, 4)
    assert rows["net.layer1.1.conv2"] == (43, 4)
    assert rows["net.layer2.0.conv1"] == (51, 8)
    assert rows["net.layer2.0.conv2"] == (67, 8)
    assert rows["net.layer2.0.downsample.0"] == (43, 8)
    assert rows["net.fc"] == (None, None)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("name", "input_shape", "params"),
    [
        ("cnn", (1, 28, 28), {"filters": [8, 16]}),
        ("cnn", (3, 32, 32), {"blocks": [{"filters": 8, "batch_norm": False}, {"filters": 16}], "activation": "prelu"}),
        ("mlp", (1, 8, 8), {"hidden": [32, 16], "batch_norm": True}),
        ("softmax", (1, 28, 28), {}),
        ("softmax", (3, 8, 8), {"bias": False}),
        ("resnet18", (3, 32, 32), {}),
    ],
)
def test_totals_equal_the_model_parameter_count(name, input_shape, params):
    model = create_model(name, input_shape=input_shape, num_classes=10, **params)
    s = summarize(model, input_shape)
    total = _total(model)
    assert s["total_params"] == total == sum(r["params"] for r in s["layers"])
    assert s["trainable_params"] == total == sum(r["trainable"] for r in s["layers"])
    assert s["frozen_params"] == 0
    assert s["output_shape"] == [10]
    json.dumps(s)


def test_resnet18_reused_relu_is_one_row_per_call():
    model = create_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    s = summarize(model, (3, 32, 32))
    relu_rows = [r for r in s["layers"] if r["name"] == "net.layer1.0.relu"]
    assert len(relu_rows) == 2  # BasicBlock calls its ReLU twice
    assert len(s["layers"]) > len([m for m in model.modules() if not list(m.children())])
    assert sum(r["params"] for r in s["layers"]) == _total(model)


def test_frozen_parameters():
    model = create_model("cnn", input_shape=(1, 28, 28), num_classes=10, filters=[8, 16], batch_norm=False)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    for p in convs[0].parameters():
        p.requires_grad = False
    convs[1].bias.requires_grad = False  # partial
    s = summarize(model, (1, 28, 28))
    frozen = sum(p.numel() for p in convs[0].parameters()) + convs[1].bias.numel()
    assert s["frozen_params"] == frozen
    assert s["trainable_params"] == _total(model) - frozen
    assert s["total_params"] == _total(model)
    rows = _rows_of(s, "Conv2d")
    assert rows[0]["trainable"] == 0 and rows[0]["params"] == 8 * 9 + 8
    assert rows[1]["trainable"] == 16 * 8 * 9 and rows[1]["params"] == 16 * 8 * 9 + 16
    text = _render(s)
    assert "no" in text and "partial" in text and f"{frozen:,}" in text


class _Reuse(nn.Module):
    """A Linear called twice, weights tied between two Linears, a parameter on a non-leaf module,
    and a submodule never called."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight
        self.act = nn.ReLU()
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.act(self.a(x.flatten(1)))
        x = self.act(self.a(x))
        x = self.b(x) * self.scale
        return self.head(x)


def test_reused_tied_unused_and_non_leaf_parameters_count_once():
    model = _Reuse()
    s = summarize(model, (6,))
    assert s["total_params"] == _total(model) == sum(r["params"] for r in s["layers"])
    names = [r["name"] for r in s["layers"]]
    assert names.count("a") == 2 and names.count("act") == 2
    a_rows = [r for r in s["layers"] if r["name"] == "a"]
    assert a_rows[0]["params"] == 42 and a_rows[1]["params"] == 0 and a_rows[1]["shared"]
    assert [r["params"] for r in s["layers"] if r["name"] == "b"] == [0]  # tied to a.weight
    assert [r["params"] for r in s["layers"] if r["name"] == "(model)"] == [1]  # `scale`
    unused = [r for r in s["layers"] if r["name"] == "unused"]
    assert unused[0]["output_shape"] is None and unused[0]["params"] == 12
    assert "not called" in unused[0]["detail"]
    assert s["output_shape"] == [2]
    _render(s)


# ----------------------------------------------------------------------------- inspect_config


def test_inspect_config_on_digits_loads_no_data(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("digits' shape is known without loading it")

    monkeypatch.setattr(inspection, "load_from_config", no_loading)
    s = inspect_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [8, 16]}})
    assert s["model"] == "cnn" and s["dataset"] == "digits" and s["num_classes"] == 10
    assert s["input_shape"] == [1, 8, 8] and s["output_shape"] == [10]
    assert _rows_of(s, "Conv2d")[0]["output_shape"] == [8, 8, 8]
    assert s["total_params"] == sum(r["params"] for r in s["layers"])
    json.dumps(s)
    # data.image_size / data.channels change a built-in dataset's shape, still without loading
    s = inspect_config({"data": {"dataset": "digits", "image_size": 16, "channels": 3}, "model": {"name": "mlp"}})
    assert s["input_shape"] == [3, 16, 16]
    assert _rows_of(s, "Linear")[0]["detail"].startswith("768->")


def test_inspect_config_from_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {dataset: digits}\nmodel: {name: softmax}\n", encoding="utf-8")
    s = inspect_config(path)
    assert s["model"] == "softmax" and s["total_params"] == 64 * 10 + 10


def test_inspect_config_shape_that_cannot_work_names_the_block():
    with pytest.raises(ShapeError, match="block 3"):
        inspect_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [8, 8, 8, 8]}})


def test_inspect_config_on_an_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 10), (40 * i, 80, 120)).save(tmp_path / label / f"{i}.png")
    s = inspect_config({"data": {"path": str(tmp_path)}, "model": {"name": "cnn", "filters": [4]}})
    assert s["input_shape"] == [3, 10, 12] and s["num_classes"] == 2 and s["output_shape"] == [2]
    assert s["dataset"] == str(tmp_path)
    s = inspect_config(
        {"data": {"path": str(tmp_path), "image_size": 8, "channels": 1}, "model": {"name": "cnn", "filters": [4]}}
    )
    assert s["input_shape"] == [1, 8, 8]


# ----------------------------------------------------------------------------- rendering


def _render(s: dict) -> str:
    console = Console(record=True, width=140)
    console.print(render_summary(s))
    return console.export_text()


def test_render_summary():
    s = inspect_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [8, 16]}})
    text = _render(s)
    assert "Conv2d" in text and "3x3 s1 p1, 1->8" in text
    assert f"{s['total_params']:,}" in text
    assert "8x8x8" in text  # output shape of the first conv
    assert "trainable" in text and "frozen" in text and "receptive field" in text
    assert "cnn on digits" in text
