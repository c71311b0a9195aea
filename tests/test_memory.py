"""The memory a batch needs: the estimate against the measured peak of real training steps, the
refusal of a batch (or an in-memory photo folder) that cannot fit, train.batch_size: auto, and
the evaluation batch size taken from the estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepworks
from deepworks.config import TrainConfig, load_config
from deepworks.data.loaders import TensorData, ToInput
from deepworks.errors import ConfigError
from deepworks.models.registry import create_model
from deepworks.runtime import MEMORY_ENV, available_memory
from deepworks.training import Trainer
from deepworks.training.memory import (
    BATCH_SHARE,
    MemoryProfile,
    check_batch_memory,
    estimate_batch_bytes,
    inference_batch_size,
    optimizer_state_factor,
)

ROOT = Path(__file__).resolve().parents[1]

# A child process measures the growth of its peak resident memory (VmHWM, reset through
# /proc/self/clear_refs after a warm-up that loads the kernels) over its memory before the model
# exists, across three training steps of deepworks' own train_step and optimizer (the second and
# third run with the optimizer's state allocated), or two forward passes without gradients.
# tracemalloc cannot see these: torch allocates outside Python's allocator.
PROBE = r'''
import gc, json, sys
from pathlib import Path
import torch
from deepworks.data.loaders import ToInput
from deepworks.models.registry import create_model
from deepworks.training.optim import build_optimizer
from deepworks.training.step import train_step

spec = json.loads(sys.argv[1])
shape, b, k = tuple(spec["input_shape"]), spec["batch_size"], 10

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def make(s):
    return create_model(spec["model"], input_shape=s, num_classes=k, **spec["params"])

small = tuple(min(n, 16) for n in shape)
warm = make(small)
opt = build_optimizer(spec["optimizer"], warm.parameters())
for _ in range(2):
    train_step(warm, torch.randn(4, *small), torch.zeros(4, dtype=torch.long), opt, torch.nn.CrossEntropyLoss())
with torch.inference_mode():
    warm.eval()(torch.randn(4, *small))
del warm, opt
gc.collect()
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
model = make(shape)
if spec["uint8"]:
    x = torch.randint(0, 256, (b, *shape), dtype=torch.uint8)
    to_input = ToInput(1 / 255, [0.5] * shape[0], [0.25] * shape[0])
else:
    x, to_input = torch.randn(b, *shape), (lambda t: t)
if spec["training"]:
    opt = build_optimizer(spec["optimizer"], model.parameters())
    y = torch.randint(0, k, (b,))
    for _ in range(3):
        train_step(model.train(), to_input(x), y, opt, torch.nn.CrossEntropyLoss())
else:
    with torch.inference_mode():
        for _ in range(2):
            model.eval()(to_input(x))
print(json.dumps({"growth": status("VmHWM") - before}))
'''

CASES = {
    "cnn": dict(model="cnn", params={"filters": [32, 64]}, input_shape=[3, 64, 64], batch_size=64, optimizer="adamw",
                uint8=True, training=True),
    "mlp": dict(model="mlp", params={"hidden": [2048, 1024]}, input_shape=[3072], batch_size=64, optimizer="adamw",
                uint8=False, training=True),
    "cnn-sgd": dict(model="cnn", params={"filters": [32, 64]}, input_shape=[3, 128, 128], batch_size=32,
                    optimizer="sgd", uint8=True, training=True),
    "cnn-inference": dict(model="cnn", params={"filters": [32, 64]}, input_shape=[3, 224, 224], batch_size=64,
                          optimizer="adamw", uint8=False, training=False),
}


def measured_growth(case: dict) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(case)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-memory counters")
@pytest.mark.parametrize("name", list(CASES))
def test_estimate_is_within_30_percent_of_the_measured_peak(name):
    case = CASES[name]
    shape = tuple(case["input_shape"])
    estimate = estimate_batch_bytes(
        lambda: create_model(case["model"], input_shape=shape, num_classes=10, **case["params"]), shape,
        case["batch_size"], training=case["training"], optimizer=case["optimizer"],
        stored_dtype=torch.uint8 if case["uint8"] else None,
    )
    growth = measured_growth(case)
    assert growth > 10e6  # the measurement saw the batch
    assert 0.7 <= estimate / growth <= 1.3, f"{name}: estimate {estimate / 1e6:.1f} MB, measured {growth / 1e6:.1f} MB"


def test_the_estimate_counts_what_training_adds():
    model = create_model("mlp", input_shape=(100,), num_classes=10, hidden=[50])
    params = sum(p.numel() * 4 for p in model.parameters())
    profile = MemoryProfile(model, (100,))
    adam, sgd = profile.batch(32, training=True, optimizer="adamw"), profile.batch(32, training=True, optimizer="sgd",
                                                                                   optimizer_params={"momentum": 0})
    assert adam.parameters == params and adam.gradients == params and adam.optimizer_state == 2 * params
    assert sgd.optimizer_state == 0 and optimizer_state_factor("rmsprop") == 1
    inference = profile.batch(32, training=False)
    assert inference.gradients == inference.optimizer_state == 0 and inference.total < adam.total
    # activations grow with the batch; the model's own memory does not
    big = profile.batch(320, training=True)
    assert big.activations > 5 * adam.activations and big.parameters == adam.parameters
    assert model.training and all(p.grad is None for p in model.parameters())  # the model is left untouched


def _images(n: int, shape=(3, 32, 32)) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return TensorData(x, torch.arange(n) % 2, transform=ToInput(1 / 255, [0.5] * shape[0], [0.25] * shape[0]))


def test_a_batch_that_cannot_fit_is_one_error_naming_the_size_that_fits():
    cfg = load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filters": [16, 32]},
                       "train": {"batch_size": 64}})
    data = _images(200)
    build = lambda: create_model("cnn", input_shape=(3, 32, 32), num_classes=2, filters=[16, 32])  # noqa: E731
    profile = MemoryProfile(build, (3, 32, 32), stored_dtype=torch.uint8)
    available = int(profile.batch(16, training=True).total / BATCH_SHARE) + 1000  # 16 fits, 64 does not
    with pytest.raises(ConfigError) as err:
        check_batch_memory(cfg, build, data, available=available)
    message = str(err.value)
    assert "\n" not in message and message.startswith("train.batch_size: a batch of 64 images of 3x32x32 needs about")
    fits = int(message.split("Fix: train.batch_size: ")[1].split(" ")[0])
    assert 16 <= fits < 64 and "data.image_size" in message
    assert check_batch_memory(cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": fits})}),
                              build, data, available=available).train.batch_size == fits
    auto = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": "auto"})})
    assert check_batch_memory(auto, build, data, available=available).train.batch_size == 16  # a power of two
    assert check_batch_memory(auto, build, data, available=10**12).train.batch_size == 64  # the cap
    assert check_batch_memory(auto, build, _images(20), available=10**12).train.batch_size == 20  # the whole split


def test_a_cnn_whose_dense_head_is_too_large_is_told_about_global_pool():
    # global_pool: false, set: a cnn pools images over 64 px by default
    cfg = load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "global_pool": False},
                       "train": {"batch_size": 64}})
    shape = (3, 2000, 3000)
    data = TensorData(torch.zeros((2, *shape), dtype=torch.uint8), torch.arange(2),
                      transform=ToInput(1 / 255, [0.5] * 3, [0.25] * 3))
    build = lambda: create_model("cnn", input_shape=shape, num_classes=2, global_pool=False)  # noqa: E731 - on meta
    with pytest.raises(ConfigError) as err:
        check_batch_memory(cfg, build, data, available=16 * 10**9)
    message = str(err.value)
    assert "a batch of 64 images of 3x2000x3000" in message and "model.global_pool: true" in message
    assert "even a batch of 1" in message  # no smaller batch helps: it says so rather than naming one


def test_memory_env_caps_the_available_memory(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "300MB")
    assert available_memory() <= 300_000_000
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match=MEMORY_ENV):
        available_memory()


def test_eval_batch_size_auto_comes_from_the_estimate(monkeypatch):
    model = create_model("cnn", input_shape=(3, 64, 64), num_classes=2, filters=[16, 32])
    trainer = Trainer(model, TrainConfig(batch_size=8, epochs=1, progress="none"))
    trainer._check_shapes(trainer._as_data(_images(16, (3, 64, 64)), "data"))
    assert trainer.eval_batch_size() == 512  # plenty of memory: the cap
    profile = MemoryProfile(model, (3, 64, 64))
    need_100 = profile.batch(100, training=False).total - profile.parameters  # the weights are already in memory
    monkeypatch.setenv(MEMORY_ENV, str(int(need_100 / BATCH_SHARE) + 2))
    trainer._eval_batch = (None, 0)
    assert trainer.eval_batch_size() == 100
    assert inference_batch_size(model, (3, 64, 64), int(need_100 / BATCH_SHARE) + 2) == 100
    monkeypatch.setenv(MEMORY_ENV, "1KB")
    trainer._eval_batch = (None, 0)
    assert trainer.eval_batch_size() == 8  # never below train.batch_size


# ----------------------------------------------------------------------------- through the pipeline and the CLI


def jpeg_folder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    return root


def test_a_photo_folder_in_memory_at_6_megapixels_is_refused_before_loading(tmp_path):
    folder = jpeg_folder(tmp_path / "photos")
    cfg = tmp_path / "c.yaml"
    # global_pool: false, set: a cnn pools images over 64 px by default, and then its head would fit
    cfg.write_text(json.dumps({"data": {"path": str(folder), "image_size": [2000, 3000], "in_memory": True},
                               "model": {"name": "cnn", "global_pool": False},
                               "train": {"epochs": 1, "progress": "none"}}))
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "deepworks", "train", str(cfg), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, MEMORY_ENV: "16GB", "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert "data.in_memory: true" in line and "6 images at 3x2000x3000" in line
    assert "for a training batch of 64 (train.batch_size)" in line
    assert "a smaller data.image_size ([" in line
    assert "model.global_pool: true" in line.split("Fix:")[1]
    assert "loading images" not in proc.stdout and not run_dir.exists()  # refused before any pixel or data.json


def test_batch_size_auto_picks_a_size_that_fits_logs_it_and_trains(tmp_path, monkeypatch, capsys):
    folder = jpeg_folder(tmp_path / "photos", per_class=12)
    raw = {"data": {"path": str(folder), "image_size": [32, 32]}, "model": {"name": "cnn", "filters": [8, 16]},
           "train": {"epochs": 1, "batch_size": "auto", "progress": "none"}}
    build = lambda: create_model("cnn", input_shape=(3, 32, 32), num_classes=2, filters=[8, 16])  # noqa: E731
    profile = MemoryProfile(build, (3, 32, 32), stored_dtype=torch.uint8)
    # enough for a batch of 4 but not 8 (the data's own budget, half of it, holds the 24 small images)
    monkeypatch.setenv(MEMORY_ENV, str(int(profile.batch(5, training=True).total / BATCH_SHARE)))
    run = deepworks.train(raw, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "train.batch_size: auto -> 4 (the largest power of two up to 64 that fits" in out
    assert load_config(tmp_path / "run" / "config.yaml").train.batch_size == 4  # the resolved config records it
    assert run.summary["epochs_run"] == 1 and "test" in run.summary
