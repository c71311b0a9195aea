"""Concept labs (deepworks lab): every lab runs in --fast mode, writes its figures and lab.json
with finite numbers; docs/concepts.md covers every lab with config snippets that validate."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import deepworks.labs as labs
from deepworks.cli import main
from deepworks.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = ROOT / "docs" / "concepts.md"
EXPECTED = {
    "softmax", "cnn", "gan", "rnn-lstm", "overfitting", "features", "activations", "frameworks", "dropout",
    "hyperparameters", "parameters", "transfer-learning", "image-classification", "backprop", "datasets", "padding",
}


def _finite_numbers(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _finite_numbers(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _finite_numbers(v, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value
    elif not isinstance(value, str):
        raise AssertionError(f"{key}: {value!r} is not a number")


@pytest.mark.parametrize("name", sorted(labs.LABS))
def test_lab_runs_fast_and_writes_figures_and_finite_numbers(name, tmp_path, capsys):
    if labs.missing_pieces(name):
        pytest.skip(f"optional piece missing: {labs.missing_pieces(name)}")
    out = tmp_path / name
    assert main(["lab", name, "--out", str(out), "--fast"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "lab.json").read_text())
    assert record["lab"] == name and record["fast"] is True
    assert record["figures"], "a lab writes at least one PNG"
    for png in record["figures"]:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, png
    numbers = list(_finite_numbers(record["numbers"]))
    assert numbers, "a lab records the numbers it measured"
    assert all(math.isfinite(v) for _, v in numbers)
    assert record["not_finite"] == []
    # it says what it measured, with numbers in the sentences
    assert record["sentences"] and any(re.search(r"\d", s) for s in record["sentences"])
    assert record["sentences"][0].split()[0] in printed


def test_every_concept_of_the_issue_has_a_lab():
    assert EXPECTED <= set(labs.LABS), sorted(EXPECTED - set(labs.LABS))


def test_lab_lists_every_lab_and_unknown_lab_is_a_clear_error(capsys):
    assert main(["lab"]) == 0
    listed = capsys.readouterr().out
    for name in labs.LABS:
        assert name in listed
    assert main(["lab", "paddin"]) == 2
    err = capsys.readouterr().err
    assert "unknown lab 'paddin'" in err and "Did you mean 'padding'" in err


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(["lab", "padding", "--fast", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "notes.txt" in err and "Traceback" not in err
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("name,hidden", [(x.name, module) for x in labs.LABS.values() for module, _ in x.needs])
def test_a_lab_whose_optional_piece_is_missing_says_what_to_install(name, hidden, monkeypatch, tmp_path, capsys):
    spec = labs.LABS[name]
    real = labs.importlib.util.find_spec
    monkeypatch.setattr(labs.importlib.util, "find_spec", lambda n, *a: None if n == hidden else real(n, *a))
    assert main(["lab", spec.name, "--out", str(tmp_path / "x"), "--fast"]) == 2
    err = capsys.readouterr().err
    assert hidden in err and "pip install" in err
    assert not (tmp_path / "x" / "lab.json").exists()


def _snippets() -> list[tuple[str, str]]:
    """(section title, YAML) of every ```yaml block in docs/concepts.md."""
    text = CONCEPTS.read_text()
    found, section = [], ""
    for block in re.finditer(r"^## ([^\n]+)$|^```yaml\n(.*?)^```", text, re.S | re.M):
        if block.group(1):
            section = block.group(1).strip()
        else:
            found.append((section, block.group(2)))
    return found


def test_concepts_guide_covers_every_lab():
    text = CONCEPTS.read_text()
    for name in labs.LABS:
        assert f"deepworks lab {name}" in text, f"docs/concepts.md does not show `deepworks lab {name}`"


@pytest.mark.parametrize("section,snippet", _snippets() if CONCEPTS.exists() else [], ids=lambda v: str(v)[:40])
def test_concepts_guide_config_snippets_validate(section, snippet):
    import yaml

    cfg = load_config(yaml.safe_load(snippet))
    assert cfg.model.name


def test_a_lab_run_again_into_the_same_out_replaces_its_training_runs(tmp_path):
    ctx = labs.LabContext(name="t", out=tmp_path, fast=True)
    cfg = {"data": {"dataset": "digits"}, "model": {"name": "softmax"}, "train": {"epochs": 1}}
    first = ctx.train(cfg, "again")
    second = ctx.train(cfg, "again")  # was: "a run already lives there"
    assert first.dir == second.dir and (second.dir / "summary.json").is_file()
