"""Per-component score normalisation for hybrid detectors, fitted on ID validation scores only.

Detector scores live on unrelated scales (mean token NLL in nats, ``1 - cos`` in [0, 2],
squared Mahalanobis distances), so a hybrid first maps each component's score to a common
scale. Both normalisers here are fitted on the components' scores of the *ID validation texts*
(no OoD text is ever needed) and are strictly increasing, so each component's own ranking is kept:

- ``zscore``: ``z = (s - mean) / std`` of the ID validation scores. Cheap and smooth, but it
  trusts the first two moments: a heavy right tail (k-NN distances, Mahalanobis) gets a small
  ``z`` for a score that is extreme for that component.
- ``rank``: the rank-based inverse normal transform, ``z = Phi^-1(F(s))`` with ``F`` the ID
  validation ECDF (mid-ranks, linearly interpolated between the distinct validation scores).
  Every component becomes standard normal on ID data whatever its distribution, so "3 ID
  standard deviations" means the same tail probability for every component. Beyond the smallest
  and largest validation scores the map continues linearly with the slope of the outer 1% of the
  ECDF, so it stays strictly increasing (no ties among the most OoD texts).

Shapes: fitted on float [N, K] (N validation texts, K components); transforms float [M, K].
The same arithmetic runs in NumPy (Python scoring) and TensorFlow (the exported graph).
"""

from __future__ import annotations

import math

import numpy as np

NORMALISATIONS = ("zscore", "rank")
TAIL_FRACTION = 0.01  # share of the distinct validation scores whose slope continues the rank map
# Validation scores closer than max(TIE_TOLERANCE x their range, TIE_TOLERANCE) are one knot:
# ties that float32 noise breaks (duplicate texts at cosine distance 0 +- 1.2e-7) would otherwise
# rank arbitrarily. Detector scores are O(1e-3 .. 1e3) (nats, 1 - cos, squared distances).
TIE_TOLERANCE = 1e-6


def _inverse_normal_cdf(u: np.ndarray) -> np.ndarray:
    """Phi^-1 for u in (0, 1), float64 (``statistics.NormalDist`` per value; N is small)."""
    from statistics import NormalDist

    normal = NormalDist()
    return np.array([normal.inv_cdf(float(x)) for x in np.ravel(u)]).reshape(np.shape(u))


