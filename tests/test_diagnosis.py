"""The diagnosis: each rule on hand-made histories, then real runs on digits that overfit, learn too
slowly, diverge, or are fine (the quickstart)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import deepworks
from deepworks import Callback
from deepworks.errors import CheckpointError, TrainingError
from deepworks.evaluation import diagnosis as dg
from deepworks.evaluation.diagnosis import diagnose, render_diagnosis

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(i) for i in range(10)]
INFO = {"classes": CLASSES, "input_shape": [1, 8, 8]}
CONFIG = {
    "data": {"dataset": "digits", "augment": []},
    "model": {"name": "mlp", "hidden": [512, 512], "dropout": 0.0, "activation": "relu"},
    "train": {"epochs": 40, "optimizer": {"name": "adamw", "lr": 0.001}, "l2": 0.0, "label_smoothing": 0.0,
              "early_stopping": None, "clip_grad_norm": None},
}
CONFIG_KEY = re.compile(r"`(data|model|train)\.[a-z_]+")


def kinds(findings):
    return [f["kind"] for f in findings]


def curve(n, train_loss, val_loss, train_acc=None, val_acc=None):
    """History records from per-epoch functions of the epoch (1-based)."""
    out = []
    for e in range(1, n + 1):
        r = {"epoch": e, "train_loss": train_loss(e), "val_loss": val_loss(e), "lr": 0.001, "best": False, "seconds": 0.1}
        if train_acc:
            r["train_accuracy"], r["val_accuracy"] = train_acc(e), val_acc(e)
        out.append(r)
    return out


def overfit_history(n=40, low=10):
    return curve(n, lambda e: 2.0 * math.exp(-0.3 * e), lambda e: 0.3 + 0.003 * (e - low) ** 2,
                 lambda e: min(1.0, 0.5 + 0.05 * e), lambda e: 0.9 - 0.002 * max(0, e - low))


def healthy_history(n=20):
    return curve(n, lambda e: 1.5 * math.exp(-0.3 * e) + 0.05, lambda e: 1.4 * math.exp(-0.3 * e) + 0.08,
                 lambda e: 0.99 - 0.5 * math.exp(-0.4 * e), lambda e: 0.98 - 0.5 * math.exp(-0.4 * e))


def predictions_from(probs, targets):
    return {"task": "classification", "val": {"outputs": torch.log(torch.as_tensor(probs)), "targets": torch.as_tensor(targets)}}


def calibrated(n=400, k=10, confidence=0.95, accuracy=0.95, seed=0):
    """Validation outputs whose top class has ``confidence`` and is right for ``accuracy`` of the samples."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, k, (n,), generator=g)
    predicted = targets.clone()
    wrong = torch.arange(n) >= round(accuracy * n)
    predicted[wrong] = (targets[wrong] + 1) % k
    probs = torch.full((n, k), (1 - confidence) / (k - 1))
    probs[torch.arange(n), predicted] = confidence
    return predictions_from(probs, targets)


SUMMARY = {"task": "classification", "train": {"accuracy": 0.99, "loss": 0.05}, "val": {"accuracy": 0.97, "loss": 0.1},
           "best_epoch": 20, "epochs_run": 20, "stopped_early": False}


# ------------------------------------------------------------------ the rules, one by one


def test_overfitting_states_the_gap_at_the_last_and_best_epochs():
    history = overfit_history()
    summary = {"task": "classification", "best_epoch": 10, "epochs_run": 40, "stopped_early": False}
    found = diagnose(history, summary, data_info=INFO, config=CONFIG)
    assert kinds(found) == ["overfitting"]
    evidence, advice = found[0]["evidence"], found[0]["advice"]
    assert "lowest at epoch 10" in evidence and "30 epochs" in evidence
    assert "last epoch (40)" in evidence and "best epoch (10" in evidence
    assert "accuracy 100.0% vs 84.0% (16.0 points)" in evidence  # the gap at the last epoch
    assert "`model.dropout` from 0" in advice and "`train.l2`" in advice and "`train.early_stopping" in advice
    assert "[512, 512]" in advice and "`data.augment`" in advice


def test_overfitting_caught_by_early_stopping_is_healthy_with_a_note():
    history = overfit_history(n=16)
    config = {**CONFIG, "train": {**CONFIG["train"], "early_stopping": {"monitor": "val_loss", "patience": 6}}}
    summary = {"task": "classification", "best_epoch": 10, "epochs_run": 16, "stopped_early": True,
               "train": {"accuracy": 1.0}, "val": {"accuracy": 0.9}}
    found = diagnose(history, summary, data_info=INFO, config=config)
    assert kinds(found) == ["healthy"]
    assert "early stopping ended the run at epoch 16, 6 epochs after" in found[0]["evidence"]


