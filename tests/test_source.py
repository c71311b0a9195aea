"""Data given in Python (deepworks.train(source=...)): the same figures as the same data read from
files, the run's fingerprint checked when the data is given again, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import deepworks
from deepworks.cli import main
from deepworks.errors import ConfigError, DataError
from deepworks.runs import RunDir

FAST = {"train": {"epochs": 1}, "report": False}


@pytest.fixture(scope="module")
def digits_images(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    """300 digits images as uint8 (N, 8, 8) arrays, ordered by class then position, and the same
    images as a folder of PNGs (class subfolders, files named in the same order)."""
    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:30] for c in range(10)])  # by class, in order
    x, y = d.images[keep].astype(np.uint8), d.target[keep]
    root = tmp_path_factory.mktemp("digits-png")
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{i:04d}.png")
    return x, y, root


@pytest.fixture(scope="module")
def array_runs(digits_images, tmp_path_factory):
    """One run on the arrays, one on the PNG folder, same seed and settings."""
    x, y, root = digits_images
    runs = tmp_path_factory.mktemp("runs")
    given = deepworks.train(source=(x, y), run_dir=runs / "arrays", **FAST)
    files = deepworks.train({"data": {"path": str(root)}, **FAST}, run_dir=runs / "folder")
    return given, files


def test_image_arrays_give_the_figures_of_the_same_images_as_files(array_runs):
    given, files = array_runs
    assert given.summary["test"] == files.summary["test"]
    info = [RunDir(r.dir).read_json(RunDir(r.dir).data) for r in array_runs]
    assert info[0]["split_fingerprint"] == info[1]["split_fingerprint"]
    assert info[0]["sizes"] == info[1]["sizes"] and info[0]["mean"] == pytest.approx(info[1]["mean"])
    assert given.config.data.dataset == "arrays" and len(given.config.data.fingerprint) == 64


def test_a_torch_dataset_of_float_pixels_is_the_same_data(digits_images, array_runs, tmp_path):
    x, y, _ = digits_images
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x).float().div(255).unsqueeze(1), torch.from_numpy(y))
    run = deepworks.train(source=dataset, run_dir=tmp_path / "ds", **FAST)
    assert run.config.data.fingerprint == array_runs[0].config.data.fingerprint
    assert run.summary["test"] == array_runs[0].summary["test"]


def test_predictor_reads_arrays_and_the_folder_runs_files_alike(digits_images, array_runs):
    x, _, root = digits_images
    files = sorted(root.glob("*/*.png"))[:12]
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])
    from_arrays = deepworks.Predictor(array_runs[0].dir).predict_proba(pixels)
    from_files = deepworks.Predictor(array_runs[1].dir).predict_proba([str(f) for f in files])
    np.testing.assert_allclose(from_arrays, from_files, atol=1e-6)


def test_evaluate_and_resume_check_they_are_given_the_same_data(digits_images, array_runs):
    x, y, _ = digits_images
    run_dir = array_runs[0].dir
    report = deepworks.evaluate(run_dir, source=(x, y))
    assert report["accuracy"] == pytest.approx(array_runs[0].summary["test"]["accuracy"])
    with pytest.raises(ConfigError, match=r"trained on data given in Python .*Fix: pass the same data again"):
        deepworks.evaluate(run_dir)
    changed = x.copy()
    changed[0, 0, 0] += 1
    with pytest.raises(DataError, match=r"source=: the data given .* differs from the data .* trained on"):
        deepworks.evaluate(run_dir, source=(changed, y))
    with pytest.raises(DataError, match="differs"):
        deepworks.resume(run_dir, source=(x[::-1], y[::-1]))  # the same images in another order are not the same data
    with pytest.raises(ConfigError, match=r"source=: .* trained on the data its config names"):
        deepworks.evaluate(array_runs[1].dir, source=(x, y))


def test_the_cli_names_the_fix_for_a_run_on_data_given_in_python(array_runs, capsys):
    code = main(["evaluate", str(array_runs[0].dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "trained on data given in Python" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ((np.zeros((5, 8, 8), np.uint8), np.arange(4)), DataError, r"X has 5 samples but y has 4 labels"),
        ((np.zeros((5, 8, 8, 5), np.uint8), np.arange(5)), DataError, r"images must be \(N, H, W\), \(N, C, H, W\)"),
        ((np.full((5, 8, 8), 2.0), np.arange(5)), DataError, r"float pixels must lie in \[0, 1\]"),
        ((np.zeros((5, 8, 8), np.int64) + 300, np.arange(5)), DataError, r"integer pixels must lie in 0\.\.255"),
        ((np.zeros((5, 8, 8), np.uint8), np.zeros((5, 2))), DataError, r"y must hold one label per sample"),
        ("train.csv", DataError, r"expected a pandas DataFrame, arrays \(X, y\) or a torch Dataset"),
    ],
)
def test_bad_sources_are_refused_with_what_to_do(source, error, message):
    with pytest.raises(error, match=message):
        deepworks.train(source=source, **FAST)


def test_data_given_twice_or_columns_without_a_source_are_refused(digits_images):
    x, y, root = digits_images
    with pytest.raises(ConfigError, match=r"data\.path: the data comes from source=, so the config must not name it"):
        deepworks.train({"data": {"path": str(root)}}, source=(x, y))
    with pytest.raises(ConfigError, match=r"train\(target=\.\.\.\) names a column of the data given as source="):
        deepworks.train({"data": {"path": str(root)}}, target="label")
    with pytest.raises(ConfigError, match=r"target: arrays \(X, y\) carry their labels in y"):
        deepworks.train(source=(x, y), target="label")


PENGUINS = Path(__file__).resolve().parents[1] / "examples" / "data" / "penguins.csv"


@pytest.fixture(scope="module")
def penguin_runs(tmp_path_factory):
    import pandas as pd

    runs = tmp_path_factory.mktemp("penguin-runs")
    frame = pd.read_csv(PENGUINS)
    settings = {"train": {"epochs": 2}, "report": False}
    given = deepworks.train(source=frame, target="species", run_dir=runs / "frame", **settings)
    files = deepworks.train({"data": {"path": str(PENGUINS), "target": "species"}, **settings}, run_dir=runs / "csv")
    return frame, given, files


def test_a_dataframe_gives_the_figures_of_the_same_table_as_a_file(penguin_runs):
    frame, given, files = penguin_runs
    assert given.summary["test"] == files.summary["test"]
    assert given.summary["baselines"] == files.summary["baselines"]
    assert given.config.data.dataset == "dataframe" and given.config.data.target == "species"


def test_predictor_on_raw_rows_of_a_dataframe_equals_predict_on_the_csv(penguin_runs):
    frame, given, files = penguin_runs
    rows = frame.drop(columns="species").head(25)
    np.testing.assert_allclose(
        deepworks.Predictor(given.dir).predict_proba(rows),
        deepworks.Predictor(files.dir).predict_proba(str(PENGUINS))[:25], atol=1e-6,
    )
    assert deepworks.evaluate(given.dir, source=frame)["accuracy"] == pytest.approx(given.summary["test"]["accuracy"])


def test_two_d_arrays_are_a_table_of_numeric_columns(tmp_path):
    import pandas as pd

    d = load_digits()
    x, y = d.data[:400], d.target[:400]
    given = deepworks.train(source=(x, y), run_dir=tmp_path / "arrays", **FAST)
    table = pd.DataFrame(x, columns=[f"x{i}" for i in range(64)]).assign(y=y)
    table.to_csv(tmp_path / "digits.csv", index=False)
    files = deepworks.train({"data": {"path": str(tmp_path / "digits.csv"), "target": "y", "task": "classification"},
                             **FAST}, run_dir=tmp_path / "csv")
    assert given.summary["test"] == files.summary["test"]
    assert given.task.record() == files.task.record()


def test_bad_dataframes_are_refused_naming_the_column_and_the_fix():
    import pandas as pd

    frame = pd.read_csv(PENGUINS)
    with pytest.raises(DataError, match=r"source \(DataFrame\): no column 'specie' .*Did you mean 'species'"):
        deepworks.train(source=frame, target="specie")
    with pytest.raises(DataError, match=r"source: the DataFrame is empty"):
        deepworks.train(source=frame.iloc[:0], target="species")


# ----------------------------------------------------------------------------- export


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _same_export(given: dict, files: dict) -> None:
    """The export of a run on data given in Python and of the same run on files: the same graph
    input, preprocessing and parity figures (same model, same validation samples)."""
    assert given["parity"] == files["parity"] and given["parity"]["max_abs_diff"] <= 1e-4
    assert given["input"] == files["input"] and given["preprocessing"] == files["preprocessing"]
    assert given["exporter"] == files["exporter"] and given["classes"] == files["classes"]


def test_an_image_run_on_arrays_exports_as_the_same_images_as_files_do(digits_images, array_runs, tmp_path):
    x, y, _ = digits_images
    given = deepworks.export(array_runs[0].dir, out=tmp_path / "arrays.onnx", source=(x, y))
    files = deepworks.export(array_runs[1].dir, out=tmp_path / "folder.onnx")
    _same_export(given, files)
    # the graph with its sidecar alone: the stored integers times scale, softmax of the logits is predict's
    rows = x[::25]
    pixels = rows[:, None].astype(np.float32) * np.float32(given["preprocessing"]["scale"])
    logits = _session(tmp_path / "arrays.onnx").run(None, {given["input"]["name"]: pixels})[0]
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               deepworks.Predictor(array_runs[0].dir).predict_proba(rows), atol=1e-5)


def test_a_table_run_on_a_dataframe_exports_as_the_same_csv_does(penguin_runs, tmp_path):
    from deepworks.data.features import TableEncoder

    frame, given_run, files_run = penguin_runs
    given = deepworks.export(given_run.dir, out=tmp_path / "frame.onnx", source=frame)
    files = deepworks.export(files_run.dir, out=tmp_path / "csv.onnx")
    _same_export(given, files)
    rows = frame.drop(columns="species").head(25)  # missing values in row 4
    slots = TableEncoder.from_dict(given["preprocessing"]["encoder"]).encode({c: rows[c] for c in rows.columns})
    logits = _session(tmp_path / "frame.onnx").run(None, {given["input"]["name"]: slots})[0]
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               deepworks.Predictor(given_run.dir).predict_proba(rows), atol=1e-5)


def test_export_is_given_the_same_data_or_refuses(digits_images, array_runs, tmp_path):
    x, y, _ = digits_images
    run_dir = array_runs[0].dir
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=r"trained on data given in Python .*Fix: pass the same data again "
                                          r"\(deepworks\.export\(run, source=\.\.\.\)\)") as caught:
        deepworks.export(run_dir, out=out)
    assert "\n" not in str(caught.value)
    changed = x.copy()
    changed[3, 4, 4] += 1
    with pytest.raises(DataError, match=r"source=: the data given .* differs from the data .* trained on"):
        deepworks.export(run_dir, out=out, source=(changed, y))
    with pytest.raises(ConfigError, match=r"source=: .* trained on the data its config names"):
        deepworks.export(array_runs[1].dir, out=out, source=(x, y))
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_the_cli_refuses_to_export_a_run_on_data_given_in_python(array_runs, penguin_runs, capsys):
    for run in (array_runs[0], penguin_runs[1]):
        code = main(["export", str(run.dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "the run was trained on data given in Python" in err
        assert f"deepworks.export({str(run.dir)!r}, source=...)" in err
        assert not (run.dir / "model.onnx").exists()
    # serving from ONNX exports first: refused alike, before a server starts
    code = main(["serve", str(array_runs[0].dir), "--backend", "onnx", "--port", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "then serve it with --backend onnx" in err, err
