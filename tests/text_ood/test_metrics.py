"""Metrics against hand-computed cases (OoD = positive class, ties included)."""

from __future__ import annotations

import numpy as np
import pytest

from text_ood import metrics


def test_perfect_and_reversed_separation():
    id_scores, ood_scores = [0.1, 0.2, 0.3], [0.8, 0.9]
    assert metrics.auroc(id_scores, ood_scores) == 1.0
    assert metrics.aupr_out(id_scores, ood_scores) == 1.0
    assert metrics.aupr_in(id_scores, ood_scores) == 1.0
    assert metrics.far95(id_scores, ood_scores) == 0.0
    assert metrics.auroc(ood_scores, id_scores) == 0.0


def test_hand_computed_mixed_case():
    # ID: 1, 3, 5; OoD: 2, 4, 6. Pairs (ood > id): 2>1; 4>1,3; 6>1,3,5 -> 6 of 9.
    id_scores, ood_scores = [1.0, 3.0, 5.0], [2.0, 4.0, 6.0]
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(6 / 9)
    # Descending: 6(+) 5(-) 4(+) 3(-) 2(+) 1(-): precision at each positive 1, 2/3, 3/5.
    assert metrics.aupr_out(id_scores, ood_scores) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # ID positive with negated scores: ascending order 1(+) 2(-) 3(+) 4(-) 5(+) 6(-).
    assert metrics.aupr_in(id_scores, ood_scores) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # 95% of 3 OoD -> all 3 -> threshold 2.0; ID >= 2: {3, 5} -> 2/3.
    assert metrics.far95(id_scores, ood_scores) == pytest.approx(2 / 3)


def test_ties_count_half_and_group_thresholds():
    # One tie pair (0.5, 0.5) counts 1/2; other pairs: ood 0.9 beats both ID -> (2 + 0.5 + 0) / 4.
    id_scores, ood_scores = [0.5, 0.7], [0.5, 0.9]
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(2.5 / 4)
    # Thresholds 0.9 (P=1, R=1/2), 0.7 (P=1/2, R=1/2), 0.5 (P=2/4, R=1): AP = 1/2*1 + 1/2*1/2.
    assert metrics.aupr_out(id_scores, ood_scores) == pytest.approx(0.75)
    # FAR95: both OoD needed -> threshold 0.5; both ID >= 0.5 (the tie counts) -> 1.0.
    assert metrics.far95(id_scores, ood_scores) == 1.0


def test_all_tied_scores_are_chance():
    assert metrics.auroc([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    assert metrics.aupr_out([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(3 / 5)


def test_far95_picks_the_threshold_at_95_percent_recall():
    ood = np.arange(100, 120, dtype=float)  # 20 OoD: 95% = 19 -> threshold = 101
    id_scores = np.array([50.0, 100.5, 101.0, 130.0])
    assert metrics.far95(id_scores, ood) == pytest.approx(2 / 4)  # 101.0 (tie) and 130.0


def test_matches_random_pairwise_definition():
    rng = np.random.default_rng(0)
    id_scores = rng.integers(0, 10, 50).astype(float)
    ood_scores = rng.integers(3, 13, 30).astype(float)
    diff = ood_scores[:, None] - id_scores[None, :]
    expected = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(expected)
    fpr, tpr = metrics.roc_curve(id_scores, ood_scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="at least one ID and one OoD"):
        metrics.auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        metrics.far95([np.nan], [1.0])


def test_metrics_agree_with_scikit_learn_on_random_and_tied_scores():
    # scikit-learn is a test dependency only: an independent implementation of the same metrics.
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve as sk_roc_curve

    rng = np.random.default_rng(0)
    for id_scores, ood_scores in (
        (rng.normal(0, 1, 500), rng.normal(1, 1, 120)),
        (rng.integers(0, 5, 300).astype(float), rng.integers(2, 8, 90).astype(float)),  # many ties
    ):
        labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
        scores = np.r_[id_scores, ood_scores]
        assert metrics.auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert metrics.aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        assert metrics.aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - labels, -scores), abs=1e-12)
        fpr, tpr, _ = sk_roc_curve(labels, scores)
        # FAR95: the smallest false-positive rate at which at least 95% of OoD is caught.
        assert metrics.far95(id_scores, ood_scores) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
