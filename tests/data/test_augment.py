"""Augmentation of training batches: each op against an oracle (torch/torchvision), the contract
every op keeps (shape, dtype, device, seeding, no global RNG), config errors, and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms.v2 import functional as TF

from deepworks import Callback, Trainer, load_config
from deepworks.data.augment import AUGMENTS, build_augment
from deepworks.errors import ConfigError, ShapeError

ROOT = Path(__file__).resolve().parents[2]

# one representative setting per registered op; the contract tests run over all of them
EXAMPLES = {
    "hflip": "hflip",
    "vflip": {"vflip": {"p": 0.7}},
    "random_crop": {"random_crop": {"padding": 3}},
    "rotate": {"rotate": 20},
    "color_jitter": {"color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}},
    "cutout": {"cutout": {"size": 4}},
    "random_resized_crop": {"random_resized_crop": {"scale": [0.5, 1.0]}},
}


def batch(b=32, c=3, h=10, w=12, seed=0, dtype=torch.float32):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_every_registered_op_has_an_example():
    assert sorted(EXAMPLES) == AUGMENTS.names()


# ----------------------------------------------------------------- each op against an oracle


@pytest.mark.parametrize("name, dims", [("hflip", [-1]), ("vflip", [-2])])
def test_flip_equals_torch_flip_on_the_chosen_samples_and_leaves_the_rest(name, dims):
    x = batch(64)
    out = build_augment([name], seed=0)(x, epoch=1, step=0)
    flipped = torch.flip(x, dims=dims)
    chosen = [torch.equal(out[i], flipped[i]) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f != k for f, k in zip(chosen, kept))  # each sample is exactly one of the two
    assert 10 < sum(chosen) < 54  # p = 0.5 of 64 samples
    everyone = build_augment([{name: {"p": 1.0}}], seed=0)(x, epoch=1, step=0)
    assert torch.equal(everyone, flipped)
    nobody = build_augment([{name: 0.0}], seed=0)(x, epoch=1, step=0)
    assert torch.equal(nobody, x)


def _offsets(padded: torch.Tensor, out: torch.Tensor) -> list[list[tuple[int, int]]]:
    """For each sample, every offset at which the window of ``padded`` equals ``out`` exactly."""
    h, w = out.shape[-2:]
    found = []
    for b in range(len(out)):
        found.append([(i, j) for i in range(padded.shape[-2] - h + 1) for j in range(padded.shape[-1] - w + 1)
                      if torch.equal(padded[b, :, i:i + h, j:j + w], out[b])])
    return found


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_random_crop_is_a_crop_of_the_padded_batch(mode):
    x, pad = batch(48, c=2, h=6, w=9), 3
    out = build_augment([{"random_crop": {"padding": pad, "padding_mode": mode}}], seed=1)(x, epoch=2, step=5)
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)  # constant: zeros
    found = _offsets(padded, out)
    assert all(len(f) == 1 for f in found)  # every sample is one window of its padded image
    offsets = {f[0] for f in found}
    assert len(offsets) > 20  # drawn per sample, over the whole (2 * 3 + 1)^2 range
    assert {i for i, _ in offsets} == set(range(2 * pad + 1)) and {j for _, j in offsets} == set(range(2 * pad + 1))


@pytest.mark.parametrize("fill, pixel", [(0.0, 0.0), (1.0, 1.0), ("mean", None)])
def test_random_crop_pads_normalised_batches_with_the_fill_pixel(fill, pixel):
    """The padding holds the pixel value ``fill`` normalised with each channel's mean/std (0 for mean)."""
    x, pad, mean, std = batch(32, c=2, h=5, w=5), 2, [0.3, 0.6], [0.5, 0.25]
    aug = build_augment([{"random_crop": {"padding": pad, "fill": fill}}], seed=0, mean=mean, std=std)
    out = aug(x, epoch=1, step=0)
    values = [0.0 if pixel is None else (pixel - m) / s for m, s in zip(mean, std)]
    padded = torch.cat([F.pad(x[:, c:c + 1], (pad,) * 4, value=v) for c, v in enumerate(values)], dim=1)
    assert all(len(f) == 1 for f in _offsets(padded, out))


