"""classification_report: point metrics, bootstrap intervals, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.metrics import calibration_binning
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from pipeline.evaluate.metrics import (
    ECE_BINS,
    PAIRED,
    classification_report,
    confusion_metrics,
    ece_bin_index,
    expected_calibration_error,
    paired_difference,
    weighted_ovr_auc,
)

NAMES = ["a", "b", "c"]


def one_hot_probs(preds: list[int], k: int = 3, confidence: float = 0.8) -> np.ndarray:
    """Probabilities with ``confidence`` on the predicted class and the rest spread evenly."""
    probs = np.full((len(preds), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def random_problem(n: int, k: int = 3, signal: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a noisy classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits)
    return labels, probs / probs.sum(1, keepdims=True)


def test_point_metrics_match_a_hand_computed_confusion_matrix():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    preds = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    report = classification_report(labels, one_hot_probs(preds), NAMES, n_bootstrap=0)
    # confusion matrix rows = true: [3 1 0], [0 2 1], [1 0 2]
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert report["n"] == 10 and report["n_groups"] is None
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    # F1: a 2*3/(4+4), b 2*2/(3+3), c 2*2/(3+3)
    assert report["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    a, b, c = (report["per_class"][name] for name in NAMES)
    assert (a["sensitivity"], a["specificity"], a["support"]) == (
        pytest.approx(0.75),
        pytest.approx(5 / 6),
        4,
    )
    assert (b["sensitivity"], b["specificity"]) == (pytest.approx(2 / 3), pytest.approx(6 / 7))
    assert (c["sensitivity"], c["specificity"]) == (pytest.approx(2 / 3), pytest.approx(6 / 7))
    # class a scores 0.8 when predicted, 0.1 otherwise: 15 wins + (3*1 + 1*5) ties / 2 = 19 of 24 pairs
    assert a["auc"] == pytest.approx(19 / 24)
    assert report["macro_auc"] == pytest.approx(np.mean([p["auc"] for p in report["per_class"].values()]))
    # every confidence is 0.8, accuracy 0.7
    assert report["ece"] == pytest.approx(0.1)
    assert sum(report["calibration"]["count"]) == 10 and len(report["calibration"]["count"]) == ECE_BINS
    assert report["ci"] == {}


@pytest.mark.parametrize(
    ("labels", "probs", "groups", "message"),
    [
        ([0, 1], [[2.0, -1.0], [0.0, 1.0]], None, "softmax probabilities, not logits"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], None, "integer class indices"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], None, "labels must have shape"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["p1"], "groups must have one entry per sample"),
        ([0, 1], [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], None, "one column per class"),
    ],
)
def test_bad_input_is_rejected_with_the_reason(labels, probs, groups, message):
    with pytest.raises(ValueError, match=message):
        classification_report(np.array(labels), np.array(probs), ["x", "y"], groups=groups, n_bootstrap=0)


def test_resampled_statistics_equal_sklearn_with_sample_weights():
    labels, probs = random_problem(300, k=4, seed=3)
    probs = np.round(probs, 2)  # ties between scores
    probs /= probs.sum(1, keepdims=True)
    weights = np.random.default_rng(4).integers(0, 4, size=(5, 300)).astype(float)
    aucs = weighted_ovr_auc(labels, probs, weights)
    preds = probs.argmax(1)
    for row, w in enumerate(weights):
        for k in range(4):
            assert aucs[row, k] == pytest.approx(roc_auc_score(labels == k, probs[:, k], sample_weight=w))
        stats = confusion_metrics(confusion_matrix(labels, preds, sample_weight=w))
        assert stats["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(labels, preds, sample_weight=w)
        )
        assert stats["macro_f1"] == pytest.approx(f1_score(labels, preds, sample_weight=w, average="macro"))


def test_intervals_contain_the_estimate_shrink_with_more_data_and_are_reproducible():
    small = classification_report(*random_problem(150, seed=1), NAMES, n_bootstrap=400, seed=7)
    large = classification_report(*random_problem(3000, seed=1), NAMES, n_bootstrap=400, seed=7)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
        low, high = small["ci"][name]
        assert low <= small[name] <= high, name
        large_low, large_high = large["ci"][name]
        assert large_high - large_low < 0.6 * (high - low), name
    for entry in small["per_class"].values():
        low, high = entry["ci"]["sensitivity"]
        assert low <= entry["sensitivity"] <= high
    again = classification_report(*random_problem(150, seed=1), NAMES, n_bootstrap=400, seed=7)
    other_seed = classification_report(*random_problem(150, seed=1), NAMES, n_bootstrap=400, seed=8)
    assert again["ci"] == small["ci"]
    assert other_seed["ci"] != small["ci"]
    assert small["bootstrap"]["unit"] == "sample" and small["bootstrap"]["n_units"] == 150


def test_group_bootstrap_is_wider_than_sample_bootstrap_for_clustered_slices():
    # 60 patients x 10 slices; whether a slice is classified correctly is decided per patient
    rng = np.random.default_rng(0)
    patients = np.repeat([f"patient-{i}" for i in range(60)], 10)
    labels = np.repeat(rng.integers(0, 3, 60), 10)
    patient_correct = np.repeat(rng.random(60) < 0.7, 10)
    preds = np.where(patient_correct, labels, (labels + 1) % 3)
    probs = one_hot_probs(list(preds))
    by_sample = classification_report(labels, probs, NAMES, n_bootstrap=500)
    by_patient = classification_report(labels, probs, NAMES, groups=patients, n_bootstrap=500)
    assert by_patient["accuracy"] == by_sample["accuracy"]
    assert by_patient["n_groups"] == 60 and by_patient["bootstrap"]["unit"] == "group"
    sample_width = np.diff(by_sample["ci"]["accuracy"])[0]
    patient_width = np.diff(by_patient["ci"]["accuracy"])[0]
    # independent slices would give sqrt(10) ~ 3.2 times narrower intervals than independent patients
    assert patient_width > 2.2 * sample_width
    low, high = by_patient["ci"]["accuracy"]
    assert low <= by_patient["accuracy"] <= high


def test_resamples_without_a_class_are_left_out_of_auc_intervals_and_counted():
    labels, probs = random_problem(40, seed=5)
    labels[labels == 2] = 0
    labels[0] = 2  # class c has a single sample: many resamples miss it
    report = classification_report(labels, probs, NAMES, n_bootstrap=300)
    undefined = report["bootstrap"]["undefined"]
    assert 0 < undefined["auc/c"] < 300 and undefined["macro_auc"] == undefined["auc/c"]
    assert "auc/a" not in undefined
    low, high = report["ci"]["macro_auc"]
    assert low is not None and 0 <= low <= high <= 1
    json.dumps(report, allow_nan=False)


def test_a_class_absent_from_the_labels_leaves_its_auc_undefined_not_nan():
    labels, probs = random_problem(60, seed=6)
    labels[labels == 2] = 1
    report = classification_report(labels, probs, NAMES, n_bootstrap=50)
    assert report["per_class"]["c"]["auc"] is None and report["per_class"]["c"]["sensitivity"] is None
    assert report["macro_auc"] is None and report["ci"]["macro_auc"] == [None, None]
    assert report["per_class"]["c"]["specificity"] is not None
    assert report["bootstrap"]["undefined"]["macro_auc"] == 50
    json.dumps(report, allow_nan=False)


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    labels, preds, confidences = [], [], []
    for confidence, correct in ((0.55, 11), (0.75, 15), (0.95, 19)):  # accuracy = confidence in each bin
        labels += [0] * 20
        preds += [0] * correct + [1] * (20 - correct)
        confidences += [confidence] * 20
    probs = np.array(
        [one_hot_probs([p], k=2, confidence=c)[0] for p, c in zip(preds, confidences, strict=True)]
    )
    calibrated = classification_report(np.array(labels), probs, ["x", "y"], n_bootstrap=0)
    assert calibrated["ece"] == pytest.approx(0.0, abs=1e-12)
    overconfident = one_hot_probs(preds, k=2, confidence=0.99)
    assert classification_report(np.array(labels), overconfident, ["x", "y"], n_bootstrap=0)["ece"] == (
        pytest.approx(0.99 - 45 / 60)
    )


def test_ece_agrees_with_monai_calibration_binning():
    labels, probs = random_problem(500, seed=9)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    mean_p, mean_gt, counts = calibration_binning(
        torch.tensor(confidence)[None, None], torch.tensor(correct)[None, None], num_bins=ECE_BINS, right=True
    )
    filled = counts[0, 0] > 0
    monai_ece = float(
        ((mean_p - mean_gt).abs()[0, 0][filled] * counts[0, 0][filled]).sum() / counts[0, 0].sum()
    )
    report = classification_report(labels, probs, NAMES, n_bootstrap=0)
    assert report["ece"] == pytest.approx(monai_ece, rel=1e-5)
    assert report["calibration"]["count"] == counts[0, 0].int().tolist()


def test_ece_bins_are_right_closed_and_cover_zero_to_one():
    edges = np.array([0.0, 1 / ECE_BINS + 1e-9, 0.5, 1.0])
    assert ece_bin_index(edges).tolist() == [0, 1, 7, ECE_BINS - 1]
    sums = np.zeros(ECE_BINS * 3)
    sums[[0, 1, 2]] = [10, 5.0, 5.0]  # 10 samples, mean confidence 0.5, accuracy 0.5
    assert expected_calibration_error(sums) == pytest.approx(0.0)


def clustered_problem(patients: int = 40, slices: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patient ids and labels of ``patients`` x ``slices`` slices, each patient with one class."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], slices)
    labels = np.repeat(rng.integers(0, 3, patients), slices)
    return groups, labels


def test_macro_f1_interval_leaves_out_resamples_that_miss_a_class():
    # a perfect classifier, class c held by a single patient: a resample without that patient is
    # undefined for macro-F1 (it used to score c's F1 as 0 and pull the interval down to 2/3)
    groups, labels = clustered_problem()
    labels[labels == 2] = 0
    labels[groups == "p00"] = 2
    report = classification_report(labels, one_hot_probs(list(labels)), NAMES, groups=groups, n_bootstrap=300)
    assert report["macro_f1"] == 1.0
    assert report["ci"]["macro_f1"] == [1.0, 1.0]
    undefined = report["bootstrap"]["undefined"]["macro_f1"]
    assert 0 < undefined < 300 and undefined == report["bootstrap"]["undefined"]["sensitivity/c"]


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    groups, labels = clustered_problem(seed=1)
    _, probs = random_problem(len(labels), seed=2)
    paired = paired_difference(labels, probs, probs, NAMES, groups=groups, n_bootstrap=200)
    for name in PAIRED:
        assert paired[name]["difference"] == 0.0 and paired[name]["ci"] == [0.0, 0.0], name
    assert paired["n_groups"] == 40 and paired["bootstrap"]["unit"] == "group"


def test_paired_difference_uses_the_same_resamples_for_both_models():
    # both models are wrong on patients p10-p15 and the reference also on p05: on every shared resample
    # the reference scores at most the model, so the whole paired interval is >= 0 (independent
    # resamples, where the two models' shared errors vary separately, would give negative differences)
    groups, labels = clustered_problem(seed=3)
    wrong = np.isin(groups, [f"p{i}" for i in range(10, 16)])
    predicted = np.where(wrong, (labels + 1) % 3, labels)
    worse = np.where(groups == "p05", (labels + 1) % 3, predicted)
    probs, reference = one_hot_probs(list(predicted)), one_hot_probs(list(worse))
    paired = paired_difference(labels, probs, reference, NAMES, groups=groups, n_bootstrap=400)
    for name in PAIRED:
        entry = paired[name]
        low, high = entry["ci"]
        assert entry["difference"] > 0 and 0 <= low <= entry["mean"] <= high, name
    unpaired = (
        classification_report(labels, probs, NAMES, groups=groups, n_bootstrap=400, seed=1)["ci"],
        classification_report(labels, reference, NAMES, groups=groups, n_bootstrap=400, seed=2)["ci"],
    )
    # the single models' intervals overlap widely: only the pairing shows the difference
    assert unpaired[1]["balanced_accuracy"][1] > unpaired[0]["balanced_accuracy"][0]


def test_paired_difference_point_and_interval_match_the_two_reports():
    groups, labels = clustered_problem(seed=4)
    _, probs = random_problem(len(labels), signal=2.0, seed=5)
    _, reference = random_problem(len(labels), signal=0.5, seed=6)
    paired = paired_difference(labels, probs, reference, NAMES, groups=groups, n_bootstrap=300, seed=9)
    model = classification_report(labels, probs, NAMES, groups=groups, n_bootstrap=0)
    base = classification_report(labels, reference, NAMES, groups=groups, n_bootstrap=0)
    for name in PAIRED:
        assert paired[name]["difference"] == pytest.approx(model[name] - base[name]), name
        low, high = paired[name]["ci"]
        assert low < paired[name]["mean"] < high, name
    again = paired_difference(labels, probs, reference, NAMES, groups=groups, n_bootstrap=300, seed=9)
    assert again == paired
    json.dumps(paired, allow_nan=False)
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1"):
        paired_difference(labels, probs, reference, NAMES, groups=groups, n_bootstrap=0)
    with pytest.raises(ValueError, match="probs must have shape"):
        paired_difference(labels, probs, reference[:, :2], NAMES, groups=groups)
