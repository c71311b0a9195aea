"""Built-in datasets, the Fashion-MNIST file search and download path, and image-folder datasets."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepworks.data.datasets as datasets_module
from deepworks.data import DATASETS, ImageDataset, list_datasets, load_dataset, read_idx
from deepworks.data.datasets import FASHION_MNIST_CLASSES, data_cache_dir
from deepworks.errors import ConfigError, DataError, UnknownNameError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_GZ = [
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
]
needs_debian = pytest.mark.skipif(
    not all((DEBIAN / f).is_file() for f in FASHION_GZ),
    reason=f"Fashion-MNIST is not installed in {DEBIAN} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture
def no_local_fashion(tmp_path, monkeypatch):
    """Hide the Debian copy and point the cache at an empty folder, so only `root` or the network can serve."""
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("DEEPWORKS_DATA", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- digits, registry, listing


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.uint8  # 4x smaller than float32
    assert ds.y.shape == (1797,) and ds.y.dtype == torch.int64
    assert ds.scale == 1 / 16 and int(ds.x.max()) == 16  # x * scale in [0, 1], exactly scikit-learn's values / 16
    assert np.array_equal(ds.x.reshape(1797, 64).numpy(), load_digits().data.astype(np.uint8))
    assert ds.classes == [str(i) for i in range(10)] and set(ds.y.tolist()) == set(range(10))
    assert ds.input_shape == (1, 8, 8) and ds.test_x is None and ds.source


def test_builtin_resize_and_channels():
    ds = load_dataset("digits", image_size=16, channels=3)
    assert ds.x.shape == (1797, 3, 16, 16) and ds.x.dtype == torch.uint8
    assert ds.scale == 1 / 255  # resized pixels are stored on the 8-bit scale
    assert torch.equal(ds.x[:, 0], ds.x[:, 2])
    # the resize matches torch's antialiased bilinear interpolation of the [0, 1] images, to one 8-bit step
    plain = load_dataset("digits")
    ref = torch.nn.functional.interpolate(plain.x.float() / 16, size=(16, 16), mode="bilinear", antialias=True)
    assert (ds.x[:, :1].float() / 255 - ref).abs().max() <= 1.5 / 255


def test_registry_names_and_unknown_name():
    assert set(DATASETS.names()) == {"arrays", "co2", "csv", "digits", "fashion-mnist", "folder", "image-list", "rotten-tomatoes"}
    with pytest.raises(UnknownNameError, match="data.dataset: unknown dataset 'digit'.*'digits'"):
        load_dataset("digit")


def test_load_dataset_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset: digits"):
        load_dataset()
    with pytest.raises(ConfigError, match="remove one of the two"):
        load_dataset("digits", path=tmp_path)
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset("folder")
    with pytest.raises(ConfigError, match="on_bad_file"):
        load_dataset("digits", on_bad_file="skip")
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=(8, -1))
    with pytest.raises(ConfigError, match="channels"):
        load_dataset("digits", channels=4)


def test_list_datasets_loads_nothing(monkeypatch, tmp_path):
    import sklearn.datasets

    def boom(*a, **k):
        raise AssertionError("list_datasets must not load data")

    monkeypatch.setattr(sklearn.datasets, "load_digits", boom)
    monkeypatch.setattr(datasets_module, "_fashion_from_idx", boom)
    monkeypatch.setattr(datasets_module, "_fashion_download", boom)
    import deepworks.data.text as text_module

    monkeypatch.setattr(text_module, "load_rotten_tomatoes", boom)
    rows = {r["name"]: r for r in list_datasets()}
    assert set(rows) == {"digits", "fashion-mnist", "co2", "rotten-tomatoes"}  # the folder loader is not a dataset by itself
    assert rows["digits"] | {"description": ""} == {
        "name": "digits", "description": "", "classes": 10, "input_shape": (1, 8, 8), "size": 1797,
        "official_test": False,
    }
    fm = rows["fashion-mnist"]
    assert (fm["classes"], fm["input_shape"], fm["size"], fm["official_test"]) == (10, (1, 28, 28), 70000, True)
    assert all(r["description"] for r in rows.values())
    rt = rows["rotten-tomatoes"]  # text: the input is token ids of data.max_length, not a fixed shape
    assert (rt["classes"], rt["input"], rt["size"], rt["official_test"]) == (2, "text", 12808, False)


def test_image_dataset_validates_itself():
    with pytest.raises(DataError, match="uint8 images.*to\\(torch.uint8\\)"):
        ImageDataset("toy", torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        ImageDataset("toy", x, torch.tensor([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(DataError, match="4 images but 3 labels"):
        ImageDataset("toy", x, torch.tensor([0, 1, 0]), ["a", "b"])
    with pytest.raises(DataError, match="together"):
        ImageDataset("toy", x, torch.tensor([0, 1, 0, 1]), ["a", "b"], test_x=x)


# ----------------------------------------------------------------------------- idx files


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> Path:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_tiny_fashion(folder: Path, compress: bool, n_train: int = 20, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)


def test_read_idx_roundtrip_and_corruption(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for compress in (False, True):
        p = write_idx(tmp_path / f"ok{compress}", arr, compress)
        assert np.array_equal(read_idx(p, ndim=3), arr)
    raw = (tmp_path / "okFalse").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(tmp_path / "short")
    assert str(tmp_path / "short") in str(err.value)
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "magic")
    with pytest.raises(DataError, match="1 dimension.*says 3"):
        read_idx(tmp_path / "okFalse", ndim=1)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_root_layouts_come_first(tmp_path, no_local_fashion):
    flat = tmp_path / "flat"
    write_tiny_fashion(flat, compress=True)
    ds = load_dataset("fashion-mnist", root=flat)
    assert ds.x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.source == str(flat) and ds.classes == FASHION_MNIST_CLASSES
    assert ds.y.tolist() == [i % 10 for i in range(20)]

    tv = tmp_path / "tv"
    write_tiny_fashion(tv / "FashionMNIST" / "raw", compress=False, n_train=30)
    ds = load_dataset("fashion-mnist", root=tv)
    assert ds.x.shape == (30, 1, 28, 28) and ds.source == str(tv / "FashionMNIST" / "raw")


def test_fashion_cache_dir_is_searched(tmp_path, no_local_fashion):
    assert data_cache_dir() == tmp_path / "cache"
    write_tiny_fashion(tmp_path / "cache" / "FashionMNIST" / "raw", compress=True)
    assert load_dataset("fashion-mnist").source == str(tmp_path / "cache" / "FashionMNIST" / "raw")


def test_fashion_corrupt_file_names_it(tmp_path, no_local_fashion):
    write_tiny_fashion(tmp_path / "r", compress=False)
    labels = tmp_path / "r" / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("fashion-mnist", root=tmp_path / "r")
    assert str(labels) in str(err.value)


@needs_debian
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64 and ds.scale == 1 / 255
    assert int(ds.x.min()) == 0 and int(ds.x.max()) == 255
    raw = read_idx(DEBIAN / "train-images-idx3-ubyte.gz")  # the stored bytes, unchanged
    assert np.array_equal(ds.x[:, 0].numpy(), raw)
    assert np.array_equal(np.bincount(ds.y.numpy()), [6000] * 10)
    assert np.array_equal(np.bincount(ds.test_y.numpy()), [1000] * 10)
    assert ds.classes == FASHION_MNIST_CLASSES and ds.input_shape == (1, 28, 28)
    assert "fashion-mnist" in ds.source


@pytest.fixture
def local_mirror(tmp_path):
    """Serve the Debian .gz files over HTTP on localhost, as the Fashion-MNIST mirror would."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in FASHION_GZ:
        shutil.copy(DEBIAN / name, mirror / name)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mirror)))
    server.handle_error = lambda *args: None  # a client closing early is not a test failure
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield mirror, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@needs_debian
def test_fashion_download_goes_through_torchvision(tmp_path, no_local_fashion, local_mirror, monkeypatch):
    from torchvision.datasets import FashionMNIST

    mirror, url = local_mirror
    # the Debian files are recompressed, so their checksums differ from torchvision's: use theirs
    resources = [(name, hashlib.md5((mirror / name).read_bytes()).hexdigest()) for name, _ in FashionMNIST.resources]
    monkeypatch.setattr(FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    root = tmp_path / "root"
    ds = load_dataset("fashion-mnist", root=root)
    assert "torchvision" in ds.source
    assert ds.x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.array_equal(np.bincount(ds.y.numpy()), [6000] * 10)
    raw = root / "FashionMNIST" / "raw"
    assert all((raw / name.removesuffix(".gz")).is_file() for name in FASHION_GZ)
    # the next load reads the downloaded files directly, and they agree with torchvision's reading
    again = load_dataset("fashion-mnist", root=root)
    assert again.source == str(raw)
    assert torch.equal(again.x, ds.x) and torch.equal(again.test_y, ds.test_y)


def test_fashion_offline_gives_a_clear_error(tmp_path, no_local_fashion, monkeypatch):
    from torchvision.datasets import FashionMNIST

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network is unreachable")

    monkeypatch.setattr(FashionMNIST, "download", offline)
    root = tmp_path / "empty-root"
    root.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", root=root)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message
    assert str(root) in message and str(tmp_path / "cache") in message and "network is unreachable" in message


# ----------------------------------------------------------------------------- image folders


def save(path: Path, mode: str, size: tuple[int, int], value: int = 90) -> None:
    """``size`` is (W, H), as PIL takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value)).save(path)


def test_folder_mixed_modes_gives_rgb(tmp_path):
    save(tmp_path / "cat" / "a.png", "L", (5, 4))
    save(tmp_path / "cat" / "b.png", "RGB", (5, 4))
    save(tmp_path / "dog" / "c.png", "L", (5, 4))
    ds = load_dataset(path=tmp_path)
    assert ds.name == "folder" and ds.classes == ["cat", "dog"]
    assert ds.x.shape == (3, 3, 4, 5) and ds.x.dtype == torch.uint8 and ds.y.tolist() == [0, 0, 1]
    assert torch.equal(ds.x[0], torch.full((3, 4, 5), 90, dtype=torch.uint8))  # gray replicated to 3 channels
    assert ds.source == str(tmp_path.resolve())


def test_folder_all_grayscale_gives_one_channel(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            save(tmp_path / cls / f"{i}.png", "L", (3, 3))
    ds = load_dataset("folder", path=tmp_path)
    assert ds.x.shape == (4, 1, 3, 3)
    assert load_dataset(path=tmp_path, channels=3).x.shape == (4, 3, 3, 3)


def test_folder_mixed_sizes_use_the_most_common(tmp_path):
    save(tmp_path / "a" / "0.png", "RGB", (10, 6))
    save(tmp_path / "a" / "1.png", "RGB", (10, 6))
    save(tmp_path / "b" / "0.png", "RGB", (10, 6))
    save(tmp_path / "b" / "1.png", "RGB", (4, 4))
    ds = load_dataset(path=tmp_path)
    assert ds.x.shape == (4, 3, 6, 10)  # (W, H) = (10, 6) is the common size
    assert load_dataset(path=tmp_path, image_size=8).x.shape == (4, 3, 8, 8)
    assert load_dataset(path=tmp_path, image_size=(5, 7)).x.shape == (4, 3, 5, 7)


def test_folder_bad_files(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            save(tmp_path / cls / f"{i}.png", "L", (4, 4))
    empty = tmp_path / "a" / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "b" / "junk.png"
    junk.write_bytes(b"GIF89a but not really")
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(path=tmp_path, on_bad_file="warn")
    message = " ".join(str(r.message) for r in record)
    assert str(empty) in message and str(junk) in message
    assert len(ds.y) == 6
    with pytest.raises(DataError) as err:
        load_dataset(path=tmp_path, on_bad_file="error")
    assert str(empty) in str(err.value) and str(junk) in str(err.value)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(path=tmp_path / "missing")
    save(tmp_path / "only" / "x.png", "L", (2, 2))
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(path=tmp_path)
