"""Quality and collapse measures of generated images (deepworks.evaluation.generative) and their
judge (deepworks.judge): the Fréchet distance against closed forms, coverage, entropy and label
agreement by hand, and a small judge trained on digits judging real held-out images."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from deepworks import pipeline
from deepworks.errors import CheckpointError, DataError
from deepworks.evaluation.generative import (
    ModeCollapseWarning, class_coverage, collapse_finding, feature_frechet_distance, frechet_distance,
    judge_generator, label_agreement, render_quality,
)
from deepworks.judge import judge_config, judge_epochs, judge_for, load_judge

# ----------------------------------------------------------------------------- Fréchet distance


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(0)
    sigma, mu1, mu2 = _spd(rng, 6), rng.normal(size=6), rng.normal(size=6)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-7, abs=1e-9)


def test_frechet_diagonal_and_rotated_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # the same closed form in a rotated basis
    assert frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-7)


def test_frechet_general_covariances_against_the_symmetric_form():
    # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), computed here with eigendecompositions only
    rng = np.random.default_rng(2)
    s1, s2, mu1, mu2 = _spd(rng, 7), _spd(rng, 7), rng.normal(size=7), rng.normal(size=7)
    r1 = _sqrt_psd(s1)
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(_sqrt_psd(r1 @ s2 @ r1)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_one_dimension_and_a_point_mass():
    rng = np.random.default_rng(3)
    x, y = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-0.5, 0.7, size=(400, 1))
    expected = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert feature_frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    # identical samples: a zero covariance, a singular product, still the closed form |dmu|^2 + tr(S1)
    sigma, mu = _spd(rng, 4), rng.normal(size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = frechet_distance(mu, sigma, np.zeros(4), np.zeros((4, 4)))
    assert got == pytest.approx(float(mu @ mu + np.trace(sigma)), rel=1e-4)


def test_frechet_refuses_mismatched_sizes():
    with pytest.raises(DataError, match="agree in size"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- coverage, agreement, collapse


def test_coverage_and_entropy_by_hand():
    c = class_coverage(np.array([0] * 6 + [1] * 3 + [2]), num_classes=4)
    # N = 10, K = 4: a class is covered from 0.25 * 10 / 4 = 0.625 samples; class 3 has none
    assert c["counts"] == [6, 3, 1, 0] and c["classes_covered"] == 3 and c["coverage"] == 0.75
    entropy = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert c["entropy"] == pytest.approx(entropy) and c["entropy_normalized"] == pytest.approx(entropy / math.log(4))
    assert (c["largest_class"], c["largest_share"]) == (0, 0.6)
    # 40 samples over 10 classes: the bar is 1 sample; 2 samples of a class out of 100 (bar 2.5) is not covered
    assert class_coverage(np.arange(40) % 10, 10)["coverage"] == 1.0
    skewed = np.array([0, 0] + [k for k in range(1, 10) for _ in range(11)])
    assert class_coverage(skewed, 10)["classes_covered"] == 9
    single = class_coverage(np.zeros(5, dtype=int), 3)
    assert single["entropy"] == 0.0 and single["largest_share"] == 1.0


def test_label_agreement_by_hand():
    a = label_agreement(np.array([0, 0, 0, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1]), num_classes=3)
    assert a["per_label"] == {0: 0.75, 1: 0.5} and a["samples_per_label"] == [4, 2, 0]
    assert a["mean"] == 0.625 and a["min"] == 0.5
    with pytest.raises(DataError, match="one label per sample"):
        label_agreement(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(DataError, match=r"0\.\.2"):
        label_agreement(np.array([0, 1]), np.array([0, 3]), 3)


def test_collapse_rules():
    classes = [str(k) for k in range(10)]
    two = collapse_finding(class_coverage(np.arange(100) % 2, 10), classes)
    assert two["collapsed"] and "only 2 of 10 classes" in two["reasons"][0] and "wgan-gp" in two["advice"]
    assert not collapse_finding(class_coverage(np.arange(100) % 10, 10), classes)["collapsed"]
    heavy = np.concatenate([np.zeros(60, dtype=int), np.arange(40) % 10])  # all covered, '0' takes 64%
    found = collapse_finding(class_coverage(heavy, 10), classes)
    assert found["collapsed"] and found["reasons"] == ["class '0' takes 64% of the samples (more than 50%)"]
    alike = collapse_finding(class_coverage(np.arange(100) % 10, 10), classes, spread_ratio=0.1)
    assert alike["collapsed"] and "nearly alike" in alike["reasons"][0]
    # two classes: 70/30 is a healthy imbalance, 80/20 is not
    assert not collapse_finding(class_coverage(np.array([0] * 70 + [1] * 30), 2), ["a", "b"])["collapsed"]
    assert collapse_finding(class_coverage(np.array([0] * 80 + [1] * 20), 2), ["a", "b"])["collapsed"]


def test_judge_epochs_rule():
    assert judge_epochs(1257) == 30 and judge_epochs(51000) == 11 and judge_epochs(6400) == 30
    assert judge_epochs(32000) == 16 and judge_epochs(320000) == 5  # 500 steps per epoch: 8,000 steps


# ----------------------------------------------------------------------------- a judge trained on digits


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    cache = tmp_path_factory.mktemp("judges")
    judge = judge_for({"data": {"dataset": "digits"}}, cache_dir=cache, device="cpu", epochs=4)
    return judge, cache


def test_judge_on_real_held_out_images(judged):
    judge, _ = judged
    assert judge.run_dir.parent.name == judged[1].name and judge.real.dtype == torch.uint8
    assert judge.real.shape == (270, 1, 8, 8)  # the judge's test split: 15% of 1,797
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModeCollapseWarning)
        result = judge_generator(judge.real, judge, labels=judge.real_labels)
    assert result["coverage"] == 1.0 and result["entropy_normalized"] > 0.99 and not result["collapse"]["collapsed"]
    assert result["frechet_distance"] == pytest.approx(0.0, abs=1e-6) and result["frechet_real_halves"] > 0
    assert result["spread_ratio"] == pytest.approx(1.0)
    # per label, the agreement on real images is the judge's recall of that class in its own test report
    # (there computed under bf16 autocast on some CPUs, here in fp32: at most one image apart per class)
    report = json.loads((judge.run_dir / "test_report.json").read_text())
    counts = np.bincount(judge.real_labels.numpy(), minlength=10)
    recalls = {row["class"]: row["recall"] for row in report["per_class"]}
    for k, name in enumerate(judge.classes):
        recall = recalls[name]
        assert abs(result["label_agreement"]["per_label"][name] - recall) <= 1 / counts[k] + 1e-9
    assert result["label_agreement"]["mean"] > 0.85
    text = render_quality(result)
    assert "not FID" in text and "classes covered: 10/10" in text and "label agreement: mean" in text


def test_images_are_fed_as_the_judge_was_trained(judged):
    judge, _ = judged
    test = pipeline.prepare_data(judge_config({"data": {"dataset": "digits"}})).test
    assert torch.allclose(judge.to_input(test.x), test.inputs(), atol=1e-6)  # the pipeline's own normalisation
    as_float = test.x.float() * judge.scale * 2 - 1  # the same pixels in [-1, 1]
    f_uint8, p_uint8 = judge.features(test.x)
    f_float, p_float = judge.features(as_float)
    assert np.allclose(f_uint8, f_float, atol=1e-5) and (p_uint8 == p_float).all()
    assert f_uint8.shape == (270, 128)  # the cnn's dense head: the input of its final Linear


def test_bad_samples_are_refused(judged):
    judge, _ = judged
    with pytest.raises(DataError, match=r"\(N, 1, 8, 8\).*\(5, 1, 16, 16\)"):
        judge_generator(torch.zeros(5, 1, 16, 16), judge)
    with pytest.raises(DataError, match=r"\[-1, 1\].*0 to 2"):
        judge_generator(torch.linspace(0, 2, 64).reshape(1, 1, 8, 8).repeat(4, 1, 1, 1), judge)
    with pytest.raises(DataError, match=r"0\.\.16.*255"):
        judge_generator(torch.full((4, 1, 8, 8), 255, dtype=torch.uint8), judge)
    with pytest.raises(DataError, match="dtype torch.int64"):
        judge_generator(torch.zeros(4, 1, 8, 8, dtype=torch.int64), judge)
    with pytest.raises(DataError, match="NaN"):
        judge_generator(torch.full((4, 1, 8, 8), float("nan")), judge)


def test_a_generator_that_ignores_its_noise_collapses(judged):
    judge, _ = judged
    same = judge.real[:1].repeat(200, 1, 1, 1)  # one image, whatever the noise
    with pytest.warns(ModeCollapseWarning, match="only 1 of 10 classes"):
        result = judge_generator(same, judge)
    found = result["collapse"]
    assert found["collapsed"] and len(found["reasons"]) == 3
    assert result["spread_ratio"] == 0.0 and result["largest_share"] == 1.0
    assert result["frechet_distance"] > 5 * result["frechet_real_halves"]
    assert "WARNING mode collapse" in render_quality(result)


def test_a_conditional_generator_that_ignores_its_noise_collapses(judged):
    # one image per label, whatever the noise: every class covered evenly, labels obeyed, yet no variety
    judge, _ = judged
    predicted = torch.from_numpy(judge.features(judge.real)[1])
    right = predicted == judge.real_labels  # images the judge reads correctly: the spread is within predicted classes
    first = torch.tensor([int(torch.nonzero((judge.real_labels == k) & right)[0]) for k in range(10)])
    labels = torch.arange(10).repeat(20)
    with pytest.warns(ModeCollapseWarning, match="nearly alike"):
        result = judge_generator(judge.real[first][labels], judge, labels=labels)
    assert result["coverage"] == 1.0 and result["largest_share"] <= 0.2
    assert result["collapse"]["collapsed"] and len(result["collapse"]["reasons"]) == 1
    assert result["spread_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_samples_of_two_classes_cover_a_fifth(judged):
    judge, _ = judged
    # real images of classes 0 and 1 that the judge also reads as 0 or 1: samples of two classes
    _, predicted = judge.features(judge.real)
    keep = (judge.real_labels < 2).numpy() & (predicted < 2)
    with pytest.warns(ModeCollapseWarning, match="only 2 of 10 classes"):
        result = judge_generator(judge.real[keep], judge, labels=judge.real_labels[keep])
    assert result["coverage"] == 0.2 and result["classes_covered"] == 2 and result["collapse"]["collapsed"]
    assert set(result["label_agreement"]["per_label"]) == {"0", "1"}


def test_a_mismatched_judge_is_refused(judged):
    judge, _ = judged
    with pytest.raises(DataError, match=r"gan\.judge.*images 1x8x8.*this data: 1x16x16.*data\.image_size"):
        judge_for({"data": {"dataset": "digits", "image_size": 16}}, judge=judge.run_dir, device="cpu")
    with pytest.raises(DataError, match=r"images 1x8x8.*this data: 3x8x8"):
        judge_for({"data": {"dataset": "digits", "channels": 3}}, judge=judge.run_dir, device="cpu")
    with pytest.raises(DataError, match=r"classes \['0'"):
        judge.check_data(["a", "b"], (1, 8, 8))
    with pytest.raises(CheckpointError, match="not a finished deepworks run"):
        load_judge(judged[1] / "nothing-here")


def test_the_cached_judge_is_reused(judged, monkeypatch):
    judge, cache = judged

    def no_training(*args, **kwargs):
        raise AssertionError("the judge was trained again")

    monkeypatch.setattr(pipeline, "train", no_training)
    again = judge_for({"data": {"dataset": "digits"}}, cache_dir=cache, device="cpu", epochs=4)
    assert again.run_dir == judge.run_dir and again.accuracy == judge.accuracy
    assert [p.name for p in cache.iterdir()] == [judge.run_dir.name]  # no temporary folder left behind
    # a named judge run is used as it is
    named = judge_for({"data": {"dataset": "digits"}}, judge=judge.run_dir, device="cpu")
    assert named.run_dir == judge.run_dir
