"""report.html: written at the end of training, self-contained, and a page for whatever a run
directory holds (truncated metrics, deleted files) with notes instead of a traceback."""

from __future__ import annotations

import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import deepworks
from deepworks.cli import main
from deepworks.errors import CheckpointError
from deepworks.evaluation.predictions import load_predictions
from deepworks.reporting.sections import SECTIONS, section, sections_for

ROOT = Path(__file__).resolve().parents[1]

# quickstart-like, small and quick: 3 planned epochs, early stopping after the second (min_delta
# so large that no epoch counts as an improvement), gradient norms every 5 steps
# the page reads top down as a user looks: the diagnosis, the curves and the final figures, then the
# config (folded), the data and the task's own figures
CLASSIFICATION_SECTIONS = ["diagnosis", "curves", "metrics", "config", "data", "confusion", "per_class",
                           "calibration", "wrong", "gradients", "model"]


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="sec-([a-z_]+)"', page)


def notes(page: str) -> list[str]:
    return re.findall(r'<p class="(?:note|warn)">(.*?)</p>', page)


class Refs(HTMLParser):
    """Every tag and every URL-bearing attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster", "formaction") and value is not None:
                self.urls.append((tag, name, value))


@pytest.fixture
def digits_run(digits_cnn_run):
    """The session's digits CNN run (tests/conftest.py: DIGITS_CNN), read only."""
    return digits_cnn_run


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    (target / "report.html").unlink(missing_ok=True)
    return target


def test_training_writes_a_report_with_every_section(digits_run):
    page = (digits_run.dir / "report.html").read_text(encoding="utf-8")
    assert section_ids(page) == CLASSIFICATION_SECTIONS  # in page order
    assert "could not be drawn" not in page and 'id="problems"' not in page
    # the resolved config is there, whole, but folded: a closed <details> (no `open`)
    config = re.search(r'<section id="sec-config"><h2>Config</h2>(.*?)</section>', page, re.S).group(1)
    assert re.match(r"<details><summary>", config) and "<details open" not in page
    assert html.escape((digits_run.dir / "config.yaml").read_text()) in config
    for ident in ("fig-learning-curves", "fig-confusion", "fig-calibration", "fig-gradients"):
        assert re.search(rf'<img id="{ident}" class="figure" src="data:image/png;base64,[A-Za-z0-9+/=]{{200,}}"', page), ident
    assert '<div id="fig-wrong" class="image-grid">' in page
    wrong = len(load_predictions(digits_run.dir / "predictions.safetensors")["val"]["wrong_index"])
    assert page.count('<img class="wrong-image" src="data:image/png;base64,') == wrong > 0
    s = digits_run.summary
    assert s["stopped_early"] and s["epochs_run"] == 2
    assert f"early stopping ended the run after epoch {s['epochs_run']}" in page
    assert f"best epoch {s['best_epoch']}" in page
    # the data section: split sizes and the class counts recorded in data.json
    info = json.loads((digits_run.dir / "data.json").read_text())
    assert sum(info["class_counts"]["train"]) == info["sizes"]["train"]
    assert "<h3>Class counts</h3>" in page
    # final metrics, per-class table and calibration figures come from the run's own files
    report = json.loads((digits_run.dir / "test_report.json").read_text())
    assert f"{report['per_class'][0]['f1']:.4f}" in page
    assert f"{s['test']['accuracy']:.4f}" in page
    assert "ECE" in page and "receptive field" in page and "Conv2d" in page
    # the diagnosis written at the end of training heads the page, each finding with its evidence
    assert s["diagnosis"] and "No diagnosis in summary.json" not in page
    for finding in s["diagnosis"]:
        assert f'<span class="kind">{finding["kind"].replace("_", " ")}</span>' in page
        assert html.escape(finding["evidence"]) in page


def test_report_is_self_contained(digits_run):
    page = (digits_run.dir / "report.html").read_text(encoding="utf-8")
    refs = Refs()
    refs.feed(page)
    assert "script" not in refs.tags and "link" not in refs.tags and "iframe" not in refs.tags
    for tag, attr, value in refs.urls:
        assert not re.match(r"\s*(https?:)?//", value, re.I), (tag, attr, value[:80])
        if attr == "src":
            assert value.startswith("data:image/"), (tag, value[:80])
        if attr == "href":
            assert value.startswith("#"), value  # in-page links only
    assert "url(" not in page and "@import" not in page
    assert not re.search(r"<script[^>]*src=|<link[^>]*href=", page, re.I)
    assert "Content-Security-Policy" in page  # the browser would refuse anything else anyway


def test_report_false_skips_the_report(tmp_path):
    cfg = {"data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [16]}, "report": False,
           "train": {"epochs": 1, "progress": "none", "precision": "fp32"}}
    run = deepworks.train(cfg, run_dir=tmp_path / "quiet")
    assert run.config.report is False
    assert not (run.dir / "report.html").exists()
    assert "report: false" in (run.dir / "config.yaml").read_text()
    path = deepworks.report(run.dir)  # asked for, it is written all the same
    assert path == run.dir / "report.html" and path.is_file()