def test_a_small_rise_of_the_validation_loss_is_not_overfitting():
    history = healthy_history(20)
    history[-1]["val_loss"] *= 1.05  # the last epoch a bit worse: noise, not a trend
    assert "overfitting" not in kinds(diagnose(history, SUMMARY, data_info=INFO))


def test_underfitting_low_and_still_rising_training_accuracy():
    history = curve(10, lambda e: 2.0 - 0.1 * e, lambda e: 2.0 - 0.1 * e, lambda e: 0.3 + 0.05 * e, lambda e: 0.3 + 0.05 * e)
    summary = {"task": "classification", "train": {"accuracy": 0.8}, "val": {"accuracy": 0.8}}
    found = diagnose(history, summary, data_info=INFO, config=CONFIG)
    assert kinds(found) == ["underfitting"]
    assert "only 80.0%" in found[0]["evidence"] and "15.0 points over the last 3 epochs" in found[0]["evidence"]
    assert "`train.epochs` from 40" in found[0]["advice"]


def test_underfitting_when_validation_is_no_better_than_the_majority_class():
    history = healthy_history(10)
    targets = torch.tensor([3] * 60 + [1] * 40)
    probs = torch.full((100, 10), 0.01)
    probs[:, 3] = 0.5  # always class 3: right for the 60% of samples that are 3
    probs[:, 1] = 0.41
    summary = {**SUMMARY, "val": {"accuracy": 0.6}}
    found = diagnose(history, summary, predictions=predictions_from(probs, targets), data_info=INFO)
    assert "underfitting" in kinds(found)
    under = found[kinds(found).index("underfitting")]
    assert "60.0% is no better than always predicting '3' (60.0%" in under["evidence"]


def test_underfitting_of_a_regression_run():
    history = [{"epoch": e, "train_loss": 0.99, "val_loss": 1.0, "train_r2": 0.01, "val_r2": 0.0} for e in range(1, 6)]
    found = diagnose(history, {"task": "regression", "val": {"r2": 0.0}}, config=CONFIG)
    assert "underfitting" in kinds(found) and "R² 0.000" in found[kinds(found).index("underfitting")]["evidence"]


def test_lr_too_high_on_a_nan_loss():
    history = healthy_history(3) + [{"epoch": 4, "train_loss": float("nan"), "val_loss": 0.5}]
    found = diagnose(history, SUMMARY, data_info=INFO, config=CONFIG)
    assert kinds(found)[0] == "lr_too_high"
    assert "nan at epoch 4" in found[0]["evidence"] and "`train.optimizer.lr` (now 0.001, adamw)" in found[0]["advice"]


def test_lr_too_high_from_the_divergence_message():
    message = ("training diverged: the loss became NaN or inf at step 37 (epoch 2); layer 'net.0' has non-finite "
               "weights (net.0.weight). The last good checkpoint (x, epoch 1) is kept. Fix: lower train.optimizer.lr")
    found = diagnose(healthy_history(1), {"task": "classification"}, error=message, config=CONFIG)
    assert kinds(found)[0] == "lr_too_high" and "step 37 (epoch 2)" in found[0]["evidence"]
    assert "Fix:" not in found[0]["evidence"]
    bad = diagnose([], None, error="training diverged: ...; the input batch itself contains NaN or inf values. Fix: ...")
    assert kinds(bad) == ["metrics_missing", "bad_data"]


def test_lr_too_high_on_an_oscillating_loss_above_chance():
    losses = [13.7, 6.3, 7.1, 8.7, 6.7, 5.3, 5.7, 7.8, 8.7, 8.2]  # softmax, SGD lr 10 on digits
    history = [{"epoch": i + 1, "train_loss": v, "val_loss": v} for i, v in enumerate(losses)]
    found = diagnose(history, {"task": "classification"}, data_info=INFO)
    assert kinds(found)[0] == "lr_too_high"
    evidence = found[0]["evidence"]
    assert "above 3x that of a uniform guess (2.3)" in evidence and "rose from its lowest, 5.3 at epoch 6" in evidence
    assert "4 times in 9" in evidence


def test_lr_too_high_without_a_chance_level_uses_the_first_epoch():
    history = [{"epoch": e, "train_loss": v} for e, v in enumerate([1.0, 0.8, 5.0, 0.9], 1)]
    found = diagnose(history, {"task": "regression"}, config={"train": {"loss": "huber"}})
    assert "5.0x its first epoch's" in found[0]["evidence"]


def test_lr_too_low_when_the_loss_barely_moves_from_chance():
    history = curve(10, lambda e: 2.446 - 0.0003 * e, lambda e: 2.43, lambda e: 0.056, lambda e: 0.067)
    found = diagnose(history, {"task": "classification"}, data_info=INFO,
                     config={"train": {"optimizer": {"name": "sgd", "lr": 1e-6}}})
    assert "lr_too_low" in kinds(found)
    low = found[kinds(found).index("lr_too_low")]
    assert "0.1% change over 10 epochs" in low["evidence"] and "now 1e-06, sgd" in low["advice"]


