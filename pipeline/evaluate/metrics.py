"""Classification metrics with patient-level bootstrap confidence intervals.

Point estimates come from scikit-learn. The bootstrap resamples *units* with replacement: patients when
``groups`` is given (all slices of a patient enter or leave a resample together, so correlated slices do
not make the intervals too narrow), single samples otherwise. Each resample is a vector of unit counts;
confusion matrices, calibration bins and one-vs-rest AUCs of all resamples are computed from per-unit
sufficient statistics with matrix products and cumulative sums instead of a Python loop per resample.

Conventions:
- ``confusion_matrix[i][j]``: samples of true class i predicted as class j (prediction = arg-max prob).
- balanced accuracy: mean recall over the classes present (scikit-learn's definition).
- macro-F1: mean F1 over all classes, a class with no true and no predicted samples scores 0
  (scikit-learn ``zero_division=0``) in the point estimate. In a bootstrap resample, macro-F1 is
  undefined when any class has no true sample (like the macro AUC): scoring the missing class 0 would
  pull the interval down for every resample that happens to miss a rare class's patients.
- AUC: one-vs-rest ROC AUC of ``probs[:, k]`` per class; ties count one half. ``macro_auc`` is their
  unweighted mean, and undefined (None) when any class has no positive or no negative sample.
- ECE: top-label expected calibration error over ``ECE_BINS`` = 15 equal-width bins of the confidence
  (the maximum probability), bins (lo, hi] with the first one closed at 0 (Guo et al. 2017):
  ``sum_b n_b / n * |accuracy_b - mean confidence_b|``.
- CIs: percentile method, ``[q((1-ci)/2), q((1+ci)/2)]`` of the resampled statistic. A resample in which
  a statistic is undefined (for AUC and sensitivity: a class without positives or negatives; the macro
  AUC whenever any class AUC is undefined; macro-F1 whenever a class has no true sample) is left out of
  that statistic's percentiles; ``bootstrap["undefined"]`` counts the resamples left out, per statistic.
- Paired differences (:func:`paired_difference`): two models' predictions on the same samples are
  resampled with the same unit draws, and the interval is that of the per-resample difference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

ECE_BINS = 15
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
PAIRED = ("balanced_accuracy", "macro_f1", "macro_auc")  # the paired model comparison's metrics
PER_CLASS = ("sensitivity", "specificity", "auc")
# Resamples are processed in chunks so that the [resamples, samples] weight matrix stays near this size.
CHUNK_ELEMENTS = 2_000_000


def _validate(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if len(set(class_names)) != k or k < 2:
        raise ValueError(f"class_names must be at least 2 distinct names, got {list(class_names)}")
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must have shape [N, {k}] (one column per class name), got {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape [{probs.shape[0]}] to match probs, got {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("no samples to evaluate (labels and probs are empty)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must be integer class indices in [0, {k - 1}], got {np.unique(labels)}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or not np.allclose(probs.sum(1), 1.0, atol=1e-4):
        raise ValueError(
            "probs must be finite, non-negative rows summing to 1 (softmax probabilities, not logits)"
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(
                f"groups must have one entry per sample ({labels.shape[0]}), got shape {groups.shape}"
            )
    return labels.astype(np.int64), probs, groups


def ece_bin_index(confidence: np.ndarray) -> np.ndarray:
    """The ECE bin (0 .. ECE_BINS-1) of each confidence: bins (lo, hi], the first one including 0."""
    return np.clip(np.ceil(confidence * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)


def _unit_statistics(
    labels: np.ndarray, probs: np.ndarray, units: np.ndarray, n_units: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: confusion counts [U, K*K] and calibration sums [U, ECE_BINS*3] (count, confidence,
    correct) - additive, so a resample's statistics are its unit counts times these."""
    k = probs.shape[1]
    preds = probs.argmax(1)
    cells = np.bincount(units * k * k + labels * k + preds, minlength=n_units * k * k).reshape(n_units, k * k)
    confidence = probs.max(1)
    slot = (units * ECE_BINS + ece_bin_index(confidence)) * 3
    size = n_units * ECE_BINS * 3
    calib = (
        np.bincount(slot, minlength=size)
        + np.bincount(slot + 1, weights=confidence, minlength=size)
        + np.bincount(slot + 2, weights=(preds == labels).astype(np.float64), minlength=size)
    ).reshape(n_units, ECE_BINS * 3)
    return cells.astype(np.float64), calib


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and per-class sensitivity/specificity from confusion matrices
    [..., K, K] (rows true class; counts may be weighted). Undefined ratios are NaN; so is macro-F1 when a
    class has no true sample (the bootstrap's convention, see the module docstring)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum((-2, -1))
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual = cm.sum(-1)
    predicted = cm.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(actual > 0, tp / actual, np.nan)
        negatives = total[..., None] - actual
        true_negatives = negatives - (predicted - tp)
        specificity = np.where(negatives > 0, true_negatives / negatives, np.nan)
        f1_denominator = actual + predicted
        f1 = np.where(f1_denominator > 0, 2 * tp / f1_denominator, 0.0)
        return {
            "accuracy": tp.sum(-1) / total,
            "balanced_accuracy": np.nanmean(sensitivity, axis=-1),
            "macro_f1": np.where((actual > 0).all(-1), f1.mean(-1), np.nan),
            "sensitivity": sensitivity,
            "specificity": specificity,
        }


def expected_calibration_error(bin_sums: np.ndarray) -> np.ndarray:
    """ECE from calibration sums [..., ECE_BINS*3]: (count, confidence sum, correct sum) per bin."""
    sums = np.asarray(bin_sums, dtype=np.float64).reshape(*np.shape(bin_sums)[:-1], ECE_BINS, 3)
    count, confidence, correct = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.abs(correct - confidence).sum(-1) / count.sum(-1)


def weighted_ovr_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class for each row of sample ``weights`` [R, N] -> [R, K] (NaN when a class
    has no positive or no negative weight). Ties between a positive and a negative count one half, as in
    the trapezoidal ROC area of ``sklearn.metrics.roc_auc_score(..., sample_weight=...)``."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    out = np.empty((weights.shape[0], probs.shape[1]))
    for k in range(probs.shape[1]):
        order = np.argsort(probs[:, k], kind="stable")
        scores = probs[order, k]
        ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])  # last index of each tied block
        positive = labels[order] == k
        w = weights[:, order]
        # cumulative positive / negative weight up to the end of each block of tied scores
        pos_cum = np.cumsum(w * positive, axis=1)[:, ends]
        neg_cum = np.cumsum(w * ~positive, axis=1)[:, ends]
        pos, neg = np.diff(pos_cum, axis=1, prepend=0), np.diff(neg_cum, axis=1, prepend=0)
        # each positive beats the negatives of lower blocks and ties half of those in its own block
        area = (pos * (neg_cum - 0.5 * neg)).sum(1)
        pairs = pos_cum[:, -1] * neg_cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(pairs > 0, area / pairs, np.nan)
    return out