class ScoreNormaliser:
    """Maps K component scores to a common scale, fitted on ID validation scores (module doc).

    Args:
      kind: one of :data:`NORMALISATIONS`.

    Attributes (after :meth:`fit`):
      means, scales: float64 [K] (``zscore``).
      knots_x, knots_y: per component float64 [J_k] distinct validation scores and their
        normal scores; lower_slopes, upper_slopes: float64 [K] (``rank``).
    """

    def __init__(self, kind: str = "zscore"):
        if kind not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, received {kind!r}")
        self.kind = kind
        self.fitted = False

    def fit(self, scores: np.ndarray) -> ScoreNormaliser:
        """Fits on ID validation scores float [N >= 2, K].

        Raises:
          ValueError: wrong shape, non-finite values, or a component with constant scores.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or len(scores) < 2:
            raise ValueError(f"normalisation needs [N >= 2, K] ID validation scores, received shape "
                             f"{scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise ValueError("ID validation scores must be finite (received NaN or inf)")
        mean, scale = scores.mean(axis=0), scores.std(axis=0)
        if np.any(scale <= 1e-12 * np.maximum(np.abs(mean), 1.0)):
            raise ValueError(f"component scores are constant on the ID validation texts (std {scale}); "
                             "they cannot be normalised")
        self.means, self.scales = mean, scale
        if self.kind == "rank":
            self.knots_x, self.knots_y, lower, upper = [], [], [], []
            for column in scores.T:
                x, y, low, up = rank_knots(column)
                self.knots_x.append(x)
                self.knots_y.append(y)
                lower.append(low)
                upper.append(up)
            self.lower_slopes, self.upper_slopes = np.array(lower), np.array(upper)
        self.fitted = True
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """float [M, K] component scores -> float64 [M, K] normalised scores."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.means):
            raise ValueError(f"expected [M, {len(self.means)}] component scores, received shape "
                             f"{scores.shape}")
        if self.kind == "zscore":
            return (scores - self.means) / self.scales
        return np.stack([_interpolate(scores[:, k], self.knots_x[k], self.knots_y[k],
                                      self.lower_slopes[k], self.upper_slopes[k])
                         for k in range(scores.shape[1])], axis=1)

    def tf_transform(self, scores):
        """The same map in TensorFlow: float32 tensor [B, K] -> float32 [B, K] (constants in-graph)."""
        import tensorflow as tf

        if self.kind == "zscore":
            return (scores - tf.constant(self.means, tf.float32)) / tf.constant(self.scales, tf.float32)
        columns = []
        for k in range(len(self.means)):
            x = tf.constant(self.knots_x[k], tf.float32)
            y = tf.constant(self.knots_y[k], tf.float32)
            s = scores[:, k]
            inside = tf.clip_by_value(s, x[0], x[-1])
            right = tf.clip_by_value(tf.searchsorted(x, inside, side="right"), 1, len(self.knots_x[k]) - 1)
            x0, x1 = tf.gather(x, right - 1), tf.gather(x, right)
            y0, y1 = tf.gather(y, right - 1), tf.gather(y, right)
            value = y0 + (inside - x0) / (x1 - x0) * (y1 - y0)
            columns.append(value + tf.maximum(s - x[-1], 0.0) * float(self.upper_slopes[k])
                           + tf.minimum(s - x[0], 0.0) * float(self.lower_slopes[k]))
        return tf.stack(columns, axis=1)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able settings and named arrays for saving (see :meth:`from_state`)."""
        arrays = {"means": self.means, "scales": self.scales}
        if self.kind == "rank":
            arrays.update({"lower_slopes": self.lower_slopes, "upper_slopes": self.upper_slopes})
            for k in range(len(self.means)):
                arrays[f"knots_x_{k}"], arrays[f"knots_y_{k}"] = self.knots_x[k], self.knots_y[k]
        return {"normalisation": self.kind}, arrays

    @classmethod
    def from_state(cls, state: dict, arrays: dict[str, np.ndarray]) -> ScoreNormaliser:
        normaliser = cls(state.get("normalisation", "zscore"))
        normaliser.means, normaliser.scales = arrays["means"], arrays["scales"]
        if normaliser.kind == "rank":
            normaliser.lower_slopes, normaliser.upper_slopes = arrays["lower_slopes"], arrays["upper_slopes"]
            normaliser.knots_x = [arrays[f"knots_x_{k}"] for k in range(len(normaliser.means))]
            normaliser.knots_y = [arrays[f"knots_y_{k}"] for k in range(len(normaliser.means))]
        normaliser.fitted = True
        return normaliser


def rank_knots(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Knots of the rank-based inverse normal transform of one component's ID validation scores.

    Args:
      values: float [N] validation scores (at least two distinct values).

    Returns:
      ``(x, y, lower_slope, upper_slope)``: x float64 [J] distinct sorted scores, y = Phi^-1 of
      their mid-rank ECDF ``(#below + #equal / 2) / N``, and the slopes that continue the map
      linearly below ``x[0]`` and above ``x[-1]`` (over the outer ``TAIL_FRACTION`` of the knots).

    Example: values [1, 2, 2, 3] -> x [1, 2, 3], ECDF [0.125, 0.5, 0.875],
    y [-1.1503, 0, 1.1503].
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    x, counts = np.unique(values, return_counts=True)
    if len(x) > 1:  # values closer than TIE_TOLERANCE x range are ties: float noise must not rank
        tolerance = TIE_TOLERANCE * max(x[-1] - x[0], 1.0)
        group = np.concatenate([[0], np.cumsum(np.diff(x) > tolerance)])
        counts_per_group = np.bincount(group, weights=counts)
        x = np.bincount(group, weights=x * counts) / counts_per_group
        counts = counts_per_group
    if len(x) < 2:
        raise ValueError("a component needs at least two distinct ID validation scores to be ranked")
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])
    y = _inverse_normal_cdf((below + counts / 2.0) / len(values))
    tail = max(1, math.ceil(TAIL_FRACTION * (len(x) - 1)))
    upper = (y[-1] - y[-1 - tail]) / (x[-1] - x[-1 - tail])
    lower = (y[tail] - y[0]) / (x[tail] - x[0])
    return x, y, float(lower), float(upper)


def _interpolate(s, x, y, lower_slope, upper_slope) -> np.ndarray:
    """The rank map of float [M] scores (NumPy twin of the graph in :meth:`tf_transform`)."""
    inside = np.interp(np.clip(s, x[0], x[-1]), x, y)
    return inside + np.maximum(s - x[-1], 0.0) * upper_slope + np.minimum(s - x[0], 0.0) * lower_slope