def test_a_converged_run_is_not_lr_too_low():
    # L-BFGS: the first epoch already converges, the loss then barely changes
    history = curve(10, lambda e: 0.1, lambda e: 0.12, lambda e: 0.99, lambda e: 0.97)
    assert "lr_too_low" not in kinds(diagnose(history, SUMMARY, data_info=INFO))
    # it learned in epoch 1 and then stalled: not the learning rate's size either
    stalled = curve(10, lambda e: 1.0, lambda e: 1.0, lambda e: 0.7, lambda e: 0.7)
    assert "lr_too_low" not in kinds(diagnose(stalled, {"task": "classification"}, data_info=INFO))


def test_collapse_to_one_class():
    targets = torch.arange(200) % 10
    probs = torch.full((200, 10), 0.05)
    probs[:, 6] = 0.55
    probs[:3] = torch.eye(10)[[1, 2, 3]] * 0.9 + 0.01  # three samples predicted otherwise
    found = diagnose(healthy_history(10), SUMMARY, predictions=predictions_from(probs, targets), data_info=INFO, config=CONFIG)
    assert "collapse" in kinds(found)
    evidence = found[kinds(found).index("collapse")]["evidence"]
    assert "class '6' for 197 of 200 validation samples (98.5%; 4 distinct classes" in evidence
    assert "only 10.0%" in evidence


def test_one_class_that_is_most_of_the_data_is_not_collapse():
    targets = torch.tensor([0] * 190 + [1] * 10)
    probs = torch.tensor([[0.9, 0.1]]).repeat(200, 1)
    assert "collapse" not in kinds(diagnose(healthy_history(5), SUMMARY, predictions=predictions_from(probs, targets),
                                            data_info={"classes": ["a", "b"]}))


def test_poor_calibration_of_an_overconfident_model():
    found = diagnose(healthy_history(), SUMMARY, predictions=calibrated(confidence=0.99, accuracy=0.8),
                     data_info=INFO, config=CONFIG)
    assert kinds(found) == ["poor_calibration"]
    evidence = found[0]["evidence"]
    assert "mean confidence is 99.0% but the accuracy 80.0%" in evidence and "0.190" in evidence
    assert "overconfident" in evidence and "Raise `train.label_smoothing` from 0 to 0.1" in found[0]["advice"]
    good = diagnose(healthy_history(), SUMMARY, predictions=calibrated(confidence=0.95, accuracy=0.95), data_info=INFO)
    assert kinds(good) == ["healthy"]
    few = diagnose(healthy_history(), SUMMARY, predictions=calibrated(n=50, confidence=0.99, accuracy=0.8), data_info=INFO)
    assert "poor_calibration" not in kinds(few)  # 50 samples: too few to judge


def test_vanishing_and_exploding_gradients_from_the_records():
    from deepworks.training.gradients import EXPLODING

    records = [{"step": s, "epoch": 1, "norms": {"net.0": 1e-9, "net.2": 0.01, "net.4": 0.5}} for s in range(1, 11)]
    found = diagnose(healthy_history(), SUMMARY, gradients=records, data_info=INFO,
                     config={"model": {"activation": "sigmoid"}})
    assert kinds(found) == ["vanishing_gradients"]
    assert "'net.0' had a gradient norm under 0.001 of the largest layer's in 10 of 10 records" in found[0]["evidence"]
    assert "`model.activation` is sigmoid" in found[0]["advice"]

    records[3]["norms"]["net.4"] = 10 * EXPLODING
    records[5]["norms"]["net.2"] = float("inf")
    found = diagnose(healthy_history(), SUMMARY, gradients=records, data_info=INFO)
    assert kinds(found) == ["exploding_gradients", "vanishing_gradients"]
    assert "in 1 of 10 records" in found[0]["evidence"] and "`train.clip_grad_norm: 1.0`" in found[0]["advice"]

    once = [{"step": s, "norms": {"a": 1e-9 if s == 1 else 0.1, "b": 0.5}} for s in range(1, 11)]
    assert kinds(diagnose(healthy_history(), SUMMARY, gradients=once, data_info=INFO)) == ["healthy"]


def test_gradient_flags_in_the_summary_without_records():
    summary = {**SUMMARY, "gradients": {"vanishing": {"net.0": 5}, "exploding": {}}}
    found = diagnose(healthy_history(), summary, data_info=INFO)
    assert kinds(found) == ["vanishing_gradients"] and "at step 5" in found[0]["evidence"]


