"""DataFrames of texts and of a series given in Python (deepworks.train(source=df, text=/time=)):
the oracle is the same frame written with ``df.to_csv`` and trained from the file with the same
config and seed, which must give the same split, figures and model; evaluate and resume check the
data's fingerprint; a run's Predictor reads DataFrames as the file run reads the CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import deepworks
from deepworks.errors import ConfigError, DataError
from deepworks.runs import RunDir

WORDS = ["the", "film", "plot", "was", "quite", "acting", "and", "a", "story", "cast", "ending", "music"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny recurrent steps run fastest on one thread (as in test_forecasting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reviews(n: int = 160, seed: int = 0) -> pd.DataFrame:
    """Filler words and one of "good"/"bad", which decides the label (0/1 integers, so the frame has a
    text and a number column); a tenth of the labels flipped. Some texts carry surrounding spaces,
    which both readers strip, and one is missing (an empty text)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if i % 2 else "bad")
        texts.append(("  " if i % 7 == 0 else "") + " ".join(words))
        labels.append(int(i % 2) ^ int(rng.random() < 0.1))
    texts[5] = None
    return pd.DataFrame({"review": texts, "label": labels})


TEXT = {
    "data": {"min_freq": 1, "max_length": 10},
    "model": {"name": "lstm", "embedding": 8, "hidden": 8, "pool": "max"},
    "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.02}, "progress": "none"},
    "seed": 0, "report": False,
}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """(the frame, its CSV, the run on the frame, the run on the CSV)."""
    root = tmp_path_factory.mktemp("text-source")
    frame = reviews()
    csv = root / "reviews.csv"
    frame.to_csv(csv, index=False)
    given = deepworks.train(TEXT, source=frame, text="review", target="label", run_dir=root / "frame")
    data = {**TEXT["data"], "path": str(csv), "text": "review", "target": "label"}
    files = deepworks.train({**TEXT, "data": data}, run_dir=root / "csv")
    return frame, csv, given, files


def _info(run) -> dict:
    return RunDir(run.dir).read_json(RunDir(run.dir).data)


def test_a_dataframe_of_texts_gives_the_figures_of_the_same_csv(text_runs):
    _, _, given, files = text_runs
    assert given.summary["test"] == files.summary["test"]
    assert given.summary["baselines"] == files.summary["baselines"]
    assert given.summary["test"]["accuracy"] > 0.6  # the network learned the word that decides the label
    a, b = _info(given), _info(files)
    assert a["split_fingerprint"] == b["split_fingerprint"]  # same texts (hashed), labels and split
    assert a["text"] == b["text"] and a["tokens"] == b["tokens"]  # same vocabulary and token statistics
    assert a["source"] == "DataFrame" and given.config.data.dataset == "dataframe"
    assert given.config.data.text == "review" and len(given.config.data.fingerprint) == 64


def test_evaluate_and_resume_on_texts_check_the_data(text_runs):
    frame, _, given, _ = text_runs
    report = deepworks.evaluate(given.dir, source=frame)
    assert report["accuracy"] == pytest.approx(given.summary["test"]["accuracy"])
    edited = frame.copy()
    edited.loc[0, "review"] = "an edited review"
    with pytest.raises(DataError, match=r"source=: the data given .* differs from the data .* trained on"):
        deepworks.evaluate(given.dir, source=edited)
    with pytest.raises(ConfigError, match=r"trained on data given in Python .*Fix: pass the same data again"):
        deepworks.evaluate(given.dir)
    with pytest.raises(DataError, match="differs"):
        deepworks.resume(given.dir, source=frame.iloc[::-1])


def test_predictor_on_a_dataframe_of_texts_equals_predict_on_the_csv(text_runs):
    frame, csv, given, files = text_runs
    rows = frame.head(30)
    np.testing.assert_allclose(deepworks.Predictor(given.dir).predict_proba(rows[["review"]]),
                               deepworks.Predictor(files.dir).predict_proba(csv)[:30], atol=1e-6)
    results = deepworks.predict(given.dir, rows, top_k=1)
    assert [r["row"] for r in results] == list(range(1, 31))
    assert [r["text"] for r in results] == [t.strip() if isinstance(t, str) else "" for t in rows["review"]]
    with pytest.raises(DataError, match=r"DataFrame: no column 'review' \(the run's data\.text\).* Fix: give the "
                                        r"texts in a column named 'review'"):
        deepworks.Predictor(given.dir).predict(rows.rename(columns={"review": "text"}))


