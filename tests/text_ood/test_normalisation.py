"""Score normalisation and combination of the hybrid detector: hand-computed values, graph = NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from text_ood.detectors.hybrid import combination_weights, combine
from text_ood.normalisation import ScoreNormaliser, rank_knots

PHI_INV_0125 = -1.1503493803760079  # Phi^-1(0.125)


def test_rank_knots_by_hand():
    # values 1, 2, 2, 3: mid-rank ECDF 0.5/4, (1 + 2/2)/4, (3 + 0.5)/4 = 0.125, 0.5, 0.875.
    x, y, lower, upper = rank_knots(np.array([2.0, 1.0, 3.0, 2.0]))
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, [PHI_INV_0125, 0.0, -PHI_INV_0125], atol=1e-12)
    # Outer 1% of 2 knot gaps = 1 gap: slopes (0 - y0) / (2 - 1) and (y2 - 0) / (3 - 2).
    assert lower == pytest.approx(-PHI_INV_0125) and upper == pytest.approx(-PHI_INV_0125)


def test_rank_transform_interpolates_and_extends_linearly():
    val = np.array([[2.0, 10.0], [1.0, 20.0], [3.0, 30.0], [2.0, 40.0]])
    normaliser = ScoreNormaliser("rank").fit(val)
    out = normaliser.transform(np.array([[1.5, 10.0], [3.0, 45.0], [5.0, 0.0]]))
    # Column 0: 1.5 is half way between knots 1 and 2: y = PHI_INV_0125 / 2; 3 -> -PHI_INV_0125;
    # 5 is 2 above the last knot: -PHI_INV_0125 + 2 * slope (slope -PHI_INV_0125).
    np.testing.assert_allclose(out[:, 0], [PHI_INV_0125 / 2, -PHI_INV_0125, -3 * PHI_INV_0125])
    # Column 1: knots 10..40 at Phi^-1(0.125), Phi^-1(0.375), Phi^-1(0.625), Phi^-1(0.875).
    y = rank_knots(val[:, 1])[1]
    slope_up = (y[3] - y[2]) / 10.0
    slope_low = (y[1] - y[0]) / 10.0
    np.testing.assert_allclose(out[:, 1], [y[0], y[3] + 5 * slope_up, y[0] - 10 * slope_low])
    # On the validation scores themselves the map gives the knots' normal scores.
    np.testing.assert_allclose(np.sort(normaliser.transform(val)[:, 1]), y)


def test_zscore_by_hand():
    val = np.array([[1.0], [3.0]])  # mean 2, population std 1
    normaliser = ScoreNormaliser("zscore").fit(val)
    np.testing.assert_allclose(normaliser.transform(np.array([[4.0], [0.0]])), [[2.0], [-2.0]])


@pytest.mark.parametrize("kind", ["zscore", "rank"])
def test_graph_matches_numpy_and_state_round_trips(kind):
    rng = np.random.default_rng(0)
    val = np.stack([rng.exponential(size=300), rng.normal(5.0, 2.0, size=300)], axis=1)
    queries = np.concatenate([val[:20], [[-1.0, -3.0], [9.0, 20.0], [0.3, 5.0]]])
    normaliser = ScoreNormaliser(kind).fit(val)
    expected = normaliser.transform(queries)
    graph = normaliser.tf_transform(tf.constant(queries, tf.float32)).numpy()
    np.testing.assert_allclose(graph, expected, rtol=1e-4, atol=1e-4)
    restored = ScoreNormaliser.from_state(*normaliser.state())
    np.testing.assert_allclose(restored.transform(queries), expected)
    assert np.all(np.diff(normaliser.transform(np.linspace(-2, 12, 50)[:, None].repeat(2, 1)), axis=0) > 0)


def test_combination_rules_by_hand():
    z = np.array([[1.0, 3.0], [-2.0, 0.0]])
    np.testing.assert_allclose(combine(z, np.array([0.5, 0.5]), "weighted_sum"), [2.0, -1.0])
    np.testing.assert_allclose(combine(z, np.array([0.5, 0.5]), "max"), [3.0, 0.0])
    # Three components, the first two perfectly redundant with each other except for noise:
    # equal correlations would give equal weights; here corr(0,1) = 0.8, others 0.
    c = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
    z3 = np.random.default_rng(1).multivariate_normal(np.zeros(3), c, size=200_000)
    # C^-1 1 = [1/1.8, 1/1.8, 1]; normalised: [0.2647, 0.2647, 0.4706].
    np.testing.assert_allclose(combination_weights(z3), [0.2647, 0.2647, 0.4706], atol=0.01)


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match="must be one of"):
        ScoreNormaliser("minmax")
    with pytest.raises(ValueError, match="constant"):
        ScoreNormaliser("rank").fit(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"received shape \(3,\)"):
        ScoreNormaliser().fit(np.ones(3))
    with pytest.raises(ValueError, match=r"expected \[M, 2\]"):
        ScoreNormaliser().fit(np.arange(8.0).reshape(4, 2)).transform(np.ones((3, 3)))