def test_healthy_states_the_key_figures():
    found = diagnose(healthy_history(), SUMMARY, data_info=INFO, config=CONFIG)
    assert kinds(found) == ["healthy"]
    assert "validation accuracy 97.0% (training 99.0%, a gap of 2.0 points)" in found[0]["evidence"]
    assert "kept model from epoch 20 of 20" in found[0]["evidence"]


CASES = {
    "overfitting": lambda: diagnose(overfit_history(), {"task": "classification"}, data_info=INFO),
    "underfitting": lambda: diagnose(curve(6, lambda e: 2 - 0.1 * e, lambda e: 2, lambda e: 0.2 + 0.1 * e, lambda e: 0.5),
                                     {"task": "classification"}),
    "lr_too_high": lambda: diagnose([{"epoch": 1, "train_loss": float("inf")}], None),
    "lr_too_low": lambda: diagnose(curve(5, lambda e: 2.3, lambda e: 2.3, lambda e: 0.1, lambda e: 0.1), None, data_info=INFO),
    "collapse": lambda: diagnose(healthy_history(), SUMMARY, data_info=INFO,
                                 predictions=predictions_from(torch.eye(10)[[0] * 100], torch.arange(100) % 10)),
    "poor_calibration": lambda: diagnose(healthy_history(), SUMMARY, predictions=calibrated(confidence=0.3, accuracy=0.9)),
    "vanishing_gradients": lambda: diagnose(healthy_history(), SUMMARY, gradients=[{"norms": {"a": 0.0, "b": 1.0}}]),
    "exploding_gradients": lambda: diagnose(healthy_history(), SUMMARY, gradients=[{"norms": {"a": float("nan")}}]),
    "behind_baseline": lambda: diagnose(
        healthy_history(), {**SUMMARY, "baselines": {"logistic_regression": {"val": {"accuracy": 0.99}}}}, data_info=INFO),
    "metrics_missing": lambda: diagnose([], None),
    "bad_data": lambda: diagnose([], None, error="the input batch itself contains NaN or inf values"),
    "healthy": lambda: diagnose(healthy_history(), None),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_entry_has_evidence_and_advice_naming_a_config_key(kind):
    found = CASES[kind]()
    assert kind in kinds(found)
    for f in found:
        assert set(f) == {"kind", "evidence", "advice"} and f["kind"] in dg.KINDS
        assert f["evidence"] and f["advice"]
        assert CONFIG_KEY.search(f["advice"]), f"{f['kind']}: no config key in {f['advice']!r}"
    json.dumps(found)  # summary.json can hold it


def test_every_kind_is_covered():
    assert set(CASES) == set(dg.KINDS)


def test_the_documented_thresholds_decide_on_either_side():
    """The numbers a user reads in the module doc hold at their edges: an expected calibration
    error of 0.09 is fine and 0.11 is poor (ECE_THRESHOLD 0.10; one confidence for every sample,
    so the ECE is |confidence - accuracy|); one class predicted for 89% of evenly spread
    samples (another for the rest) is not a collapse and 91% is (COLLAPSE_SHARE 0.90); a layer whose gradient vanished
    in 1 of 4 records is noise, in 2 of 4 it persists (GRAD_PERSIST 0.5)."""
    assert (dg.ECE_THRESHOLD, dg.COLLAPSE_SHARE, dg.GRAD_PERSIST) == (0.10, 0.90, 0.5)

    def found(**kw):
        return kinds(diagnose(healthy_history(), None, **kw))

    assert "poor_calibration" not in found(predictions=calibrated(confidence=0.95, accuracy=0.86))
    assert "poor_calibration" in found(predictions=calibrated(confidence=0.95, accuracy=0.84))
    targets = torch.arange(400) % 10

    def one_class(share):
        probs = torch.eye(10)[[0 if i < round(share * 400) else 1 for i in range(400)]].clamp(min=1e-3)
        return predictions_from(probs, targets)

    assert "collapse" not in found(predictions=one_class(0.89))
    assert "collapse" in found(predictions=one_class(0.91))
    ok, gone = {"norms": {"a": 1.0, "b": 1.0}}, {"norms": {"a": 0.0, "b": 1.0}}
    assert "vanishing_gradients" not in found(gradients=[gone, ok, ok, ok])
    assert "vanishing_gradients" in found(gradients=[gone, gone, ok, ok])


def test_behind_baseline_by_task():
    forecast = {"task": "forecasting", "val": {"mae": 0.9},
                "baselines": {"last_value": {"val": {"mae": 0.7}}, "seasonal_naive": {"val": {"mae": 1.6}}}}
    found = [f for f in diagnose(healthy_history(), forecast) if f["kind"] == "behind_baseline"]
    assert len(found) == 1 and "last_value" in found[0]["evidence"] and "data.difference" in found[0]["advice"]
    # within 5% of the best baseline's error, or ahead of it: nothing to say
    assert "behind_baseline" not in kinds(diagnose(healthy_history(), {**forecast, "val": {"mae": 0.73}}))
    # always predicting the majority class is underfitting's yardstick, not this rule's
    majority_only = {**SUMMARY, "baselines": {"majority_class": {"val": {"accuracy": 0.999}}}}
    assert "behind_baseline" not in kinds(diagnose(healthy_history(), majority_only, data_info=INFO))
    ahead = {**SUMMARY, "baselines": {"tfidf_logistic": {"val": {"accuracy": 0.5}}}}
    assert "behind_baseline" not in kinds(diagnose(healthy_history(), ahead, data_info=INFO))


def test_odd_records_are_skipped_not_fatal():
    # only odd records: no rule may fire on them (today the result is "healthy"; whether it should
    # say metrics_missing instead is evaluation/diagnosis.py's call, not this test's)
    history = [{"epoch": 1, "train_loss": "n/a"}, "garbage", {"no": "epoch"}, {"epoch": 2, "train_loss": None}]
    found = diagnose(history, {"gradients": "odd"}, predictions={"val": {"outputs": 1}}, gradients=[1, {"x": 2}])
    assert len(found) == 1 and kinds(found)[0] in {"healthy", "metrics_missing"}
    # odd records among good ones are skipped: the same diagnosis as without them
    clean = diagnose(overfit_history(), {"task": "classification"}, data_info=INFO, config=CONFIG)
    noisy = overfit_history()
    for at, odd in ((0, "garbage"), (5, {"no": "epoch"}), (12, {"epoch": "x", "train_loss": 1.0}), (20, None)):
        noisy.insert(at, odd)
    assert kinds(clean) == ["overfitting"]
    assert diagnose(noisy, {"task": "classification"}, data_info=INFO, config=CONFIG) == clean


def test_render_diagnosis_one_paragraph_each():
    text = render_diagnosis(diagnose(overfit_history(), {"task": "classification"}, data_info=INFO, config=CONFIG))
    lines = text.splitlines()
    assert lines[0] == "diagnosis:" and lines[1].startswith("  overfitting: The validation loss") and "Next: " in lines[1]


# ------------------------------------------------------------------ from a run directory's files


def write_run(path, history, summary=None, cut=False):
    path.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in history)
    (path / "metrics.jsonl").write_text(text[: len(text) - 40] if cut else text)
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    (path / "data.json").write_text(json.dumps(INFO))
    (path / "config.yaml").write_text("model: {name: mlp, dropout: 0.1}\ntrain: {epochs: 40, l2: 0.0}\n")
    return path


