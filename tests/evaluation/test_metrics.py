"""Metrics: scikit-learn is the oracle; accumulation, checkpoint state and rendering."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from deepworks.errors import DataError
from deepworks.evaluation import MetricAccumulator, classification_report, render_report


def sk_scores(y_true, y_pred, k):
    """Everything we report, computed by scikit-learn."""
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    _, _, wf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_precision": mp,
        "macro_recall": mr,
        "macro_f1": mf,
        "weighted_f1": wf,
        "precision": p,
        "recall": r,
        "f1": f,
        "support": s,
        "confusion": sk_confusion(y_true, y_pred, labels),
    }


def sk_confusion(y_true, y_pred, labels):
    with warnings.catch_warnings():  # sklearn warns on any 1x1 matrix, even with labels given
        warnings.filterwarnings("ignore", message="A single label was found")
        return confusion_matrix(y_true, y_pred, labels=labels)


def one_hot_logits(preds, k):
    """Logits whose argmax is ``preds``."""
    return torch.nn.functional.one_hot(torch.as_tensor(preds, dtype=torch.int64), k).float()


def accumulate(y_true, y_pred, k, batch_size=None):
    acc = MetricAccumulator(k)
    y, p = torch.as_tensor(y_true, dtype=torch.int64), torch.as_tensor(y_pred, dtype=torch.int64)
    step = batch_size or max(len(y), 1)
    for i in range(0, len(y), step):
        acc.update(one_hot_logits(p[i : i + step], k), y[i : i + step])
    return acc


def assert_matches_sklearn(report, acc_metrics, y_true, y_pred, k):
    sk = sk_scores(y_true, y_pred, k)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert report[key] == pytest.approx(sk[key], abs=1e-12), key
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert acc_metrics[key] == pytest.approx(sk[key], abs=1e-12), key
    assert [c["precision"] for c in report["per_class"]] == pytest.approx(sk["precision"].tolist(), abs=1e-12)
    assert [c["recall"] for c in report["per_class"]] == pytest.approx(sk["recall"].tolist(), abs=1e-12)
    assert [c["f1"] for c in report["per_class"]] == pytest.approx(sk["f1"].tolist(), abs=1e-12)
    assert [c["support"] for c in report["per_class"]] == sk["support"].tolist()
    assert report["confusion_matrix"] == sk["confusion"].tolist()
    assert report["support"] == len(y_true)


# ---------------------------------------------------------------- against scikit-learn


def test_never_predicted_and_absent_classes_match_sklearn():
    # class 2 is never predicted (precision 0); class 3 never occurs in the targets
    # (recall 0) but is predicted once; both count in the macro average
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 0, 1]
    y_pred = [0, 1, 0, 1, 1, 0, 1, 3, 0, 1]
    acc = accumulate(y_true, y_pred, 4)
    report = classification_report(acc.confusion(), ["a", "b", "c", "d"])
    assert_matches_sklearn(report, acc.compute(), y_true, y_pred, 4)
    assert report["per_class"][2]["precision"] == 0.0
    assert report["per_class"][3]["recall"] == 0.0 and report["per_class"][3]["support"] == 0
    np.testing.assert_array_equal(acc.confusion(), confusion_matrix(y_true, y_pred, labels=range(4)))


def test_class_absent_everywhere_counts_as_zero_in_macro_average():
    y_true, y_pred = [0, 1, 1, 0], [0, 1, 0, 0]
    acc = accumulate(y_true, y_pred, 3)  # class 2: no targets, no predictions
    report = classification_report(acc.confusion(), ["x", "y", "z"])
    assert_matches_sklearn(report, acc.compute(), y_true, y_pred, 3)
    assert report["per_class"][2] == {"class": "z", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_random_logits_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g)
    targets = torch.randint(0, 7, (500,), generator=g)
    acc = MetricAccumulator(7)
    acc.update(logits, targets)
    report = classification_report(acc.confusion(), [f"c{i}" for i in range(7)])
    assert_matches_sklearn(report, acc.compute(), targets.tolist(), logits.argmax(1).tolist(), 7)


@settings(max_examples=50, deadline=None)
@given(
    data=st.integers(min_value=1, max_value=6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60),
            st.integers(min_value=1, max_value=17),
        )
    )
)
def test_property_matches_sklearn(data):
    k, pairs, batch_size = data
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    acc = accumulate(y_true, y_pred, k, batch_size=batch_size)
    report = classification_report(acc.confusion(), [str(i) for i in range(k)])
    assert_matches_sklearn(report, acc.compute(), y_true, y_pred, k)
    assert acc.count == len(pairs)


def test_compute_and_report_share_the_math():
    g = torch.Generator().manual_seed(1)
    acc = MetricAccumulator(5)
    acc.update(torch.randn(64, 5, generator=g), torch.randint(0, 5, (64,), generator=g), torch.tensor(0.7))
    metrics = acc.compute()
    report = classification_report(acc.confusion(), list("abcde"), loss=metrics["loss"])
    assert set(metrics) == {"loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"}
    for key, value in metrics.items():
        assert report[key] == value


# ---------------------------------------------------------------- accumulation


def test_several_batches_equal_one_batch():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(103, 4, generator=g)
    targets = torch.randint(0, 4, (103,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()
    whole = MetricAccumulator(4)
    whole.update(logits, targets, loss_fn(logits, targets))
    parts = MetricAccumulator(4)
    for lo, hi in [(0, 1), (1, 33), (33, 64), (64, 103)]:  # uneven batches, one of size 1
        parts.update(logits[lo:hi], targets[lo:hi], loss_fn(logits[lo:hi], targets[lo:hi]))
    np.testing.assert_array_equal(parts.confusion(), whole.confusion())
    assert parts.count == whole.count == 103
    a, b = parts.compute(), whole.compute()
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert {k: v for k, v in a.items() if k != "loss"} == {k: v for k, v in b.items() if k != "loss"}


def test_loss_is_the_sample_weighted_mean():
    acc = MetricAccumulator(2)
    acc.update(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int64), torch.tensor(1.0))
    acc.update(torch.zeros(6, 2), torch.zeros(6, dtype=torch.int64), torch.tensor(3.0))
    assert acc.compute()["loss"] == pytest.approx((2 * 1.0 + 6 * 3.0) / 8)


def test_loss_that_requires_grad_is_detached():
    w = torch.tensor(2.0, requires_grad=True)
    acc = MetricAccumulator(2)
    acc.update(torch.zeros(3, 2, requires_grad=True), torch.tensor([0, 1, 0]), w * 0.5)
    assert acc.compute()["loss"] == pytest.approx(1.0)
    assert not any(t.requires_grad for t in acc.state_dict().values())


def test_loss_none_when_never_given_and_mean_over_batches_that_had_one():
    acc = MetricAccumulator(3)
    acc.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert acc.compute()["loss"] is None
    acc.update(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor(0.25))
    assert acc.compute()["loss"] == pytest.approx(0.25)
    assert acc.count == 6


def test_empty_accumulator_computes_zeros():
    acc = MetricAccumulator(3)
    acc.update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert acc.count == 0
    assert acc.compute() == {"loss": None, "accuracy": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0}
    assert acc.confusion().shape == (3, 3) and acc.confusion().dtype == np.int64


def test_reset():
    acc = MetricAccumulator(3)
    acc.update(torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.tensor(1.5))
    acc.reset()
    assert acc.count == 0
    assert acc.confusion().sum() == 0
    assert acc.compute()["loss"] is None
    acc.update(one_hot_logits([2], 3), torch.tensor([2]), torch.tensor(0.5))
    assert acc.compute()["accuracy"] == 1.0 and acc.compute()["loss"] == 0.5


def test_confusion_is_a_copy():
    acc = MetricAccumulator(2)
    acc.update(one_hot_logits([0, 1], 2), torch.tensor([0, 1]))
    cm = acc.confusion()
    cm[:] = 99
    assert acc.confusion().tolist() == [[1, 0], [0, 1]]


# ---------------------------------------------------------------- checkpoint state


def test_state_dict_round_trip_through_safetensors_continues_identically(tmp_path):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(80, 5, generator=g)
    targets = torch.randint(0, 5, (80,), generator=g)
    losses = torch.rand(8, generator=g)
    original = MetricAccumulator(5)
    for i in range(4):
        original.update(logits[i * 10 : (i + 1) * 10], targets[i * 10 : (i + 1) * 10], losses[i])
    state = original.state_dict()
    save_file(state, tmp_path / "acc.safetensors")  # what a checkpoint does
    resumed = MetricAccumulator(5)
    resumed.load_state_dict(load_file(tmp_path / "acc.safetensors"))
    assert resumed.count == original.count == 40
    for i in range(4, 8):
        for acc in (original, resumed):
            acc.update(logits[i * 10 : (i + 1) * 10], targets[i * 10 : (i + 1) * 10], losses[i])
    np.testing.assert_array_equal(resumed.confusion(), original.confusion())
    assert resumed.compute() == original.compute()  # bit for bit, loss included
    # the saved state is a snapshot, not a view of the running sums
    assert int(state["count"]) == 40 and int(state["confusion"].sum()) == 40


def test_an_empty_matrix_reports_zeros_like_zero_division_0():
    report = classification_report(np.zeros((3, 3), dtype=int), ["a", "b", "c"])
    assert report["accuracy"] == report["macro_f1"] == report["weighted_f1"] == 0.0 and report["support"] == 0


def test_the_loss_is_summed_in_float64_on_the_cpu():
    # a float32 running sum would report float32(0.1) = 0.10000000149...
    acc = MetricAccumulator(2)
    acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.tensor(0.1, dtype=torch.float64))
    assert acc.compute()["loss"] == 0.1
    # a float32 batch loss is widened before it is multiplied by the batch size (float32 0.1 * 3 would round)
    acc = MetricAccumulator(2)
    loss32 = torch.tensor(0.1, dtype=torch.float32)
    acc.update(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 1, 0]), loss32)
    assert acc.compute()["loss"] == float(loss32)
    # a plain Python number is a loss too
    acc = MetricAccumulator(2)
    acc.update(torch.tensor([[1.0, 0.0]] * 2), torch.tensor([0, 1]), 0.25)
    acc.update(torch.tensor([[0.0, 1.0]] * 2), torch.tensor([1, 1]), 0.75)
    assert acc.compute()["loss"] == 0.5


def test_load_state_dict_accepts_other_integer_and_float_dtypes():
    # a state written by another tool (int32 counts, a float32 loss sum) continues like the original:
    # the counts become int64 again, so later batches can be added to them
    y_true, y_pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    first = accumulate(y_true, y_pred, 3)
    state = {k: (v.to(torch.int32) if k == "confusion" else v.to(torch.float32) if k == "loss_sum" else v)
             for k, v in first.state_dict().items()}
    resumed = MetricAccumulator(3)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["confusion"].dtype == torch.int64
    assert resumed.state_dict()["loss_sum"].dtype == torch.float64 and resumed.state_dict()["count"].dtype == torch.int64
    more_true, more_pred = [1, 0], [1, 1]
    resumed.update(torch.nn.functional.one_hot(torch.tensor(more_pred), 3).float(), torch.tensor(more_true))
    assert np.array_equal(resumed.confusion(), confusion_matrix(y_true + more_true, y_pred + more_pred, labels=[0, 1, 2]))


def test_load_state_dict_refuses_wrong_class_count_and_missing_keys():
    state = MetricAccumulator(3).state_dict()
    with pytest.raises(ValueError, match="3 classes|shape"):
        MetricAccumulator(4).load_state_dict(state)
    del state["loss_sum"]
    with pytest.raises(KeyError, match="loss_sum"):
        MetricAccumulator(3).load_state_dict(state)


# ---------------------------------------------------------------- bad input


def test_bad_shapes_and_dtypes_are_refused():
    acc = MetricAccumulator(3)
    with pytest.raises(ValueError, match="logits"):
        acc.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        acc.update(torch.randn(4, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="targets"):
        acc.update(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="loss"):
        acc.update(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), torch.zeros(4))
    with pytest.raises(ValueError):
        MetricAccumulator(0)
    assert acc.count == 0


def test_targets_out_of_range_fail_at_the_batch_on_cpu():
    acc = MetricAccumulator(3)
    with pytest.raises(DataError, match=r"\[-1, 3\]"):
        acc.update(torch.randn(4, 3), torch.tensor([0, 3, -1, 1]))
    assert acc.count == 0 and acc.confusion().sum() == 0


def test_targets_out_of_range_are_reported_by_compute_on_accelerators():
    acc = MetricAccumulator(3)
    acc._check_eagerly = False  # what a GPU accumulator does: no host read in update
    acc.update(torch.randn(4, 3), torch.tensor([0, 3, -1, 1]))
    with pytest.raises(DataError, match="2 of the 4 targets"):
        acc.compute()


def test_classification_report_validates_input():
    with pytest.raises(ValueError, match="classes"):
        classification_report(np.eye(3, dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        classification_report(np.zeros((2, 3), dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="non-negative"):
        classification_report(np.array([[1, -1], [0, 1]]), ["a", "b"])


# ---------------------------------------------------------------- report


def test_report_is_json_serialisable_and_accepts_tensors():
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    report = classification_report(cm, ["cat", "dog", "bird"], loss=0.5)
    assert json.loads(json.dumps(report)) == report
    assert report["loss"] == 0.5 and report["classes"] == ["cat", "dog", "bird"]
    assert report["confusion_matrix"] == [[5, 1, 0], [2, 3, 0], [0, 0, 0]]
    assert type(report["support"]) is int and report["support"] == 11
    assert all(type(v) is int for row in report["confusion_matrix"] for v in row)
    assert "loss" not in classification_report(cm, ["cat", "dog", "bird"])


def render_text(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_render_report_shows_classes_accuracy_and_matrix():
    y_true = [0, 0, 1, 1, 2, 2, 2, 0]
    y_pred = [0, 1, 1, 1, 2, 0, 2, 0]
    acc = accumulate(y_true, y_pred, 3)
    classes = ["cat", "[red]dog", "a_very_long_class_name"]
    report = classification_report(acc.confusion(), classes, loss=0.4321)
    text = render_text(render_report(report, title="digits - test split"))
    assert "digits - test split" in text
    assert f"{report['accuracy']:.4f}" in text and "0.4321" in text
    assert "cat" in text and "[red]dog" in text  # markup in names is shown, not applied
    assert "a_very_long_class_name" in text  # per-class table: full name
    assert "a_very_lo…" in text  # matrix headers: clipped
    assert "confusion matrix" in text


def test_render_report_from_json_without_loss_and_with_many_classes():
    k = 30
    cm = np.eye(k, dtype=int) * 3
    report = json.loads(json.dumps(classification_report(cm, [f"class{i}" for i in range(k)])))
    text = render_text(render_report(report))
    assert "class29" in text and "1.0000" in text
    assert "too many to show" in text


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("deterministic", [False, True])
def test_update_does_not_sync_the_gpu(deterministic):
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        logits = torch.randn(256, 10, device="cuda")
        targets = torch.randint(0, 10, (256,), device="cuda")
        loss = torch.nn.functional.cross_entropy(logits, targets)
        acc = MetricAccumulator(10, "cuda")
        acc.update(logits, targets, loss)  # warm-up: allocations, lazy init
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                acc.update(logits, targets, loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cpu = MetricAccumulator(10)
        for _ in range(4):
            cpu.update(logits.cpu(), targets.cpu(), loss.cpu())
        np.testing.assert_array_equal(acc.confusion(), cpu.confusion())
        assert acc.compute()["loss"] == pytest.approx(cpu.compute()["loss"])
    finally:
        torch.use_deterministic_algorithms(was, warn_only=True)
