"""read_image conversions and scan_image_folder's checks, on small files made with PIL."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from deepworks.data import read_image, scan_image_folder
from deepworks.errors import ConfigError, DataError


def save(path: Path, mode: str = "RGB", size: tuple[int, int] = (6, 4), color=None, fmt: str | None = None) -> Path:
    """Write a small image; ``size`` is PIL's (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        color = 128 if mode == "L" else (10, 20, 30)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def make_folder(root: Path, spec: dict[str, int], mode: str = "RGB") -> Path:
    for cls, count in spec.items():
        for i in range(count):
            save(root / cls / f"{i}.png", mode)
    return root


# ----------------------------------------------------------------------------- read_image


def test_rgba_becomes_rgb_over_white(tmp_path):
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red: shows the white background
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    img.save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (3, 1, 2) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.ones(3))
    assert torch.allclose(x[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_grayscale_stays_one_channel_with_exact_values(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 4)
    assert torch.allclose(x[0], torch.from_numpy(arr.astype(np.float32) / 255))


def test_channel_conversion(tmp_path):
    save(tmp_path / "g.png", "L", color=100)
    three = read_image(tmp_path / "g.png", channels=3)
    assert three.shape == (3, 4, 6) and torch.allclose(three, torch.full_like(three, 100 / 255))
    save(tmp_path / "c.png", "RGB", color=(200, 100, 50))
    gray = read_image(tmp_path / "c.png", channels=1)
    luma = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=np.float32) / 255  # PIL's oracle
    assert gray.shape == (1, 4, 6) and np.allclose(gray[0].numpy(), luma)


def test_resize_matches_pil_bilinear(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "r.png")
    x = read_image(tmp_path / "r.png", size=(5, 7))
    assert x.shape == (3, 5, 7)
    expect = np.asarray(Image.fromarray(arr).resize((7, 5), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    # torchvision's uint8 kernels round like Pillow's: at most one 8-bit step apart
    assert np.abs(x.permute(1, 2, 0).numpy() - expect).max() <= 1 / 255 + 1e-6


def test_palette_16bit_and_jpeg(tmp_path):
    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.gif")
    x = read_image(tmp_path / "p.gif")
    assert x.shape == (3, 2, 3) and torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))

    deep = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")  # 16-bit grayscale PNG: scaled to 8 bits
    x = read_image(tmp_path / "d.png")
    assert x.shape == (1, 1, 3)
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 128 / 255, 1.0]), atol=1e-6)

    save(tmp_path / "j.jpg", "RGB", color=(250, 10, 10), fmt="JPEG")
    x = read_image(tmp_path / "j.jpg")
    assert x.shape == (3, 4, 6) and x.min() >= 0 and x.max() <= 1 and x[0].mean() > 0.9


def marked(size=(24, 16)) -> Image.Image:
    """A dark image (PIL's (W, H)) with a bright block in its stored top-left corner, so a turn
    in the wrong direction, or a mirror, moves the block somewhere else."""
    img = Image.new("RGB", size, (0, 40, 0))
    img.paste((250, 250, 250), (0, 0, 8, 8))
    return img


@pytest.mark.parametrize("suffix", ["jpg", "png"])  # torchvision's JPEG decoder, and Pillow
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotation_is_applied(tmp_path, orientation, suffix):
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: "rotate 90 CW to view", a portrait phone photo
    path = tmp_path / f"phone.{suffix}"
    marked().save(path, exif=exif, quality=95)
    x = read_image(path)
    # the oracle: Pillow's own EXIF transpose of the same file
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32) / 255
    assert x.shape == (3, *upright.shape[:2])
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), upright, atol=1e-6)
    if orientation == 6:  # by hand: turned clockwise, the stored top-left corner is now top-right
        assert x.shape == (3, 24, 16)
        assert x[:, :8, -8:].mean() > 0.9 and x[:, -8:, :8].mean() < 0.2 and x[:, :8, :8].mean() < 0.2


def test_unreadable_files_raise_data_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="no such image file") as err:
        read_image(missing)
    assert str(missing) in str(err.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty") as err:
        read_image(tmp_path / "empty.png")
    assert str(tmp_path / "empty.png") in str(err.value)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot be decoded.*remove the file") as err:
        read_image(tmp_path / "text.png")
    assert str(tmp_path / "text.png") in str(err.value)
    good = save(tmp_path / "cut.png", "RGB", size=(64, 64))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match="cut.png"):
        read_image(good)


def test_read_image_argument_errors(tmp_path):
    save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="channels"):
        read_image(tmp_path / "a.png", channels=2)
    with pytest.raises(ConfigError, match="height, width"):
        read_image(tmp_path / "a.png", size=(0, 4))


# ----------------------------------------------------------------------------- scan_image_folder


def test_scan_finds_classes_and_images(tmp_path):
    root = make_folder(tmp_path / "data", {"dog": 2, "cat": 3})
    save(root / "cat" / "upper.PNG")
    save(root / "dog" / "nested" / "x.JpEg", fmt="JPEG")
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    (root / "dog" / ".hidden.png").write_bytes(b"")  # hidden files are not data
    good, classes, bad = scan_image_folder(root)
    assert classes == ["cat", "dog"] and bad == []
    labels = [label for _, label in good]
    assert labels.count(0) == 4 and labels.count(1) == 3
    assert {p.name for p, _ in good} >= {"upper.PNG", "x.JpEg"}


def add_bad_files(root: Path) -> tuple[Path, Path]:
    empty = root / "cat" / "empty.png"
    empty.write_bytes(b"")
    junk = root / "dog" / "junk.png"
    junk.write_text("this is not a png")
    return empty, junk


def test_bad_files_warn_names_both_and_skips(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 2})
    empty, junk = add_bad_files(root)
    with pytest.warns(UserWarning) as record:
        good, classes, bad = scan_image_folder(root, on_bad_file="warn")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(empty) in message and str(junk) in message and "2 unreadable" in message
    assert len(good) == 5 and {p for p, _ in bad} == {empty, junk}


def test_bad_files_error_names_both(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 2})
    empty, junk = add_bad_files(root)
    with pytest.raises(DataError) as err:
        scan_image_folder(root, on_bad_file="error")
    message = str(err.value)
    assert str(empty) in message and str(junk) in message and "data.on_bad_file: warn" in message


def test_scan_without_bad_files_does_not_warn(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_image_folder(root)


def test_invalid_on_bad_file_is_a_config_error(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    with pytest.raises(ConfigError, match="on_bad_file"):
        scan_image_folder(root, on_bad_file="ignore")


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        scan_image_folder(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)

    flat = tmp_path / "flat"
    save(flat / "a.png")
    with pytest.raises(DataError, match="no class subfolders.*1 image file"):
        scan_image_folder(flat)

    single = make_folder(tmp_path / "single", {"cat": 3})
    with pytest.raises(DataError, match="at least 2") as err:
        scan_image_folder(single)
    assert str(single) in str(err.value) and "cat" in str(err.value)

    hollow = make_folder(tmp_path / "hollow", {"cat": 2})
    (hollow / "dog").mkdir()
    (hollow / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files") as err:
        scan_image_folder(hollow)
    assert str(hollow / "dog") in str(err.value)


def test_class_left_empty_by_bad_files(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 2})
    (root / "dog").mkdir()
    (root / "dog" / "broken.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="broken.png"), pytest.raises(DataError, match="no readable images"):
        scan_image_folder(root)