def test_diagnose_a_run_directory(tmp_path):
    run = write_run(tmp_path / "r", overfit_history(), {"task": "classification", "epochs_run": 40, "best_epoch": 10})
    found = deepworks.diagnose(run)
    assert kinds(found) == ["overfitting"] and "`model.dropout` from 0.1" in found[0]["advice"]


def test_diagnose_a_run_with_cut_short_or_missing_metrics(tmp_path):
    run = write_run(tmp_path / "cut", overfit_history(), {"task": "classification", "epochs_run": 40}, cut=True)
    found = deepworks.diagnose(run)
    assert found[0]["kind"] == "metrics_missing" and "line 40 of metrics.jsonl is cut short" in found[0]["evidence"].lower()
    assert "39 epoch(s) recorded" in found[0]["evidence"] and "overfitting" in kinds(found)

    short = write_run(tmp_path / "short", overfit_history()[:20], {"task": "classification", "epochs_run": 40})
    assert "summary.json says 40 epochs ran" in deepworks.diagnose(short)[0]["evidence"]

    (run / "metrics.jsonl").unlink()
    (run / "summary.json").write_text("{not json")
    assert kinds(deepworks.diagnose(run)) == ["metrics_missing"]
    with pytest.raises(CheckpointError):
        deepworks.diagnose(tmp_path / "nowhere")


# ------------------------------------------------------------------ real runs on digits