def test_random_crop_with_p_keeps_the_other_samples_bitwise():
    x = batch(64)
    out = build_augment([{"random_crop": {"padding": 2, "p": 0.5}}], seed=0)(x, epoch=1, step=0)
    same = sum(torch.equal(out[i], x[i]) for i in range(len(x)))
    assert 15 < same < 49


def test_random_crop_with_a_smaller_window_is_that_crop_scaled_back():
    x = batch(8, c=1, h=8, w=8)
    out = build_augment([{"random_crop": {"padding": 0, "size": 6}}], seed=0)(x, epoch=1, step=0)
    assert out.shape == x.shape
    for b in range(len(x)):
        crops = [x[b:b + 1, :, i:i + 6, j:j + 6] for i in range(3) for j in range(3)]
        scaled = [F.interpolate(c, size=(8, 8), mode="bilinear", align_corners=False) for c in crops]
        assert sum(torch.allclose(s[0], out[b], atol=1e-6) for s in scaled) == 1


@pytest.mark.parametrize("angle", [30.0, -75.0])
def test_rotate_matches_torchvision_for_a_fixed_angle(angle):
    pixels = torch.rand(4, 3, 12, 16, generator=torch.Generator().manual_seed(0))  # not square: must not shear
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    aug = build_augment([{"rotate": [angle, angle]}], seed=0, mean=mean, std=std)  # fill: 0, black corners
    out = aug((pixels - m) / s, epoch=1, step=0) * s + m
    ref = TF.rotate(pixels, angle, interpolation=TF.InterpolationMode.BILINEAR)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_rotate_draws_an_angle_per_sample():
    x = batch(1, c=1, h=16, w=16).expand(16, -1, -1, -1).contiguous()  # one image 16 times
    out = build_augment([{"rotate": 40}], seed=0)(x, epoch=1, step=0)
    assert len({out[i].sum().item() for i in range(16)}) == 16


def test_color_jitter_matches_torchvision_in_pixel_space():
    """Factors fixed by [f, f] ranges: the normalised batch gets what torchvision does to the pixels."""
    pixels = torch.rand(6, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    fixed = {"brightness": [1.3, 1.3], "contrast": [0.6, 0.6], "saturation": [1.5, 1.5]}
    aug = build_augment([{"color_jitter": fixed}], seed=0, mean=mean, std=std)
    out = aug((pixels - m) / s, epoch=1, step=0)
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(pixels, 1.3), 0.6), 1.5)
    torch.testing.assert_close(out * s + m, ref, atol=1e-5, rtol=0)


