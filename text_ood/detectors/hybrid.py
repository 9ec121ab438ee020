"""A hybrid OoD detector: a weighted sum of standardised detector scores (e.g. MLKD + k-NN).

MLKD's student perplexity judges how a text is *written* (token statistics of the ID corpus); a
sentence-embedding score judges what it *means* (distance to ID texts in a pre-trained semantic
space). Their errors differ, so their combination beats each. No OoD text is used anywhere:

1. each component detector is fitted on the ID training texts;
2. its scores on the ID validation texts give a location (mean) and a scale (standard deviation);
   a text's component score becomes ``z_i = (s_i - mean_i) / scale_i``;
3. the weights are ``w = C^-1 1 / (1^T C^-1 1)``, with ``C`` the correlation matrix of the ``z_i``
   on ID validation texts: the minimum-variance combination (on ID data) of scores that OoD texts
   shift upwards by the same number of ID standard deviations. Two components get equal weights
   whatever their correlation; more components down-weight redundant ones.

The hybrid score is ``sum_i w_i z_i`` (higher = more OoD). It inherits whatever supervision its
components use: MLKD + k-NN is label-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from text_ood.detectors.base import OODDetector, RequiresFittingError

logger = logging.getLogger(__name__)


def standardisation(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of float [N, K] ID validation scores.

    Raises:
      ValueError: fewer than two rows, or a component with (near) constant scores.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) < 2:
        raise ValueError(f"standardisation needs [N >= 2, K] scores, received shape {scores.shape}")
    mean, scale = scores.mean(axis=0), scores.std(axis=0)
    if np.any(scale <= 1e-12 * np.maximum(np.abs(mean), 1.0)):
        raise ValueError(f"component scores are constant on the ID validation texts (std {scale}); "
                         "they cannot be standardised")
    return mean, scale


def combination_weights(z_scores: np.ndarray) -> np.ndarray:
    """``C^-1 1 / (1^T C^-1 1)`` for standardised ID validation scores ``z_scores`` float [N, K].

    Returns:
      float64 [K] weights summing to 1.

    Raises:
      ValueError: linearly dependent components, or a weight that is not positive (a component
        so redundant with the others that the minimum-variance mix would subtract it).
    """
    z = np.asarray(z_scores, dtype=np.float64)
    correlation = np.atleast_2d(np.corrcoef(z, rowvar=False))
    try:
        raw = np.linalg.solve(correlation, np.ones(len(correlation)))
    except np.linalg.LinAlgError:
        raise ValueError(f"component scores are linearly dependent on the ID validation texts "
                         f"(correlations {correlation.round(3).tolist()}); drop one") from None
    weights = raw / raw.sum()
    if np.any(weights <= 0):
        raise ValueError(f"minimum-variance weights {weights.round(3).tolist()} are not all "
                         f"positive (ID correlations {correlation.round(3).tolist()}): the "
                         "components are too redundant to combine")
    return weights


class HybridDetector(OODDetector):
    """Weighted sum of standardised component scores (module docstring).

    Args:
      name: registry name.
      context: the workdir's ``TrainingContext`` (its ``dataset.id_val`` standardises the scores).
      components: the detectors to combine (fitted by :meth:`fit`), e.g. MLKD and k-NN.
    """

    def __init__(self, name: str, context, components: Sequence[OODDetector]):
        super().__init__()
        if len(components) < 2:
            raise ValueError(f"a hybrid needs at least two component detectors, received "
                             f"{[c.name for c in components]}")
        self.name = name
        self.context = context
        self.components = list(components)
        self.means = self.scales = self.weights = None

    @property
    def score_description(self) -> str:
        parts = " + ".join(f"{w:.3f} z({c.name})" for w, c in zip(self.weights, self.components))
        return (f"{parts}; z = (score - ID validation mean) / ID validation std; higher = more OoD")

    def _fit(self, train_texts, labels):
        """Restores the components (``train`` saved them first) and standardises on ID validation."""
        val_texts = self.context.dataset.id_val
        if len(val_texts) < 2:
            raise ValueError(f"{self.name}: needs ID validation texts to standardise its "
                             f"components, received {len(val_texts)}")
        self._restore_components()
        val = self._component_scores(val_texts)
        self.means, self.scales = standardisation(val)
        self.weights = combination_weights((val - self.means) / self.scales)
        logger.info("%s: %s", self.name, self.score_description)

    def _restore_components(self) -> None:
        for component in self.components:
            component.restore(self.context.detector_dir(component.name))

    def _state(self):
        return ({"components": [c.name for c in self.components]},
                {"means": self.means, "scales": self.scales, "weights": self.weights})

    def _restore(self, state, arrays):
        if state["components"] != [c.name for c in self.components]:
            raise RequiresFittingError(f"{self.name} was saved with components {state['components']}, "
                                       f"configured now: {[c.name for c in self.components]}")
        self._restore_components()
        self.means, self.scales, self.weights = arrays["means"], arrays["scales"], arrays["weights"]

    def _component_scores(self, texts) -> np.ndarray:
        return np.stack([c.score(texts) for c in self.components], axis=1)  # [N, K]

    def _score(self, texts):
        return ((self._component_scores(texts) - self.means) / self.scales) @ self.weights

    def serving_scorer(self):
        if not self.fitted:
            raise RequiresFittingError(f"{self.name}: fit before exporting")
        from text_ood.scorers import HybridScorer

        return HybridScorer([c.serving_scorer() for c in self.components],
                            [c.name for c in self.components], self.means, self.scales,
                            self.weights)