def test_an_over_parameterised_mlp_on_100_images_overfits(tmp_path):
    # 6% of digits for training (107 images), full batch, no dropout, no penalty: the
    # validation loss turns up after about ten epochs while the training loss heads to zero
    # (the acceptance case of the issue: 200 epochs, no regularisation)
    config = {
        "data": {"dataset": "digits", "val_fraction": 0.1, "test_fraction": 0.84},
        "model": {"name": "mlp", "hidden": [512, 512], "dropout": 0.0},
        "train": {"epochs": 200, "batch_size": 128, "progress": "none",
                  "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0}},
    }
    run = deepworks.train(config, run_dir=tmp_path / "r")
    assert run.summary["train"]["support"] < 120
    stored = json.loads((run.dir / "summary.json").read_text())["diagnosis"]
    assert stored == run.summary["diagnosis"] and kinds(stored) == ["overfitting"]
    evidence = stored[0]["evidence"]
    assert re.search(r"gap at the last epoch \(200\): loss [\d.e-]+ vs [\d.]+ \([\d.]+ apart\), accuracy 100\.0% vs", evidence)
    assert "at the best epoch" in evidence
    assert "`model.dropout` from 0" in stored[0]["advice"] and "`train.early_stopping" in stored[0]["advice"]
    assert kinds(deepworks.diagnose(run.dir)) == ["overfitting"]


def test_a_tiny_learning_rate_is_too_low(tmp_path):
    run = deepworks.train({"data": {"dataset": "digits"}, "model": {"name": "softmax"},
                           "train": {"epochs": 5, "progress": "none", "optimizer": {"name": "sgd", "lr": 1e-6}}},
                          run_dir=tmp_path / "r")
    found = run.summary["diagnosis"]
    assert {"lr_too_low", "underfitting"} <= set(kinds(found))
    assert not {"overfitting", "lr_too_high"} & set(kinds(found))
    low = found[kinds(found).index("lr_too_low")]
    assert "`train.optimizer.lr` (now 1e-06, sgd)" in low["advice"]


def test_sgd_with_lr_10_is_too_high_and_printed(tmp_path, capsys):
    run = deepworks.train({"data": {"dataset": "digits"}, "model": {"name": "softmax"},
                           "train": {"epochs": 5, "progress": "log", "optimizer": {"name": "sgd", "lr": 10}}},
                          run_dir=tmp_path / "r")
    found = run.summary["diagnosis"]
    assert kinds(found)[0] == "lr_too_high" and "`train.optimizer.lr` (now 10, sgd)" in found[0]["advice"]
    out = capsys.readouterr().out
    assert "diagnosis:\n  learning rate too high: " in out


def test_a_divergence_is_diagnosed_in_summary_json(tmp_path):
    class Poison(Callback):  # the weights turn NaN after epoch 1: the next step's loss is NaN
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 1:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError):
        deepworks.train({"data": {"dataset": "digits"}, "model": {"name": "softmax"},
                         "train": {"epochs": 3, "progress": "none", "optimizer": {"name": "sgd", "lr": 0.1}}},
                        run_dir=tmp_path / "r", callbacks=[Poison()])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "diverged" in summary and summary["epochs_run"] == 1
    assert kinds(summary["diagnosis"]) == ["lr_too_high"] and "epoch 2" in summary["diagnosis"][0]["evidence"]
    assert kinds(deepworks.diagnose(tmp_path / "r")) == ["lr_too_high"]


@pytest.mark.slow
def test_the_quickstart_run_is_healthy(tmp_path):
    run = deepworks.train(ROOT / "examples/configs/quickstart.yaml", run_dir=tmp_path / "r", train={"progress": "none"})
    found = run.summary["diagnosis"]
    assert not {"overfitting", "underfitting", "lr_too_high", "lr_too_low"} & set(kinds(found)), found


def test_a_rise_of_a_near_zero_validation_loss_is_not_overfitting():
    # quickstart-like: the validation loss goes from 0.034 to about 0.045 while the training loss
    # halves, a 30% rise of a loss far below chance (ln 10 = 2.3): a few samples' confidence
    val = [0.36, 0.11, 0.083, 0.080, 0.053, 0.046, 0.034, 0.047, 0.052, 0.039, 0.045, 0.054, 0.036, 0.046, 0.043]
    history = [{"epoch": e, "train_loss": 1.3 / e, "val_loss": v} for e, v in enumerate(val, 1)]
    assert "overfitting" not in kinds(diagnose(history, {"task": "classification"}, data_info=INFO))


# ------------------------------------------------------------------ advice follows the run's config values

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SECTION_KEY = re.compile(r"`((?:data|model|train|transfer|gan|tune)\.[a-z_.]*[a-z_])(?::[^`]*)?`")
BARE_KEY = re.compile(r"(?<![`\w.])(?:data|model|train)\.[a-z_]+")
DOWN = re.compile(r"\b(lower|less|fewer|smaller|reduce|decrease|shorter)\b", re.I)
UP = re.compile(r"\b(raise|more|longer|bigger|larger|increase|higher|add)\b", re.I)
CLAUSE_END = re.compile(r"[;.]\s|,\s")