def test_cli_report_and_not_a_run_directory(digits_run, tmp_path, capsys):
    run_dir = copy_of(digits_run.dir, tmp_path)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert str(run_dir / "report.html") in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not a deepworks run directory (no config.yaml)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="no such run directory"):
        deepworks.report(tmp_path / "nowhere")


def test_truncated_metrics_and_deleted_predictions(digits_run, tmp_path):
    run_dir = copy_of(digits_run.dir, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a kill in the middle of writing epoch 2
    (run_dir / "predictions.safetensors").unlink()
    page = deepworks.report(run_dir).read_text(encoding="utf-8")
    assert section_ids(page) == CLASSIFICATION_SECTIONS
    assert "could not be drawn" not in page
    said = " ".join(notes(page))
    assert "metrics.jsonl: truncated: line 2 of 2 is cut short" in said and "stop at epoch 1" in said
    assert 'id="fig-learning-curves"' in page  # the epoch before the cut is still drawn
    assert "No calibration: predictions.safetensors: missing." in said
    assert "No images: predictions.safetensors: missing." in said
    assert 'id="problems"' in page and 'id="fig-confusion"' in page  # test_report.json is still there


def test_missing_summary_and_test_report_and_no_metrics(digits_run, tmp_path):
    run_dir = copy_of(digits_run.dir, tmp_path)
    for name in ("summary.json", "test_report.json", "metrics.jsonl", "gradients.jsonl"):
        (run_dir / name).unlink()
    (run_dir / "predictions.safetensors").write_bytes(b"\x80\x04not a safetensors file")  # a pickle, say
    page = deepworks.report(run_dir).read_text(encoding="utf-8")
    said = " ".join(notes(page))
    assert "No final metrics: summary.json: missing." in said
    assert "No confusion matrix: test_report.json: missing." in said
    assert "No learning curves: metrics.jsonl: missing" in said
    assert "not a valid safetensors file" in said
    assert "could not be drawn" not in page
    assert 'id="sec-model"' in page and "Conv2d" in page  # config + data.json are enough for the model


def test_diagnosis_is_shown_first_and_escaped(digits_run, tmp_path):
    run_dir = copy_of(digits_run.dir, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["diagnosis"] = [
        {"kind": "overfitting", "evidence": "train loss 0.01 <script>alert(1)</script> vs val 0.9",
         "advice": "add dropout & augmentation"},
        {"kind": "healthy", "evidence": {"gap": 0.01}, "advice": ""},
    ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = deepworks.report(run_dir).read_text(encoding="utf-8")
    assert section_ids(page)[0] == "diagnosis"
    assert '<li class="finding warn"><span class="kind">overfitting</span>' in page
    assert '<li class="finding healthy">' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "add dropout &amp; augmentation" in page and "gap: 0.0100" in page


def test_report_leaves_the_global_rng_alone(digits_run, tmp_path):
    run_dir = copy_of(digits_run.dir, tmp_path)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    deepworks.report(run_dir)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_new_task_registers_its_own_sections():
    @section("ranked", title="Ranked examples", order=60, tasks=("ranking",))
    def ranked(ctx):
        return "<p>ranked</p>"

    try:
        assert "ranked" in [s.name for s in sections_for("ranking")]
        assert "ranked" not in [s.name for s in sections_for("classification")]
        # the sections for every run, then its own; the supervised ones (curves, metrics, ...) are not its
        assert [s.name for s in sections_for("ranking")] == ["config", "data", "ranked"]
    finally:
        SECTIONS._entries.pop("ranked")
    assert [s.name for s in sections_for("generation")] == ["gan_losses", "samples", "quality", "config", "data"]
    assert [s.name for s in sections_for("classification")][:5] == ["diagnosis", "curves", "metrics", "config", "data"]


def test_regression_run_gets_its_sections(penguin_regression_run):
    run = penguin_regression_run.run
    page = (run.dir / "report.html").read_text(encoding="utf-8")
    assert section_ids(page) == ["diagnosis", "curves", "metrics", "config", "data", "predicted_actual", "residuals",
                                 "gradients", "model"]
    assert 'id="fig-predicted-actual"' in page and 'id="fig-residuals"' in page
    assert "could not be drawn" not in page and 'id="problems"' not in page
    assert "<h3>Baselines</h3>" in page and "ridge" in page and "the network" in page
    # the figures are in grams: the predictions were un-scaled with the training mean and std
    from deepworks.reporting.context import load_context
    from deepworks.reporting.sections import _unscaled

    pred, actual = _unscaled(load_context(run.dir))["test"]
    assert 2000 < actual.mean() < 7000 and 2000 < pred.mean() < 7000
    assert abs(abs(actual - pred).mean() - run.summary["test"]["mae"]) < 1e-3 * run.summary["test"]["mae"]
