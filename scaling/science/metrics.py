"""Metrics of predictions and generations, in numpy (host side; no JAX).

The training-time versions of entropy and ECE run inside the jitted eval step (scaling/training/step.py);
these are the definitions they are tested against, and what probes and sampling use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each distribution along the last axis (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of top-1 confidence: count, summed confidence, summed correctness (the
    layout scaling/training/step.py accumulates). A confidence of exactly 1 falls in the last bin."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    bins = np.clip(np.floor(confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    return {"bin_count": np.bincount(bins, minlength=n_bins).astype(np.float64),
            "bin_confidence": np.bincount(bins, weights=confidence, minlength=n_bins),
            "bin_correct": np.bincount(bins, weights=correct, minlength=n_bins)}


def ece_from_bins(bin_count, bin_confidence, bin_correct) -> float:
    """Expected calibration error: sum over bins of (n_b / n) |accuracy_b - confidence_b|
    (Naeini et al. 2015; Guo et al. 2017)."""
    n = float(np.sum(bin_count))
    return float(np.sum(np.abs(np.asarray(bin_correct) - np.asarray(bin_confidence))) / n) if n else float("nan")


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    return ece_from_bins(**reliability_bins(confidence, correct, n_bins))


def reliability_table(bins: dict, n_bins: int = ECE_BINS) -> list[dict]:
    """Rows of a reliability diagram: bin edges, count, mean confidence and accuracy (NaN if empty)."""
    rows = []
    for b in range(n_bins):
        n = float(bins["bin_count"][b])
        rows.append({"bin": b, "bin_lower": b / n_bins, "bin_upper": (b + 1) / n_bins, "count": n,
                     "confidence": float(bins["bin_confidence"][b]) / n if n else float("nan"),
                     "accuracy": float(bins["bin_correct"][b]) / n if n else float("nan")})
    return rows


def brier(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Multi-class Brier score of each prediction: sum_v (p_v - [v = target])^2 (Brier 1950), in [0, 2]."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets)
    p_target = np.take_along_axis(p, t[..., None], axis=-1)[..., 0]
    return np.sum(p * p, axis=-1) - 2.0 * p_target + 1.0


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _ngrams(seq: Sequence, n: int) -> list[tuple]:
    seq = list(seq)
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Distinct n-grams over all n-grams of all sequences (corpus level; Li et al. 2016)."""
    grams = [g for s in sequences for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(sequences: Sequence[Sequence], n: int) -> float:
    """Mean over sequences of the fraction of n-grams that repeat an earlier n-gram of the same
    sequence: 1 - unique / total (seq-rep-n of Welleck et al. 2020)."""
    rates = []
    for s in sequences:
        grams = _ngrams(s, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return float(np.mean(rates)) if rates else float("nan")
