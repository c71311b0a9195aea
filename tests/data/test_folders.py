"""Image folders of any size: uint8 pixels, the memory budget, streaming from disk with the
in-memory path's guarantees (same batches, bitwise resume, shards), and files that change
during training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

import deepworks
from deepworks.config import load_config
from deepworks.data import FolderStream, ImageDataset, ImageSpec, StreamedImages, TensorData, ToInput, load_dataset
from deepworks.data.folders import pixel_stats, plan_folder
from deepworks.data.images import decode_image, load_pixels, resize_pixels
from deepworks.data.loaders import iterate_batches
from deepworks.errors import ConfigError, DataError
from deepworks.pipeline import prepare_data
from deepworks.training import Callback

ROOT = Path(__file__).resolve().parents[2]


def photo_folder(root: Path, per_class: int = 24, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """Two classes of smooth, distinct RGB pictures (W, H = ``size``), JPEG and PNG mixed."""
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            small[..., label] = 200 + label * 40  # a class signal a tiny CNN can find
            img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
            img.save(root / cls / (f"{i:03d}.jpg" if i % 3 else f"{i:03d}.png"))
    return root


def config(folder: Path, **data) -> dict:
    return {
        "data": {"path": str(folder), **data},
        "model": {"name": "cnn", "filters": [4, 8]},
        "train": {"epochs": 2, "batch_size": 8, "progress": "none", "num_workers": 2},
    }


# ----------------------------------------------------------------------------- pixels


def test_jpeg_pixels_match_pillow_and_are_upright(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((200, 150)))
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    x = decode_image(tmp_path / "a.jpg")  # torchvision's libjpeg-turbo decoder
    assert x.dtype == torch.uint8 and x.shape == (3, 150, 200)
    assert np.array_equal(x.permute(1, 2, 0).numpy(), np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")))

    exif = Image.Exif()
    exif[0x0112] = 6  # a portrait phone photo stored sideways
    Image.fromarray(arr).save(tmp_path / "phone.jpg", exif=exif)
    turned = decode_image(tmp_path / "phone.jpg")
    assert turned.shape == (3, 200, 150)
    with Image.open(tmp_path / "phone.jpg") as img:  # the oracle: Pillow's EXIF transpose of the same file
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert np.array_equal(turned.permute(1, 2, 0).numpy(), upright)  # turned clockwise, not mirrored or back
    assert plan_folder_size(tmp_path / "phone.jpg") == (200, 150)  # the header probe turns it too

    Image.new("CMYK", (4, 4), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    assert decode_image(tmp_path / "cmyk.jpg").shape == (3, 4, 4)

    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot be decoded"):
        decode_image(tmp_path / "cut.jpg")


def plan_folder_size(path: Path) -> tuple[int, int]:
    from deepworks.data.images import probe_image

    return probe_image(path).size


def test_crop_resize_keeps_the_aspect_and_takes_the_centre(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # H 200, W 300
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = load_pixels(tmp_path / "wide.png", ImageSpec(3, (100, 100), "crop"))
    # oracle: Pillow scales the shorter side to 100 (300x200 -> 150x100), then the centre 100x100
    ref = np.asarray(Image.fromarray(arr).resize((150, 100), Image.Resampling.BILINEAR))[:, 25:125]
    assert x.shape == (3, 100, 100)
    assert np.abs(x.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1
    squash = load_pixels(tmp_path / "wide.png", ImageSpec(3, (100, 100), "squash"))
    ref = np.asarray(Image.fromarray(arr).resize((100, 100), Image.Resampling.BILINEAR))
    assert np.abs(squash.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1


def test_tiny_sizes_resize_too():
    x = torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8)
    assert resize_pixels(x, (1, 1)).shape == (3, 1, 1)  # torchvision's uint8 kernel refuses this one


def test_to_input_equals_normalising_floats():
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = [0.2, 0.5, 0.7], [0.1, 0.3, 0.25]
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    out = ToInput(1 / 255, mean, std)(x)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.equal(ToInput(1 / 255, mean, std)(x[0]), out[0])  # one image (C, H, W), as predict passes it


def test_pixel_stats_are_the_exact_mean_and_std():
    x = torch.randint(0, 256, (50, 3, 7, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    from deepworks.data.folders import pixel_sums

    mean, std = pixel_stats(*pixel_sums(x), 35, 1 / 255)
    arr = x.double().numpy() / 255
    assert np.allclose(mean, arr.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert np.allclose(std, arr.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- size and budget


def test_photos_train_at_224_by_default_and_the_log_says_so(tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos", per_class=3, size=(600, 400))
    plan = plan_folder(folder)
    assert plan.spec == ImageSpec(3, (224, 224), "crop")
    assert "data.image_size" in plan.note and "400x600" in plan.note
    small = photo_folder(tmp_path / "small", per_class=3, size=(40, 30))
    assert plan_folder(small).spec == ImageSpec(3, (30, 40), "squash")  # small images keep their size
    assert plan_folder(folder, image_size=(64, 96)).spec == ImageSpec(3, (64, 96), "squash")
    ds = load_dataset(path=folder)
    assert "training at 224x224" in capsys.readouterr().out
    assert ds.x.shape == (6, 3, 224, 224) and ds.x.dtype == torch.uint8


def test_the_budget_switches_to_streaming(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=6)
    fits = load_dataset(path=folder)
    assert isinstance(fits, ImageDataset) and fits.loading["path"] == "memory"
    assert fits.loading["estimate_bytes"] == 12 * 3 * 240 * 320
    streamed = load_dataset(path=folder, memory_budget="100KB")
    assert isinstance(streamed, FolderStream) and streamed.loading["path"] == "stream"
    assert streamed.loading["budget_bytes"] == 100_000
    # same files, digests and sums: the scan of a streamed folder sees the in-memory pixels
    assert np.array_equal(streamed.sample_hashes(), fits.sample_hashes())
    assert all(torch.equal(a, b) for a, b in zip(streamed.pixel_sums(), fits.pixel_sums()))
    with pytest.raises(DataError, match=r"data.in_memory: true, but .*need 2.8 MB as uint8 \+ .* to decode them .*, "
                       r"over data.memory_budget 100.0 KB\. Fix: .*data.in_memory: auto"):
        load_dataset(path=folder, in_memory=True, memory_budget="100KB")
    assert isinstance(load_dataset(path=folder, in_memory=False), FolderStream)


def test_folder_with_no_readable_image(tmp_path):
    folder = tmp_path / "junk"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "x.png").write_text("not an image")
    with pytest.raises(DataError, match="none of its 2 image file"):
        load_dataset(path=folder)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config(folder)))
    proc = subprocess.run([sys.executable, "-m", "deepworks", "train", str(cfg), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(folder) in proc.stderr and "none of its" in proc.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.image_size=0", "data.image_size"),
        ("data.image_size=-5", "or [height, width]"),  # printed as text: rich would take [height, width] for markup
        ("data.image_size=[224,-3]", "data.image_size"),
        ("data.memory_budget=lots", "data.memory_budget"),
        ("data.in_memory=true", "data.in_memory: true, but"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, override, needle):
    folder = photo_folder(tmp_path / "photos", per_class=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config(folder, memory_budget="10KB")))
    proc = subprocess.run(
        [sys.executable, "-m", "deepworks", "train", str(cfg), "--set", override, "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if needle in line]) == 1


# ----------------------------------------------------------------------------- the two paths agree


def _batches(data, epoch, **kw):
    return [(x.clone(), y.clone()) for x, y in iterate_batches(data, 8, shuffle=True, seed=3, epoch=epoch, **kw)]


def test_both_paths_give_the_same_batches(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    memory = prepare_data(load_config(config(folder, in_memory=True)))
    stream = prepare_data(load_config(config(folder, in_memory=False)))
    assert isinstance(memory.train, TensorData) and isinstance(stream.train, StreamedImages)
    assert memory.train.x.dtype == torch.uint8  # 4x smaller than float32
    for key in ("mean", "std", "split_fingerprint", "sizes", "image"):
        assert memory.info[key] == stream.info[key], key
    for epoch in (1, 2):
        a, b = _batches(memory.train, epoch), _batches(stream.train, epoch, num_workers=2)
        assert len(a) == len(b) == -(-len(memory.train) // 8)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_batches(memory.train, 1)[0][0], _batches(memory.train, 2)[0][0])  # reshuffled
    for split in ("val", "test"):
        a = list(iterate_batches(getattr(memory, split), 4, shuffle=False))
        b = list(iterate_batches(getattr(stream, split), 4, shuffle=False, num_workers=0))
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert torch.equal(memory.val.inputs(), stream.val.inputs())


def test_each_process_streams_only_its_shard(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos", per_class=10)
    data = prepare_data(load_config(config(folder, in_memory=False))).train
    read: list[int] = []
    original = data.source.batches

    def spy(index_batches, device, num_workers):
        read.extend(i for batch in index_batches for i in batch)
        return original(index_batches, device, num_workers)

    monkeypatch.setattr(data.source, "batches", spy)
    shards = []
    for rank in (0, 1):
        read.clear()
        list(iterate_batches(data, 4, shuffle=True, seed=0, epoch=1, rank=rank, world_size=2, num_workers=0))
        shards.append(set(read))
    assert not shards[0] & shards[1]
    assert len(shards[0]) == len(shards[1]) == len(data) // 2
    assert shards[0] | shards[1] <= set(data.indices.tolist())


# ----------------------------------------------------------------------------- files that change during training


class ChangeFiles(Callback):
    """At the end of epoch 1, truncate one training file and delete another."""

    def __init__(self, files: list[Path]):
        self.files = files

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1:
            cut, gone = self.files
            cut.write_bytes(cut.read_bytes()[:100])
            gone.unlink()


def test_files_removed_or_truncated_during_training_are_skipped_and_counted(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=12)
    cfg = load_config(config(folder, in_memory=False))
    train = prepare_data(cfg).train
    targets = [train.source.paths[i] for i in train.indices[:2]]
    with pytest.warns(UserWarning, match="could not be decoded during training") as record:
        run = deepworks.train(cfg, run_dir=tmp_path / "run", callbacks=[ChangeFiles(targets)])
    warned = " ".join(str(r.message) for r in record)
    assert all(str(p) in warned for p in targets)
    skipped = run.summary["data"]["skipped_files"]
    assert skipped["count"] == 2 and {f["file"] for f in skipped["files"]} == {str(p) for p in targets}
    assert run.summary["epochs_run"] == 2 and run.summary["data"]["loading"]["path"] == "stream"
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["data"]["skipped_files"]["count"] == 2


# ----------------------------------------------------------------------------- resume and predict


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "deepworks", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_streamed_run_killed_mid_epoch_resumes_bitwise(tmp_path, paused_mid_epoch):
    folder = photo_folder(tmp_path / "photos", per_class=24)
    cfg = tmp_path / "c.yaml"
    raw = config(folder, in_memory=False)
    raw["train"].update(epochs=3, batch_size=4, checkpoint_every_steps=3, progress="log")
    cfg.write_text(json.dumps(raw))
    full = _cli("train", cfg, "--run-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = paused_mid_epoch(cfg, killed, start_new_session=True)  # mid-epoch 2, past an in-epoch checkpoint
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its decoding workers
    proc.wait()
    assert not (killed / "summary.json").exists()
    resumed = _cli("train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "full", killed))
    assert sa["test"] == sb["test"] and sb["data"]["loading"]["path"] == "stream"


def test_predict_applies_the_training_resize_to_any_photo(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=6, size=(600, 400))
    run = deepworks.train(config(folder), run_dir=tmp_path / "run", train__epochs=1)
    info = json.loads((run.dir / "data.json").read_text())
    assert info["image"] == {"channels": 3, "size": [224, 224], "resize": "crop"}
    assert info["pixels"] == {"dtype": "uint8", "scale": 1 / 255}
    big = tmp_path / "big.jpg"  # another size and aspect than the training photos
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 20, 3), dtype=np.uint8)).resize((900, 1300)).save(big)
    out = deepworks.predict(run.dir, [big], top_k=2)
    assert sorted(r["class"] for r in out[0]["top_k"]) == ["cat", "dog"]
    # the same numbers as the model on the pixels training would have made of that file
    x = ToInput(1 / 255, info["mean"], info["std"])(load_pixels(big, ImageSpec(3, (224, 224), "crop"))[None])
    with torch.no_grad():
        probs = torch.softmax(run.model.eval()(x).float(), dim=1)[0]
    assert abs(out[0]["top_k"][0]["probability"] - float(probs.max())) < 1e-5


# ----------------------------------------------------------------------------- the photo folder of the issue

CHILD = """
import json, resource, sys
import deepworks
run = deepworks.train(sys.argv[1], run_dir=sys.argv[2])
out = deepworks.predict(run.dir, [sys.argv[3]], top_k=1)
print(json.dumps({
    "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "prediction": out[0]["top_k"][0]["class"],
    "loading": run.summary["data"]["loading"],
}))
"""


def _write_photo(args: tuple[Path, int, int]) -> None:
    path, label, seed = args
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    small[..., label] = 220
    Image.fromarray(small).resize((3000, 2000), Image.Resampling.BILINEAR).save(path, quality=85)


def test_a_folder_of_400_camera_photos_trains_under_3_gb(tmp_path):
    """400 JPEGs of 3000x2000 (the issue's folder): one epoch at the default size, peak RSS
    under 3 GB measured by getrusage in a child process, then predict on one of the photos."""
    from multiprocessing import get_context

    folder = tmp_path / "photos"
    jobs = []
    for label, cls in enumerate(("cat", "dog")):
        (folder / cls).mkdir(parents=True)
        jobs += [(folder / cls / f"IMG_{i:04d}.jpg", label, 1000 * label + i) for i in range(200)]
    with get_context("fork").Pool(2) as pool:
        pool.map(_write_photo, jobs, chunksize=10)
    cfg = tmp_path / "photos.yaml"
    cfg.write_text(json.dumps({
        "data": {"path": str(folder)},
        "model": {"name": "cnn", "filters": [8, 16]},
        "train": {"epochs": 1, "batch_size": 32, "progress": "none"},
    }))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(cfg), str(tmp_path / "run"), str(jobs[0][0])],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training at 224x224" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gb = max(result["self_kb"], result["children_kb"]) / 1024**2
    print(f"peak RSS: trainer {result['self_kb'] / 1024**2:.2f} GB, decoding workers {result['children_kb'] / 1024**2:.2f} GB")
    assert peak_gb < 3.0, result
    assert result["prediction"] in ("cat", "dog")
    assert result["loading"]["estimate_bytes"] == 400 * 3 * 224 * 224
