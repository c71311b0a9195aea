"""What Jupyter shows inline (``_repr_html_``) for a run, a report, a comparison and a study: the
figures are the ones in the run's own files (summary.json, study.json, read here as JSON and
compared as numbers), every text from the run is escaped, the images decode, and the card loads
nothing from anywhere."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import deepworks


class Card(HTMLParser):
    """A card's tables (rows of (text, title) cells), images, tags and URL-bearing attributes."""

    def __init__(self, page: str):
        super().__init__()
        self.rows: list[list[tuple[str, str | None]]] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self._cell: list[str] | None = None
        self._title: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._title = [], attrs.get("title")
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), self._title))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first: str) -> dict[str, list[tuple[str, str | None]]]:
        """The rows of the table whose header row starts with ``first``, by their first cell."""
        rows, inside = {}, False
        for row in self.rows:
            if row and row[0][0] == first and not inside:
                inside, header = True, [text for text, _ in row]
                rows["header"] = row
                continue
            if inside and len(row) == len(header) and row[0][0] != first:
                rows[row[0][0]] = row
            elif inside:
                break
        return rows


def as_number(cell: tuple[str, str | None]) -> float:
    return float(cell[0].replace(",", ""))


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def self_contained(card: Card, page: str) -> None:
    assert "script" not in card.tags and "link" not in card.tags and "iframe" not in card.tags
    assert not [u for u in card.urls if re.match(r"\s*(https?:)?//", u, re.I)]
    assert "url(" not in page and "@import" not in page
    assert page.startswith('<div class="deepworks-inline">') and page.count("<style>") == 1


def check_split_figures(card: Card, summary: dict) -> None:
    """The card's table of final figures holds summary.json's, as numbers (4 decimals shown)."""
    table = card.table("split")
    header = [text for text, _ in table["header"]]
    for split in ("train", "val", "test"):
        row = table[split]
        for metric, value in summary[split].items():
            cell = row[header.index("samples" if metric == "support" else metric)]
            assert as_number(cell) == pytest.approx(value, abs=5e-5), (split, metric)


def test_a_run_shows_its_figures_curves_and_report(digits_cnn_run):
    run = digits_cnn_run
    page = run._repr_html_()
    card = Card(page)
    self_contained(card, page)
    summary = json.loads((run.dir / "summary.json").read_text())
    check_split_figures(card, summary)
    row = card.table("split")["test"]
    accuracy = next(title for _, title in row if title and float(title) == summary["test"]["accuracy"])
    assert float(accuracy) == summary["test"]["accuracy"]  # the exact value rides along in the title
    parameters = sum(p.numel() for p in run.model.parameters())
    assert f"model: cnn ({parameters:,} parameters)" in page
    assert f"{summary['epochs_run']} of 3 epochs, best {summary['best_epoch']} (stopped early)" in page
    assert all(f["kind"].replace("_", " ") in page for f in summary["diagnosis"])
    (curves,) = card.images
    assert decoded(curves).size[0] > 400  # the learning curves: loss, the metric and the rate side by side
    assert f"<code>{run.dir / 'report.html'}</code>" in page or "report.html</code></a>" in page
    assert repr(run) == f"Run({str(run.dir)!r}, model='cnn', test accuracy={summary['test']['accuracy']:.4f})"


def test_a_run_escapes_the_names_it_shows(digits_cnn_run):
    run = dataclasses.replace(digits_cnn_run, classes=["<b>cat</b>", "dogs & co"] + [str(i) for i in range(8)])
    page = run._repr_html_()
    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page and "dogs &amp; co" in page
    assert "10 classes: &lt;b&gt;cat&lt;/b&gt;, dogs &amp; co, 0, 1" in page


def test_a_report_is_its_path_and_shows_its_key_sections(digits_cnn_copy):
    summary = json.loads((digits_cnn_copy / "summary.json").read_text())
    summary["diagnosis"] = [{"kind": "overfitting", "evidence": "train loss <script>alert(1)</script>", "advice": "a & b"}]
    (digits_cnn_copy / "summary.json").write_text(json.dumps(summary))
    path = deepworks.report(digits_cnn_copy)
    # the path as before: equal to the plain path, a str and an os.PathLike that read the page
    assert isinstance(path, Path) and path == digits_cnn_copy / "report.html" and hash(path) == hash(digits_cnn_copy / "report.html")
    assert str(path) == os.fspath(path) == str(digits_cnn_copy / "report.html") and path.read_text().startswith("<!DOCTYPE html>")
    assert path.parent == digits_cnn_copy and path.parent._repr_html_() is None  # a derived path is a plain path
    page = path._repr_html_()
    card = Card(page)
    self_contained(card, page)
    # the report's top: diagnosis, learning curves, final metrics; nothing of the rest of the page
    assert re.findall(r'<section id="sec-([a-z_]+)"', page) == ["diagnosis", "curves", "metrics"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page and "a &amp; b" in page
    check_split_figures(card, summary)
    (curves,) = card.images
    assert decoded(curves).size[0] > 400


def test_a_comparison_is_its_dict_and_shows_the_figures_side_by_side(digits_cnn_run, digits_cnn_copy, tmp_path):
    config = digits_cnn_copy / "config.yaml"
    config.write_text(config.read_text().replace("name: report-digits", "name: '<i>other</i>'"))
    result = deepworks.compare([digits_cnn_run.dir, digits_cnn_copy], out=tmp_path)
    assert isinstance(result, dict) and json.loads(json.dumps(result)) == result  # as plain as it was
    assert result["config"] == {"name": ["report-digits", "<i>other</i>"]}
    page = result._repr_html_()
    card = Card(page)
    self_contained(card, page)
    summary = json.loads((digits_cnn_run.dir / "summary.json").read_text())
    figures = card.table("figure")
    for name, split in (("val_accuracy", "val"), ("test_accuracy", "test")):
        assert [as_number(c) for c in figures[name][1:]] == pytest.approx([summary[split]["accuracy"]] * 2, abs=5e-5)
    assert [as_number(c) for c in figures["epochs_run"][1:]] == [summary["epochs_run"]] * 2
    assert "&lt;i&gt;other&lt;/i&gt;" in page and "<i>other</i>" not in page
    assert len(card.images) == 2 and all(decoded(uri).size[0] > 400 for uri in card.images)


def test_a_study_shows_its_best_trial_and_history(tmp_path):
    pytest.importorskip("optuna")
    from deepworks.tune import tune

    cfg = {"name": "tiny", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [8]},
           "train": {"epochs": 1, "batch_size": 128, "progress": "none"}, "report": False,
           "tune": {"metric": "val_accuracy", "space": {"train.optimizer.lr": {"choice": [0.03]}}}}
    result = tune(cfg, sampler="grid", study="lr <grid> & co", study_dir=tmp_path / "study")
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert isinstance(result, dict) and json.loads(json.dumps(result)) == saved
    page = result._repr_html_()
    card = Card(page)
    self_contained(card, page)
    assert "<code>lr &lt;grid&gt; &amp; co</code>" in page
    best = saved["best"]
    assert f"Best trial: {best['trial']}" in page
    assert as_number(card.table("metric")["val_accuracy"][1]) == pytest.approx(best["values"]["val_accuracy"], abs=5e-5)
    assert as_number(card.table("key")["train.optimizer.lr"][1]) == pytest.approx(best["params"]["train.optimizer.lr"])
    assert "1 complete" in page
    (history,) = card.images
    assert decoded(history).size[0] > 300
