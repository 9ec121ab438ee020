"""OoD detection metrics in numpy. OoD is the positive class; scores: higher = more OoD.

All functions take ``id_scores`` (float [N_id]) and ``ood_scores`` (float [N_ood]) and return a
fraction in [0, 1] (tables multiply by 100). Tied scores are handled exactly: AUROC counts a tie
as half a correctly ordered pair; the precision-recall curves step only at distinct scores (as
scikit-learn's ``average_precision_score``); FAR95 counts ID texts tied with the threshold as
false alarms.
"""

from __future__ import annotations

import numpy as np


def _check(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError(f"need at least one ID and one OoD score, received {id_scores.size} ID "
                         f"and {ood_scores.size} OoD")
    if not (np.all(np.isfinite(id_scores)) and np.all(np.isfinite(ood_scores))):
        raise ValueError("scores must be finite (received NaN or inf)")
    return id_scores, ood_scores


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (scipy's ``rankdata`` 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve = P(OoD score > ID score) + P(tie) / 2 (Mann-Whitney U)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    ranks = _average_ranks(np.concatenate([ood_scores, id_scores]))
    n_pos, n_neg = len(ood_scores), len(id_scores)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds, descending."""
    scores = np.concatenate([positive, negative])
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(labels)[last_of_group]
    predicted = last_of_group + 1.0
    precision = true_pos / predicted
    recall = true_pos / len(positive)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_out(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with OoD as positive (average precision)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    return _average_precision(ood_scores, id_scores)


def aupr_in(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with ID as positive (scores negated)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    return _average_precision(-id_scores, -ood_scores)


def far95(id_scores, ood_scores, recall: float = 0.95) -> float:
    """False-alarm rate at 95% OoD recall (FPR@95TPR with OoD positive; lower is better).

    The threshold is the highest score ``t`` such that at least ``recall`` of the OoD texts score
    ``>= t``; the result is the share of ID texts scoring ``>= t``.
    """
    id_scores, ood_scores = _check(id_scores, ood_scores)
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], received {recall}")
    needed = int(np.ceil(recall * len(ood_scores) - 1e-9))
    threshold = np.sort(ood_scores)[::-1][needed - 1]
    return float(np.mean(id_scores >= threshold))


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """All four metrics as fractions: ``{"auroc", "aupr_out", "aupr_in", "far95"}``."""
    return {"auroc": auroc(id_scores, ood_scores), "aupr_out": aupr_out(id_scores, ood_scores),
            "aupr_in": aupr_in(id_scores, ood_scores), "far95": far95(id_scores, ood_scores)}


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (false-positive rate, true-positive rate), from (0, 0) to (1, 1)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    thresholds = np.unique(np.concatenate([id_scores, ood_scores]))[::-1]
    fpr = np.r_[0.0, [(id_scores >= t).mean() for t in thresholds]]
    tpr = np.r_[0.0, [(ood_scores >= t).mean() for t in thresholds]]
    return fpr, tpr