def sine_trend(n: int = 120, seed: int = 0) -> np.ndarray:
    """A weekly pattern on a trend, daily steps (as in test_forecasting)."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return np.round(10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.1, n), 4)


SERIES = {
    "data": {"horizon": 2},
    "model": {"name": "mlp", "hidden": [16], "dropout": 0.0},
    "train": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.01}, "progress": "none"},
    "seed": 0, "report": False,
}


@pytest.fixture(scope="module")
def series_runs(tmp_path_factory):
    """(the frame: pandas datetimes and floats, its CSV, the run on the frame, the run on the CSV)."""
    root = tmp_path_factory.mktemp("series-source")
    frame = pd.DataFrame({"day": pd.date_range("2024-01-01", periods=120, freq="D"), "visits": sine_trend()})
    csv = root / "visits.csv"
    frame.to_csv(csv, index=False)
    given = deepworks.train(SERIES, source=frame, time="day", target="visits", run_dir=root / "frame")
    data = {**SERIES["data"], "path": str(csv), "time": "day", "target": "visits"}
    files = deepworks.train({**SERIES, "data": data}, run_dir=root / "csv")
    return frame, csv, given, files


def test_a_dataframe_of_a_series_gives_the_figures_of_the_same_csv(series_runs):
    _, _, given, files = series_runs
    assert given.summary["test"] == files.summary["test"]
    assert given.summary["baselines"] == files.summary["baselines"]
    a, b = _info(given), _info(files)
    assert a["split_fingerprint"] == b["split_fingerprint"]  # same values on the same time grid and windows
    assert a["input"] == b["input"]  # time step, periods, scaling
    assert a["source"] == "DataFrame" and given.config.data.dataset == "dataframe" and given.config.data.time == "day"


def test_evaluate_and_resume_on_a_series_check_the_data(series_runs):
    frame, _, given, _ = series_runs
    report = deepworks.evaluate(given.dir, source=frame)
    assert report["mae"] == pytest.approx(given.summary["test"]["mae"])
    with pytest.raises(DataError, match=r"source=: the data given .* differs from the data .* trained on"):
        deepworks.evaluate(given.dir, source=frame.assign(visits=frame["visits"] + 0.001))
    with pytest.raises(DataError, match="differs"):
        deepworks.resume(given.dir, source=frame.head(100))
    # the same frame read back from its CSV (dates parsed) is the same data: the finished run is returned
    again = pd.read_csv(series_runs[1], parse_dates=["day"])
    assert deepworks.resume(given.dir, source=again).summary["test"] == given.summary["test"]


def test_predictor_on_a_dataframe_of_history_equals_predict_on_the_csv(series_runs, tmp_path, monkeypatch):
    frame, _, given, files = series_runs
    history = frame.tail(30)
    history.to_csv(tmp_path / "history.csv", index=False)
    monkeypatch.chdir(tmp_path)
    [from_frame] = deepworks.Predictor(given.dir).predict(history)
    [from_file] = deepworks.Predictor(files.dir).predict(tmp_path / "history.csv")
    assert from_frame["forecast"] == from_file["forecast"] and from_frame["last"] == from_file["last"] == "2024-04-29"
    assert from_frame["frame"] == 0 and Path(from_frame["png"]) == Path("runs", "forecasts", "dataframe.png")
    assert (tmp_path / "runs" / "forecasts" / "dataframe.png").stat().st_size
    both = deepworks.Predictor(given.dir).predict_proba([history, frame.head(60)])
    assert both.shape == (2, 2, 1)
    np.testing.assert_allclose(both[0, :, 0], [step["visits"] for step in from_file["forecast"]], rtol=1e-12)
    with pytest.raises(DataError, match=r"the time 'day' is the index, not a column.* Fix: pass df\.reset_index\(\)"):
        deepworks.Predictor(given.dir).predict(history.set_index("day"))


def test_dataframes_without_the_named_column_are_refused_with_the_fix():
    """A Python caller is told the keyword that settles it (text=), not the command line's flag
    (--text, which `deepworks train FILE` is told: tests/test_train_from_data.py)."""
    texts = reviews(20)
    with pytest.raises(DataError, match=r"source \(DataFrame\): no column 'reviews' \(text=\)\. Did you mean 'review'"
                                        r".* Fix: text= one of the columns\.$"):
        deepworks.train(source=texts, text="reviews", target="label")
    series = pd.DataFrame({"day": pd.date_range("2024-01-01", periods=30, freq="D"), "visits": sine_trend(30)})
    with pytest.raises(DataError, match=r"source \(DataFrame\): no column 'date' \(time=\)\..* Fix: time= one of"):
        deepworks.train(source=series, time="date", target="visits")
    with pytest.raises(ConfigError, match=r"which column is the target\?.* Fix: target=COLUMN\.$"):
        deepworks.train(source=texts.rename(columns={"label": "stars"}))
    grades = pd.DataFrame({"x": np.linspace(0, 1, 30), "label": np.arange(30) % 5})
    with pytest.raises(ConfigError, match=r"5 distinct whole numbers .*Fix: task='classification' or "
                                          r"task='regression'\.$"):
        deepworks.train(source=grades)
    with pytest.raises(ConfigError, match=r"^text='review' and time='day': a run classifies texts or forecasts"):
        deepworks.train(source=texts.assign(day=pd.date_range("2024-01-01", periods=20)), text="review", time="day")
    with pytest.raises(DataError, match=r"time='day': is the DataFrame's index, not one of its columns.*reset_index"):
        deepworks.train(source=series.set_index("day"), time="day", target="visits")