def schema_field(config, path):
    """The test's own walk of the schema: Config's pydantic fields, and under `model` and
    `train.optimizer`/`train.schedule` the params schema registered under the block's name."""
    import deepworks.models  # noqa: F401
    from pydantic import BaseModel

    from deepworks.config import Config
    from deepworks.models.registry import MODELS
    from deepworks.training.optim import OPTIMIZERS
    from deepworks.training.schedules import SCHEDULES

    registries = {("model",): MODELS, ("train", "optimizer"): OPTIMIZERS, ("train", "schedule"): SCHEDULES}
    model, node, field = Config, config, None
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return None
        field = model.model_fields.get(part)
        if field is None and tuple(parts[:i]) in registries:
            params = registries[tuple(parts[:i])].entry(node["name"]).params
            field = params.model_fields.get(part) if params else None
        if field is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        model = next((t for t in _all_types(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return field


def _all_types(annotation):
    yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _all_types(arg)


def floor_and_ceiling(field):
    """The reachable bounds: ge (a gt floor is never reached) and le, also inside unions."""
    metadata = list(field.metadata)
    for t in _all_types(field.annotation):
        for m in getattr(t, "__metadata__", ()):
            metadata += list(getattr(m, "metadata", [m]))
    floor = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    ceiling = next((m.le for m in metadata if hasattr(m, "le")), None)
    return floor, ceiling


def value_at(config, path):
    node = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_advice(advice, config):
    """Every key the advice names exists in the schema, and none is to go below its floor or above its ceiling."""
    assert not BARE_KEY.findall(SECTION_KEY.sub("", advice)), f"a config key outside backticks: {advice}"
    for match in SECTION_KEY.finditer(advice):
        key = match.group(1)
        field = schema_field(config, key)
        assert field is not None, f"{key} is not a key of this run's schema (model {config['model']['name']}): {advice}"
        before = CLAUSE_END.split(advice[: match.start()])[-1]
        verbs = [(m.start(), "down") for m in DOWN.finditer(before)] + [(m.start(), "up") for m in UP.finditer(before)]
        if not verbs:
            continue
        direction = max(verbs)[1]
        value = value_at(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        floor, ceiling = floor_and_ceiling(field)
        if direction == "down":
            assert floor is None or value > floor, f"asks to lower {key}, already at its floor {floor}: {advice}"
        else:
            assert ceiling is None or value < ceiling, f"asks to raise {key}, already at its ceiling {ceiling}: {advice}"


MODEL_PARAMS = {
    "cnn": {"filters": [8], "hidden": [16]},
    "mlp": {"hidden": [32]},
    "softmax": {},
    "lstm": {"hidden": 16},
}


@st.composite
def run_configs(draw):
    from deepworks.config import load_config

    name = draw(st.sampled_from(sorted(MODEL_PARAMS)))
    model = {"name": name, **MODEL_PARAMS[name]}
    if name in ("cnn", "mlp"):
        model["dropout"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.7]))
        model["activation"] = draw(st.sampled_from(["relu", "tanh", "sigmoid"]))
        if name == "cnn":
            model["head_dropout"] = draw(st.sampled_from([0.0, 0.3, 0.9]))
            model["batch_norm"] = draw(st.booleans())
    if name == "lstm":
        model["head_dropout"] = draw(st.sampled_from([0.0, 0.2]))
        model["embedding_dropout"] = draw(st.sampled_from([0.0, 0.3]))
        model["pool"] = draw(st.sampled_from(["last", "max"]))
    data = {"dataset": "rotten-tomatoes"} if name == "lstm" else {"dataset": "digits"}
    if name == "lstm":
        data["min_freq"] = draw(st.sampled_from([1, 2]))
    data["sampler"] = draw(st.sampled_from(["shuffle", "balanced"]))
    early = draw(st.sampled_from([None, 1, 8]))
    train = {
        "epochs": draw(st.sampled_from([1, 2, 30, 100_000])),
        "optimizer": {"name": draw(st.sampled_from(["adamw", "sgd"])), "lr": draw(st.sampled_from([1e-4, 0.002, 0.5])),
                      "weight_decay": draw(st.sampled_from([0.0, 0.01]))},
        "label_smoothing": draw(st.sampled_from([0.0, 0.05, 0.1, 0.3])),
        "l1": draw(st.sampled_from([0.0, 1e-5])),
        "l2": draw(st.sampled_from([0.0, 1e-4])),
        "clip_grad_norm": draw(st.sampled_from([None, 1.0])),
        "warmup_steps": draw(st.sampled_from([0, 100])),
        "class_weights": draw(st.sampled_from([None, "balanced"])),
        "early_stopping": None if early is None else {"monitor": "val_loss", "patience": early},
    }
    return load_config({"data": data, "model": model, "train": train}).model_dump(mode="json")


def loss_curves(draw, n):
    shape = draw(st.sampled_from(["falling", "flat", "overfit", "rising", "oscillating", "nan"]))
    start = draw(st.sampled_from([0.5, 2.3, 9.0]))
    out = []
    for e in range(1, n + 1):
        train = {"falling": start * math.exp(-0.3 * e), "flat": start * (1 - 0.001 * e), "overfit": start * math.exp(-0.3 * e),
                 "rising": start * (1 + 0.5 * e), "oscillating": start * (1.5 if e % 2 else 0.7),
                 "nan": start if e < n else float("nan")}[shape]
        val = train * 1.1 if shape != "overfit" else 0.3 + 0.01 * (e - n // 3) ** 2
        out.append((train, val))
    return out


@st.composite
def runs(draw):
    config = draw(run_configs())
    n = draw(st.integers(1, 12))
    accuracy = draw(st.floats(0.05, 0.999))
    history = []
    for e, (tl, vl) in enumerate(loss_curves(draw, n), start=1):
        history.append({"epoch": e, "train_loss": tl, "val_loss": vl, "train_accuracy": min(1.0, accuracy * e / n + 0.01),
                        "val_accuracy": accuracy * e / n, "best": e == n})
    tokens = config["model"]["name"] == "lstm"
    k = 2 if tokens else 10
    summary = {"task": "classification", "train": {"accuracy": draw(st.floats(0.05, 1.0))}, "val": {"accuracy": accuracy},
               "best_epoch": n, "epochs_run": n, "stopped_early": draw(st.booleans())}
    if draw(st.booleans()):
        summary["baselines"] = {"majority_class": {"val": {"accuracy": 1 / k}},
                                "logistic_regression": {"val": {"accuracy": draw(st.floats(0.1, 1.0))}}}
    data_info = {"classes": [str(i) for i in range(k)]}
    data_info.update({"input": {"kind": "tokens"}} if tokens else {"input_shape": [1, 8, 8]})
    predictions = None
    if draw(st.booleans()):
        confidence = draw(st.floats(1 / k + 0.01, 0.999))
        predictions = calibrated(k=k, confidence=confidence, accuracy=draw(st.floats(0.0, 1.0)), seed=draw(st.integers(0, 3)))
    gradients = None
    if draw(st.booleans()):
        tiny, huge = draw(st.sampled_from([1e-9, 0.1])), draw(st.sampled_from([0.5, 1e6]))
        gradients = [{"step": s, "norms": {"net.0": tiny, "net.2": huge}} for s in range(1, 6)]
    error = draw(st.sampled_from([None, None, "the loss became nan at step 3. Fix: lower the learning rate"]))
    return history, summary, predictions, gradients, data_info, config, error


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(runs())
def test_advice_names_real_keys_and_never_pushes_one_past_its_bound(run):
    history, summary, predictions, gradients, data_info, config, error = run
    findings = diagnose(history, summary, predictions=predictions, gradients=gradients, data_info=data_info,
                        config=config, error=error)
    for finding in findings:
        check_advice(finding["advice"], config)


def test_the_checker_catches_what_it_looks_for():
    # the property above is only as good as check_advice: it must fail on each kind of bad advice
    from deepworks.config import load_config

    config = load_config({"data": {"dataset": "digits"}, "model": {"name": "mlp", "hidden": [8], "dropout": 0.0},
                          "train": {"epochs": 100_000, "label_smoothing": 0.0}}).model_dump(mode="json")
    for bad in ("Lower `train.label_smoothing`, or train longer.",
                "Train longer (`train.epochs`).",
                "try a smaller model with less dropout (`model.dropout`)",
                "use a bigger model (`model.filters`)",  # the MLP has no filters key
                "raise `train.nonsense` from 1",
                "set train.clip_grad_norm to 1"):
        with pytest.raises(AssertionError):
            check_advice(bad, config)
    check_advice("Lower `train.optimizer.lr` (now 0.001, adamw) by 10x, or set `train.clip_grad_norm: 1.0`.", config)


def test_underconfidence_with_no_label_smoothing_says_train_longer_not_lower_it():
    # the quickstart after 2 epochs: underconfident, label smoothing already 0
    from deepworks.config import load_config

    config = load_config(ROOT / "examples/configs/quickstart.yaml", ["train.epochs=2"]).model_dump(mode="json")
    assert config["train"]["label_smoothing"] == 0.0
    found = diagnose(healthy_history(2), {**SUMMARY, "epochs_run": 2, "best_epoch": 2},
                     predictions=calibrated(confidence=0.6, accuracy=0.95), data_info=INFO, config=config)
    assert kinds(found) == ["poor_calibration"] and "underconfident" in found[0]["evidence"]
    advice = found[0]["advice"]
    assert "label_smoothing" not in advice and "raise `train.epochs` from 2" in advice, advice
    smoothed = {**config, "train": {**config["train"], "label_smoothing": 0.2}}
    found = diagnose(healthy_history(2), {**SUMMARY, "epochs_run": 2, "best_epoch": 2},
                     predictions=calibrated(confidence=0.6, accuracy=0.95), data_info=INFO, config=smoothed)
    assert "Lower `train.label_smoothing` from 0.2" in found[0]["advice"]