def _class_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """scikit-learn one-vs-rest AUC per class; NaN for a class with no positive or no negative sample."""
    aucs = np.full(probs.shape[1], np.nan)
    for k in range(probs.shape[1]):
        positive = labels == k
        if 0 < positive.sum() < len(labels):
            aucs[k] = roc_auc_score(positive, probs[:, k])
    return aucs


def _resample_counts(n_units: int, n_bootstrap: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples in chunks of ``chunk`` as unit-count matrices [R, U] (rows sum to ``n_units``)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n_units, size=(rows, n_units))
        flat = (np.arange(rows)[:, None] * n_units + draws).ravel()
        yield np.bincount(flat, minlength=rows * n_units).reshape(rows, n_units).astype(np.float64)


def _bootstrap(
    labels: np.ndarray, probs: np.ndarray, units: np.ndarray, n_units: int, n_bootstrap: int, seed: int
) -> dict[str, np.ndarray]:
    """Every statistic of every resample: scalars [B], per-class arrays [B, K]."""
    k = probs.shape[1]
    cells, calib = _unit_statistics(labels, probs, units, n_units)
    parts: list[dict[str, np.ndarray]] = []
    chunk = max(1, CHUNK_ELEMENTS // len(labels))  # the AUC works on [R, N] sample weights
    for counts in _resample_counts(n_units, n_bootstrap, seed, chunk):
        stats = confusion_metrics((counts @ cells).reshape(-1, k, k))
        stats["ece"] = expected_calibration_error(counts @ calib)
        stats["auc"] = weighted_ovr_auc(labels, probs, counts[:, units])
        stats["macro_auc"] = stats["auc"].mean(-1)  # NaN if any class is undefined
        parts.append(stats)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _interval(values: np.ndarray, ci: float) -> list[float | None]:
    """Percentile interval over the defined (non-NaN) resamples; [None, None] if there are none."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [None, None]
    low, high = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return [float(low), float(high)]


def _number(value: float) -> float | None:
    """A JSON-ready float: NaN becomes None."""
    return None if np.isnan(value) else float(value)


def _calibration_sums(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Calibration sums [ECE_BINS*3] of all samples."""
    return _unit_statistics(labels, probs, np.zeros(len(labels), dtype=np.int64), 1)[1][0]


def calibration_table(bin_sums: np.ndarray) -> dict[str, list]:
    """Reliability-diagram data per ECE bin from calibration sums: edges, count, mean confidence and
    accuracy (None for an empty bin)."""
    sums = np.asarray(bin_sums).reshape(ECE_BINS, 3)
    count = sums[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence, accuracy = sums[:, 1] / count, sums[:, 2] / count
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [_number(v) for v in confidence],
        "accuracy": [_number(v) for v in accuracy],
    }


def _point_metrics(labels: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The headline point estimates (scikit-learn), the confusion matrix and the per-class AUCs."""
    k = probs.shape[1]
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, labels=list(range(k)))
    aucs = _class_auc(labels, probs)
    point = {
        "accuracy": accuracy_score(labels, preds),
        "balanced_accuracy": balanced_accuracy_score(labels, preds),
        "macro_f1": f1_score(labels, preds, labels=list(range(k)), average="macro", zero_division=0),
        "macro_auc": aucs.mean(),
        "ece": expected_calibration_error(_calibration_sums(labels, probs)),
    }
    return point, cm, aucs


def _bootstrap_units(
    groups: np.ndarray | None, n: int, n_bootstrap: int, seed: int, ci: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """The bootstrap unit index of each sample and the description of the bootstrap (method, level,
    resamples, unit kind and count, seed); ValueError for a bad ``ci`` or negative ``n_bootstrap``."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if groups is None:
        units, unit_name = np.arange(n), "sample"
    else:
        units, unit_name = np.unique(groups, return_inverse=True)[1], "group"
    description = {
        "method": "percentile",
        "level": ci,
        "n_resamples": n_bootstrap,
        "unit": unit_name,
        "n_units": int(units.max()) + 1,
        "seed": seed,
    }
    return units, description


def paired_difference(
    labels: np.ndarray,
    probs: np.ndarray,
    reference_probs: np.ndarray,
    class_names: Sequence[str],
    groups: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """A model minus a reference model on the same samples, for each metric in ``PAIRED``, JSON-ready.

    ``probs`` and ``reference_probs`` [N, K] are the two models' softmax probabilities for the same
    samples (same order) with ``labels`` [N]; ``groups`` (patient hashes) makes the bootstrap resample
    patients. Both models are scored on the same resamples, so the interval is that of the paired
    difference. Keys per metric: ``model``, ``reference``, ``difference`` (point estimates),
    ``ci`` [low, high] of the difference (percentile; resamples where either model's metric is undefined
    are left out and counted in ``undefined``) and ``mean`` (mean resampled difference); plus ``n``,
    ``n_groups`` and ``bootstrap`` (method, level, resamples, unit, seed).
    """
    labels, probs, groups = _validate(labels, probs, class_names, groups)
    _, reference_probs, _ = _validate(labels, reference_probs, class_names, groups)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1 for a paired interval, got {n_bootstrap}")
    units, bootstrap = _bootstrap_units(groups, len(labels), n_bootstrap, seed, ci)
    n_units = bootstrap["n_units"]
    point, _, _ = _point_metrics(labels, probs)
    reference_point, _, _ = _point_metrics(labels, reference_probs)
    # the same seed, unit count and chunking give both models the same resamples
    samples = _bootstrap(labels, probs, units, n_units, n_bootstrap, seed)
    reference_samples = _bootstrap(labels, reference_probs, units, n_units, n_bootstrap, seed)
    result: dict[str, Any] = {
        "n": len(labels),
        "n_groups": None if groups is None else n_units,
        "bootstrap": bootstrap,
    }
    for name in PAIRED:
        differences = samples[name] - reference_samples[name]
        defined = differences[~np.isnan(differences)]
        result[name] = {
            "model": _number(point[name]),
            "reference": _number(reference_point[name]),
            "difference": _number(point[name] - reference_point[name]),
            "mean": float(defined.mean()) if defined.size else None,
            "ci": _interval(differences, ci),
            "undefined": int(np.isnan(differences).sum()),
        }
    return result


def classification_report(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    groups: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Metrics of ``probs`` [N, K] (softmax probabilities) against integer ``labels`` [N], JSON-ready.

    Keys: n, n_groups, class_names, accuracy, balanced_accuracy, macro_f1, macro_auc, ece,
    per_class {name: {support, sensitivity, specificity, auc, ci: {metric: [lo, hi]}}},
    confusion_matrix (rows true, columns predicted), calibration (reliability bins),
    ci {headline metric: [lo, hi]} and bootstrap (method, unit, resamples, seed, undefined counts).
    ``groups`` (e.g. patient hashes, one per sample) makes the bootstrap resample whole groups.
    ``n_bootstrap=0`` skips the intervals. Undefined values (see the module docstring) are None.
    """
    labels, probs, groups = _validate(labels, probs, class_names, groups)
    units, bootstrap = _bootstrap_units(groups, len(labels), n_bootstrap, seed, ci)
    n_units = bootstrap["n_units"]
    point, cm, aucs = _point_metrics(labels, probs)
    per_class_cm = confusion_metrics(cm)
    calib_sums = _calibration_sums(labels, probs)
    report: dict[str, Any] = {
        "n": len(labels),
        "n_groups": None if groups is None else n_units,
        "class_names": list(class_names),
        **{name: _number(value) for name, value in point.items()},
        "per_class": {
            name: {
                "support": int(cm[i].sum()),
                "sensitivity": _number(per_class_cm["sensitivity"][i]),
                "specificity": _number(per_class_cm["specificity"][i]),
                "auc": _number(aucs[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "calibration": calibration_table(calib_sums),
        "ci": {},
        "bootstrap": {**bootstrap, "undefined": {}},
    }
    if n_bootstrap == 0:
        return report
    samples = _bootstrap(labels, probs, units, n_units, n_bootstrap, seed)
    undefined = report["bootstrap"]["undefined"]
    for name in HEADLINE:
        report["ci"][name] = _interval(samples[name], ci)
        if missing := int(np.isnan(samples[name]).sum()):
            undefined[name] = missing
    for i, class_name in enumerate(class_names):
        entry = report["per_class"][class_name]
        entry["ci"] = {metric: _interval(samples[metric][:, i], ci) for metric in PER_CLASS}
        for metric in PER_CLASS:
            if missing := int(np.isnan(samples[metric][:, i]).sum()):
                undefined[f"{metric}/{class_name}"] = missing
    return report
