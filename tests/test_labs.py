"""Concept labs (deepworks lab): every lab runs in --fast mode, writes its figures and lab.json
with finite numbers, and finds what its lesson says (the softmax classifier agrees with
scikit-learn, the LSTM remembers where the RNN forgets, the collapsed GAN is flagged, ...);
docs/concepts.md covers every lab (tests/test_docs.py validates its config snippets, with every other page's)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import deepworks.labs as labs
from deepworks.cli import main

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


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    """``lab_run(name)``: (its --out folder, lab.json, what it printed) of ``deepworks lab NAME --fast``,
    run once per module whichever test asks first (the lab's own test and its finding's)."""
    done: dict[str, tuple[Path, dict, str]] = {}

    def run(name: str) -> tuple[Path, dict, str]:
        if labs.missing_pieces(name):
            pytest.skip(f"optional piece missing: {labs.missing_pieces(name)}")
        if name not in done:
            out = tmp_path_factory.mktemp("lab") / name
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = main(["lab", name, "--out", str(out), "--fast"])
            assert code == 0, printed.getvalue()
            done[name] = (out, json.loads((out / "lab.json").read_text()), printed.getvalue())
        return done[name]

    return run


@pytest.mark.parametrize("name", sorted(labs.LABS))
def test_lab_runs_fast_and_writes_figures_and_finite_numbers(name, lab_run):
    out, record, printed = lab_run(name)
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


# ------------------------------------------------------------------ what each lab finds, --fast
# Each check is the lab's lesson as a user reads it in the sentences, with an oracle where there is
# one (scikit-learn, torch, numpy, the lab's own training runs in --out).


def _softmax(out: Path, n: dict) -> None:
    # the oracle: scikit-learn's LogisticRegression with the same penalty, fitted here on the run's
    # own split and standardised features
    from sklearn.linear_model import LogisticRegression

    import deepworks
    from deepworks.pipeline import prepare_data

    run = deepworks.load_run(out / "runs" / "softmax")
    data = prepare_data(run.config)
    xtr, ytr, xte, yte = (t.numpy() for t in (data.train.x, data.train.y, data.test.x, data.test.y))
    sk = LogisticRegression(C=1.0 / (run.config.train.l2 * len(ytr)), max_iter=3000).fit(xtr, ytr)
    with torch.no_grad():
        ours = torch.softmax(run.model(data.test.x), 1).numpy()
    assert n["sklearn_test_accuracy"] == pytest.approx(sk.score(xte, yte))
    assert n["softmax_test_accuracy"] == pytest.approx(float((ours.argmax(1) == yte).mean()))
    assert n["agreement"] == pytest.approx(float((ours.argmax(1) == sk.predict(xte)).mean())) and n["agreement"] >= 0.97
    assert n["max_probability_gap"] == pytest.approx(np.abs(ours - sk.predict_proba(xte)).max(), abs=1e-4)
    assert n["max_probability_gap"] < 0.1  # the same model: multinomial logistic regression
    assert abs(n["softmax_test_accuracy"] - n["sklearn_test_accuracy"]) <= 0.02 and n["softmax_test_accuracy"] > 0.9


def _rnn_lstm(out: Path, n: dict) -> None:
    far, by_gap = n["far_accuracy"], n["accuracy_by_gap"]
    assert by_gap["rnn"][0] >= 0.9 and by_gap["lstm"][0] >= 0.9  # with no filler both remember the first word
    assert far["lstm"] >= 0.9  # the LSTM still does across 15 to 30 filler words
    assert far["rnn"] <= far["lstm"] - 0.3  # the plain RNN forgets it
    ratio = n["first_word_grad_over_last_word_trained"]
    assert ratio["lstm"] > ratio["rnn"]  # more of the LSTM's gradient reaches the first word


def _gan(out: Path, n: dict) -> None:
    assert n["collapse_flagged"] == {"healthy": 0, "collapsed": 1}
    covered, largest = n["classes_covered"], n["largest_share"]
    assert covered["collapsed"] < covered["healthy"] and largest["collapsed"] > 0.5 > largest["healthy"]
    counts = {k: np.array(v) for k, v in n["class_counts"].items()}
    assert largest["collapsed"] == pytest.approx(counts["collapsed"].max() / counts["collapsed"].sum())
    fd = n["frechet_distance"]
    assert fd["collapsed"] > fd["healthy"] > n["frechet_real_halves"] > 0


def _overfitting(out: Path, n: dict) -> None:
    runs = n["runs"]
    plain, early = runs["plain"], runs["early_stopping"]
    # memorised: every training digit right, validation well below, validation loss past its minimum
    assert plain["train_accuracy"] == 1.0 and plain["accuracy_gap"] >= 0.1 and plain["loss_gap"] > 0.5
    assert plain["final_val_loss"] > 1.5 * plain["min_val_loss"]
    assert runs["dropout"]["loss_gap"] < plain["loss_gap"] and runs["l2"]["loss_gap"] < plain["loss_gap"]
    # early stopping: the same run until it stopped, kept at the plain run's lowest validation loss
    assert early["epochs_run"] < n["epochs"] and early["best_epoch"] == plain["min_val_loss_epoch"]
    assert early["val_loss"] == pytest.approx(plain["min_val_loss"], rel=1e-4)


def _features(out: Path, n: dict) -> None:
    imp = n["importance"]
    ranking = sorted(imp, key=imp.get, reverse=True)
    assert ranking[0] == "income" and set(ranking[:3]) == {"income", "size", "city"}  # what spend was built from
    assert max(imp["age"], imp["noise"]) < imp["size"]
    assert n["test_r2"] > 0.8
    # income, age, city have empty cells: a =missing indicator each; city one-hot (4 + other); size ordinal
    assert n["missing_indicators"] == 3
    assert n["features_per_column"] == {"income": 2, "age": 2, "city": 6, "size": 1, "noise": 1}
    assert min(n["projection_target_correlation"].values()) >= 0.7


def _activations(out: Path, n: dict) -> None:
    assert n["max_abs_diff_autograd_vs_numeric"] < 1e-6
    x = torch.tensor(5.0, dtype=torch.float64)
    assert n["derivative_at_5"]["sigmoid"] == pytest.approx(float(torch.sigmoid(x) * (1 - torch.sigmoid(x))), rel=1e-6)
    assert n["derivative_at_5"]["tanh"] == pytest.approx(float(1 - torch.tanh(x) ** 2), rel=1e-6)
    assert n["max_derivative"]["sigmoid"] == pytest.approx(0.25, abs=1e-3)
    assert n["max_derivative"]["tanh"] == pytest.approx(1.0, abs=1e-3)
    runs = n["runs"]
    low, high, leaky = runs["relu_lr0.001"], runs["relu_lr0.1"], runs["leaky_relu_lr0.1"]
    assert sum(high["dead"]) > 4 * sum(low["dead"]) and high["val_accuracy"] < low["val_accuracy"]
    assert max(high["dead_grad"]) == 0.0  # a dead ReLU gets no gradient: it cannot come back
    assert min(g for g, d in zip(leaky["dead_grad"], leaky["dead"]) if d) > 0  # a leaky one still does
    assert leaky["val_accuracy"] > high["val_accuracy"]


def _frameworks(out: Path, n: dict) -> None:
    assert n["onnx_max_abs_diff"] <= n["tolerance"] and n["prediction_agreement"] == 1.0
    assert n["state_dict_max_abs_diff"] <= 1e-5
    assert n["onnx_accuracy"] > 0.7 and np.mean(n["cv_deep"]) > 0.7 and np.mean(n["cv_logistic"]) > 0.7


def _dropout(out: Path, n: dict) -> None:
    runs = n["runs"]
    assert runs["no_dropout"]["train_accuracy"] == 1.0 and runs["dropout"]["loss_gap"] < runs["no_dropout"]["loss_gap"]
    assert n["eval_mode_max_diff"] == 0.0 and n["train_mode_max_std"] > 0  # eval mode: dropout off, deterministic
    assert n["kept_scale"] == pytest.approx(1 / (1 - n["p"]), rel=1e-5)  # kept units times 1/(1-p)
    assert n["kept_share"] == pytest.approx(1 - n["p"], abs=0.03)
    assert n["mean_activation_out"] == pytest.approx(n["mean_activation_in"], rel=0.1)


def _hyperparameters(out: Path, n: dict) -> None:
    runs = n["runs"]
    small, right, large, found = (runs[k] for k in ("too small", "about right", "too large", "lr_find's suggestion"))
    assert large["failed"] == 1 and large["final_val_accuracy"] <= 0.2  # diverged: no better than a guess
    assert small["failed"] == 0 and small["final_train_loss"] > 3 * right["final_train_loss"]  # too slow
    assert right["final_train_loss"] == min(runs[k]["final_train_loss"] for k in ("too small", "about right", "too large"))
    assert small["lr"] < n["lr_find_suggestion"] < large["lr"] and found["failed"] == 0
    assert found["final_val_accuracy"] > 0.8  # lr_find's suggestion trains


def _parameters(out: Path, n: dict) -> None:
    import deepworks

    model = deepworks.load_run(out / "runs" / "parameters").model
    assert n["formula_mismatches"] == 0
    assert n["total_params"] == sum(p.numel() for p in model.parameters()) == sum(n["by_kind"].values())
    assert n["by_kind"]["batch-norm scale"] == n["by_kind"]["batch-norm shift"] == 8  # the block with batch norm
    assert n["batch_norm_running_stats"] == 16  # 8 running means and 8 variances, not parameters
    assert n["total_params_with_hidden_64"] > n["total_params"]


def _transfer_learning(out: Path, n: dict) -> None:
    test = n["test_accuracy"]
    assert test["pretrained features"] >= test["same net, from scratch"] + 0.3 and test["pretrained features"] > 0.5
    k = n["classes"]
    assert n["trainable_parameters"]["pretrained features"] == 1280 * k + k  # the new linear head alone


def _image_classification(out: Path, n: dict) -> None:
    assert sum(n["sizes"].values()) == 1797
    from sklearn.datasets import load_digits

    total = np.bincount(load_digits().target)
    for split, counts in n["class_counts"].items():  # stratified: each digit in the split's share of its images
        assert sum(counts) == n["sizes"][split]
        assert np.abs(np.array(counts) - total * n["sizes"][split] / 1797).max() <= 1.5, (split, counts)
    assert n["mean_after"] == pytest.approx(0.0, abs=1e-3) and n["std_after"] == pytest.approx(1.0, abs=1e-3)
    confusion = np.array(n["confusion_matrix"])
    assert confusion.sum() == n["sizes"]["test"]
    assert n["test"]["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum()) and n["test"]["accuracy"] > 0.8
    # a PNG written from a test image and read back by predict gets the answer the model gave that image
    # in evaluation (how many are right follows the accuracy: 2 to 4 of 4 at 0.84-0.85 in --fast mode)
    assert n["predicted_as_tested"] == n["predicted_files"] and 0 <= n["predicted_right"] <= n["predicted_files"]


def _backprop(out: Path, n: dict) -> None:
    assert n["max_abs_diff_hand_vs_autograd"] < 1e-12 and n["max_abs_diff_hand_vs_numeric"] < 1e-7
    for worst in n["worst_over_trials"].values():
        assert worst["hand_vs_autograd"] < 1e-12 and worst["hand_vs_numeric"] < 1e-7
    logits = torch.tensor(n["logits"], dtype=torch.float64)
    assert n["probabilities"] == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-12)
    ce = float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([n["target"]])))
    assert n["loss"] == pytest.approx(ce, abs=1e-12) and n["loss_autograd"] == pytest.approx(ce, abs=1e-12)
    onehot = np.eye(2)[n["target"]]
    assert n["grad_logits"] == pytest.approx(list(np.array(n["probabilities"]) - onehot), abs=1e-12)  # p - onehot
    assert n["loss_after_step"] < n["loss_before_step"]  # one step against the gradient lowers the loss


def _datasets(out: Path, n: dict) -> None:
    runs = n["runs"]
    leaky, dropped, clean = runs["leaky"], runs["copies"], runs["clean"]
    assert n["on_duplicates_error_stopped"] == 1  # data.on_duplicates: error stops before training
    assert leaky["test_rows_copying_training"] > 0.5 * leaky["sizes"]["test"]  # most leaky test rows are copies
    assert clean["test_rows_copying_training"] == 0 and clean["val_rows_copying_training"] == 0  # group_by: source
    assert dropped["dropped_test"] == leaky["test_rows_copying_training"]
    assert dropped["sizes"]["test"] == leaky["sizes"]["test"] - dropped["dropped_test"]
    # the leak inflates the test score: memorised copies are scored as if unseen
    assert leaky["test_accuracy"] >= clean["test_accuracy"] + 0.03
    assert n["inflation_points"] == pytest.approx(100 * (leaky["test_accuracy"] - clean["test_accuracy"]))


def _padding(out: Path, n: dict) -> None:
    # the oracle: torch's own convolution ('same' at stride 2 is not a torch padding mode: the
    # textbook ceil(n / s), which is what padding (k - 1) / 2 gives for an odd kernel)
    size = n["input_size"]
    image = torch.zeros(1, 1, size, size)
    for key, shown in n["output_size"].items():
        pad, stride, kernel = key.split("_")
        stride, kernel = int(stride[1:]), int(kernel[1:])
        padding = 0 if pad == "valid" else (kernel - 1) // 2
        expected = torch.nn.functional.conv2d(image, torch.zeros(1, 1, kernel, kernel), stride=stride, padding=padding)
        assert shown == expected.shape[-1], key
    assert n["pixels_lost_valid_k3"] == 2 and n["pixels_lost_valid_k5"] == 4


def _cnn(out: Path, n: dict) -> None:
    import deepworks

    acc = n["test_accuracy"]
    assert acc["cnn"] > 0.9 and acc["cnn"] >= acc["mlp"]  # with about as many parameters as the MLP
    for kind in ("cnn", "mlp"):
        assert n["params"][kind] == sum(p.numel() for p in deepworks.load_run(out / "runs" / kind).model.parameters())
    assert n["filter_shape"] == [8, 1, 5, 5] and min(n["filter_relative_change"]) > 0  # every filter learned
    assert n["feature_map_shapes"] == [[8, 16, 16], [16, 8, 8]]  # 'same' padding, then a 2x2 pooling


FINDINGS = {
    "softmax": _softmax, "rnn-lstm": _rnn_lstm, "gan": _gan, "overfitting": _overfitting, "features": _features,
    "activations": _activations, "frameworks": _frameworks, "dropout": _dropout, "hyperparameters": _hyperparameters,
    "parameters": _parameters, "transfer-learning": _transfer_learning, "image-classification": _image_classification,
    "backprop": _backprop, "datasets": _datasets, "padding": _padding, "cnn": _cnn,
}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_lab_finds_what_its_lesson_says(name, lab_run):
    out, record, _ = lab_run(name)
    FINDINGS[name](out, record["numbers"])


def test_every_lab_has_its_finding_checked():
    assert set(FINDINGS) == set(labs.LABS)


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


def test_concepts_guide_covers_every_lab():
    text = CONCEPTS.read_text()
    for name in labs.LABS:
        assert f"deepworks lab {name}" in text, f"docs/concepts.md does not show `deepworks lab {name}`"


def test_a_lab_run_again_into_the_same_out_replaces_its_training_runs(tmp_path):
    ctx = labs.LabContext(name="t", out=tmp_path, fast=True)
    cfg = {"data": {"dataset": "digits"}, "model": {"name": "softmax"}, "train": {"epochs": 1}}
    first = ctx.train(cfg, "again")
    second = ctx.train(cfg, "again")  # was: "a run already lives there"
    assert first.dir == second.dir and (second.dir / "summary.json").is_file()