def test_color_jitter_on_grayscale_matches_torchvision():
    pixels = torch.rand(5, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    aug = build_augment([{"color_jitter": {"brightness": [0.7, 0.7], "contrast": [1.4, 1.4]}}], seed=0,
                        mean=[0.3], std=[0.5])
    out = aug((pixels - 0.3) / 0.5, epoch=1, step=0) * 0.5 + 0.3
    torch.testing.assert_close(out, TF.adjust_contrast(TF.adjust_brightness(pixels, 0.7), 1.4), atol=1e-5, rtol=0)


def test_cutout_fills_one_clipped_square_per_sample():
    x = torch.rand(64, 2, 12, 12, generator=torch.Generator().manual_seed(0)) + 1  # no zeros of its own
    size = 5
    out = build_augment([{"cutout": size}], seed=0, mean=[0.5, 0.4], std=[0.2, 0.3])(x, epoch=1, step=0)
    interior = 0
    for b in range(len(x)):
        changed = (out[b] != x[b]).any(0)  # (H, W)
        # the mean colour, 0 once normalised; the rest bitwise unchanged
        assert (out[b][:, changed] == 0).all() and torch.equal(out[b][:, ~changed], x[b][:, ~changed])
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert changed.sum() == len(rows) * len(cols)  # one rectangle
        assert rows.max() - rows.min() + 1 == len(rows) <= size and cols.max() - cols.min() + 1 == len(cols) <= size
        inside = 0 < rows.min() and rows.max() < 11 and 0 < cols.min() and cols.max() < 11
        if inside:  # not clipped by the border: the full square
            interior += 1
            assert len(rows) == len(cols) == size
    assert interior > 10


def test_random_resized_crop_full_scale_is_the_identity():
    x = batch(8, c=3, h=10, w=10)
    out = build_augment([{"random_resized_crop": {"scale": [1, 1], "ratio": [1, 1]}}], seed=0)(x, epoch=1, step=0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_random_resized_crop_zooms_by_the_drawn_scale():
    """A ramp along the width, cropped to a quarter of the area at ratio 1: every crop lies inside the
    image and is half as wide, so the ramp's slope halves, wherever the crop is."""
    w = 16
    x = torch.arange(w, dtype=torch.float32).expand(12, 1, w, w).contiguous()
    out = build_augment([{"random_resized_crop": {"scale": [0.25, 0.25], "ratio": [1, 1]}}], seed=0)(x, epoch=1, step=3)
    torch.testing.assert_close(out.diff(dim=-1)[..., 1:-1], torch.full((12, 1, w, w - 3), 0.5), atol=1e-4, rtol=0)
    starts = out[:, 0, 0, 0]
    assert len(set(starts.tolist())) > 6  # the crop's place is drawn per sample


# ----------------------------------------------------------------- the contract of every op


DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_op_keeps_shape_dtype_device_and_is_seeded(name, dtype, device):
    aug = build_augment([EXAMPLES[name]], seed=7, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    x = batch(32, c=3, h=10, w=12, dtype=dtype).to(device)
    rng = torch.get_rng_state()
    out = aug(x, epoch=3, step=4)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG (dropout) is untouched
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, aug(x, epoch=3, step=4))
    assert not torch.equal(out, aug(x, epoch=3, step=5))
    assert not torch.equal(out, aug(x, epoch=4, step=4))
    assert not torch.equal(out, aug(x, epoch=3, step=4, rank=1))
    assert not torch.equal(out, build_augment([EXAMPLES[name]], seed=8, mean=[0.5, 0.4, 0.3],
                                              std=[0.2, 0.2, 0.2])(x, epoch=3, step=4))
    assert torch.equal(x, batch(32, c=3, h=10, w=12, dtype=dtype).to(device))  # the input is not modified


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_augmentation_on_cpu_and_gpu():
    spec = ["hflip", "vflip", {"random_crop": 3}, {"cutout": 4}]
    x = batch(64)
    aug = build_augment(spec, seed=0)
    assert torch.equal(aug(x, epoch=1, step=2), aug(x.cuda(), epoch=1, step=2).cpu())


def test_the_whole_list_runs_in_order():
    spec = ["hflip", {"random_crop": {"padding": 4}}, {"rotate": 15},
            {"color_jitter": {"brightness": 0.2, "contrast": 0.2}}, {"cutout": {"size": 8}},
            {"random_resized_crop": {"scale": [0.6, 1.0]}}]
    aug = build_augment(spec, seed=0, input_shape=(1, 28, 28), mean=[0.29], std=[0.35])
    assert [op.name for op in aug.ops] == ["hflip", "random_crop", "rotate", "color_jitter", "cutout",
                                           "random_resized_crop"]
    x = batch(16, c=1, h=28, w=28)
    out = aug(x, epoch=1, step=0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert build_augment([], seed=0) is None and build_augment(None, seed=0) is None


def test_non_image_batches_are_refused():
    aug = build_augment(["hflip"], seed=0)
    with pytest.raises(ShapeError, match="data.augment"):
        aug(torch.randn(8, 5), epoch=1, step=0)
    with pytest.raises(ShapeError, match="float"):
        aug(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), epoch=1, step=0)


# ----------------------------------------------------------------- config errors


def _config_error(augment, **data) -> str:
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits", "augment": augment, **data}})
    return str(e.value)


def test_config_canonical_form_round_trips():
    cfg = load_config({"data": {"dataset": "digits", "augment": ["hflip", {"rotate": 15}, {"random_crop": 4}]}})
    assert cfg.data.augment == [
        {"hflip": {"p": 0.5}},
        {"rotate": {"p": 1.0, "degrees": [-15.0, 15.0], "fill": 0.0}},
        {"random_crop": {"p": 1.0, "padding": 4, "size": None, "padding_mode": "constant", "fill": 0.0}},
    ]
    assert load_config(cfg).data.augment == cfg.data.augment
    override = load_config({"data": {"dataset": "digits"}}, ["data.augment=[vflip]"])
    assert override.data.augment == [{"vflip": {"p": 0.5}}]
    assert load_config({"data": {"dataset": "digits"}}).data.augment == []


def test_unknown_op_lists_the_valid_ones_with_a_suggestion():
    msg = _config_error(["hflip", {"random_crpo": {"padding": 4}}])
    assert "data.augment[1]: unknown augmentation 'random_crpo'" in msg
    assert "Did you mean 'random_crop'" in msg
    assert "Known augmentations: " + ", ".join(AUGMENTS.names()) in msg


def test_bad_params_name_the_key_path_and_the_fix():
    msg = _config_error(["hflip", {"random_crop": {"paddin": 4}}])
    assert "data.augment[1].random_crop.paddin: unknown key. Did you mean 'data.augment[1].random_crop.padding'?" in msg
    msg = _config_error([{"random_crop": {"padding": -1}}])
    assert "data.augment[0].random_crop.padding" in msg and "greater than or equal to 0" in msg
    msg = _config_error([{"cutout": {"fill": "black"}}])
    assert "data.augment[0].cutout.fill: expected a pixel value in [0, 1] (0 is black) or 'mean'" in msg
    msg = _config_error([{"rotate": [20, 10]}])
    assert "data.augment[0].rotate.degrees: expected [low, high] with low <= high" in msg
    msg = _config_error([{"random_resized_crop": {"scale": [0.5, 2]}}])
    assert "data.augment[0].random_resized_crop.scale: expected 0 < low <= high <= 1" in msg
    msg = _config_error([{"color_jitter": {}}])
    assert "data.augment[0].color_jitter" in msg and "set at least one of brightness, contrast, saturation" in msg
    msg = _config_error([{"name": "hflip", "p": 0.3}])
    assert "data.augment[0]: expected an augmentation name or a one-key mapping" in msg
    assert "Write it as {hflip: {p: 0.3}}" in msg


def test_image_shape_problems_are_config_errors():
    with pytest.raises(ConfigError, match=r"data.augment\[0\].color_jitter.saturation: .*3 channels.*data.channels: 3"):
        build_augment([{"color_jitter": {"saturation": 0.2}}], seed=0, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match=r"data.augment\[1\].cutout.size"):
        build_augment(["hflip", {"cutout": 40}], seed=0, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="data.augment: augmentation is for images"):
        build_augment(["hflip"], seed=0, input_shape=(5,))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "deepworks", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_refuses_augmentation_of_tabular_data_and_unknown_ops(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": str(table), "target": "label", "augment": ["hflip"]},
                                   "model": {"name": "softmax"}, "train": {"epochs": 1}}))
    proc = cli("train", cfg, "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "data.augment" in lines[0] and "augmentation is for images" in lines[0]

    cfg.write_text("data: {dataset: digits, augment: [hflip, {rotat: 10}]}\n")
    proc = cli("train", cfg, "--run-dir", tmp_path / "r2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.augment[1]: unknown augmentation 'rotat'. Did you mean 'rotate'?" in proc.stderr


# ----------------------------------------------------------------- the Trainer


def images(n=192, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(classes, 1, 8, 8, generator=g)[y] * 2 + torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(256, 3))


SPEC = ["hflip", {"random_crop": 2}, {"rotate": 10}, {"cutout": 3}]


class Spy:
    """An augment that records its calls and passes the batch through."""

    def __init__(self):
        self.calls: list[tuple[int, int, int, int]] = []

    def __call__(self, x, *, epoch, step, rank=0):
        self.calls.append((epoch, step, rank, len(x)))
        return x


def test_trainer_augments_training_batches_only():
    x, y = images()
    spy = Spy()
    Trainer(small_cnn(), {"epochs": 2, "batch_size": 50, "progress": "none"}, augment=spy).fit((x, y), (x, y))
    # 192 samples in batches of 50: 4 training batches per epoch; validation (192 more) is never augmented
    assert spy.calls == [(e, s, 0, n) for e in (1, 2) for s, n in enumerate([50, 50, 50, 42])]


def test_augmentation_changes_training():
    x, y = images()
    plain, augmented = small_cnn(), small_cnn()
    cfg = {"epochs": 1, "batch_size": 32, "progress": "none"}
    Trainer(plain, cfg).fit((x, y))
    Trainer(augmented, cfg, augment=build_augment(SPEC, seed=0)).fit((x, y))
    assert not all(torch.equal(a, b) for a, b in zip(plain.parameters(), augmented.parameters()))


class StopAt(Callback):
    """Simulates a crash right after a given step (after its checkpoint was written)."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("crash_step", [8, 11])  # mid-epoch 2: right after a step checkpoint, and 3 steps past one
def test_resume_with_augmentation_is_bitwise_equal_to_uninterrupted(tmp_path, crash_step):
    x, y = images()
    cfg = {"epochs": 3, "batch_size": 32, "progress": "none", "checkpoint_every_steps": 4}

    def trainer(run, model, **kw):
        return Trainer(model, cfg, run_dir=tmp_path / run, augment=build_augment(SPEC, seed=0), **kw)

    trainer("full", small_cnn()).fit((x, y), (x[:60], y[:60]))
    with pytest.raises(KeyboardInterrupt):
        trainer("crash", small_cnn(), callbacks=[StopAt(crash_step)]).fit((x, y), (x[:60], y[:60]))
    trainer("crash", small_cnn(seed=123)).fit((x, y), (x[:60], y[:60]), resume=True)

    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "crash" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"}  # noqa: E731
                       for l in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "crash" / "metrics.jsonl")


def test_train_with_augmentation_from_a_config(tmp_path):
    import deepworks

    def train(name, augment):
        return deepworks.train({"data": {"dataset": "digits", "augment": augment}, "model": {"name": "cnn", "filters": [8]},
                                "train": {"epochs": 4, "progress": "none"}, "report": False}, run_dir=tmp_path / name)

    run = train("run", [{"random_crop": 1}, {"rotate": 10}])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["augment"][1] == {"rotate": {"p": 1.0, "degrees": [-10.0, 10.0], "fill": 0.0}}
    # the baseline, trained side by side: the same run without augmentation (test accuracy about
    # 0.91 against the augmented run's 0.83 after 4 epochs of 8x8 digits, where a shift of one
    # pixel and 10 degrees are a lot). The augmentation reached the training batches (the
    # weights differ), and cost less than 0.15 of accuracy: images and labels still match
    plain = train("plain", [])
    weights, plain_weights = load_file(run.dir / "model.safetensors"), load_file(plain.dir / "model.safetensors")
    assert any(not torch.equal(weights[k], plain_weights[k]) for k in weights)
    assert plain.summary["test"]["accuracy"] > 0.85
    assert run.summary["test"]["accuracy"] > plain.summary["test"]["accuracy"] - 0.15
