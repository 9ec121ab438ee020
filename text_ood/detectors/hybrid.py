"""A hybrid OoD detector: normalised component scores combined by a rule (e.g. MLKD + k-NN).

MLKD's student perplexity judges how a text is *written* (token statistics of the ID corpus); a
sentence-embedding score judges what it *means* (distance to ID texts in a pre-trained semantic
space). Their errors differ, so a combination can beat each. No OoD text is used anywhere:

1. each component detector is fitted on the ID training texts;
2. its scores on the ID validation texts fit a per-component normaliser
   (``config.encoder.hybrid_normalisation``, :mod:`text_ood.normalisation`): ``zscore`` (mean
   and standard deviation) or ``rank`` (the ID-validation ECDF mapped to standard-normal
   quantiles, robust to the heavy right tails of distance scores);
3. the normalised scores ``z_i`` are combined (``config.encoder.hybrid_combination``):

   - ``weighted_sum`` (default): ``sum_i w_i z_i`` with ``w = C^-1 1 / (1^T C^-1 1)``, ``C`` the
     correlation matrix of the ``z_i`` on ID validation texts. If OoD texts shift every
     component up by the same number of ID standard deviations ``d``, the sum's shift over its ID
     spread is ``d / sqrt(w^T C w)``, which these weights maximise (the minimum-variance
     combination). Two components get equal weights whatever their correlation; more
     components down-weight redundant ones.
   - ``max``: ``max_i z_i``, a text is as OoD as its most alarmed component. Suits OoD texts that
     only one component notices (a fluent text about another topic, a garbled text about an ID
     topic), at the price of adding the components' false alarms on ID texts.

The hybrid score is higher = more OoD. It inherits whatever supervision its components use:
MLKD + k-NN is label-free. Which rule suits a data set is decided without OoD data by
``python -m text_ood select`` (:mod:`text_ood.selection`), which tries both normalisations and
both rules on a proxy-outlier set.

A saved hybrid holds its components' fitted states under ``components/<name>/`` (older saves
without them restore the components from the workdir's ``detectors/<name>/``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.normalisation import ScoreNormaliser

logger = logging.getLogger(__name__)

COMBINATIONS = ("weighted_sum", "max")
COMPONENTS_DIR = "components"


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


def combine(z_scores: np.ndarray, weights: np.ndarray, combination: str) -> np.ndarray:
    """float [M, K] normalised scores -> float64 [M] hybrid scores by ``combination``."""
    if combination == "max":
        return np.max(z_scores, axis=1)
    return z_scores @ weights


class HybridDetector(OODDetector):
    """Normalised component scores combined by a rule (module docstring).

    Args:
      name: registry name.
      context: the workdir's ``TrainingContext`` (its ``dataset.id_val`` fits the normaliser;
        ``config.encoder.hybrid_normalisation`` / ``hybrid_combination`` pick the rule).
      components: the detectors to combine, e.g. MLKD and k-NN. Components that are not fitted
        yet are restored from the workdir's ``detectors/<name>/`` by :meth:`fit` (``train``
        saves them first); already fitted ones are used as they are.

    Raises:
      ValueError: fewer than two components, or an unknown combination rule.
    """

    def __init__(self, name: str, context, components: Sequence[OODDetector]):
        super().__init__()
        if len(components) < 2:
            raise ValueError(f"a hybrid needs at least two component detectors, received "
                             f"{[c.name for c in components]}")
        self.name = name
        self.context = context
        self.components = list(components)
        cfg = context.config.encoder
        if cfg.hybrid_combination not in COMBINATIONS:
            raise ValueError(f"hybrid_combination must be one of {COMBINATIONS}, received "
                             f"{cfg.hybrid_combination!r}")
        self.normaliser = ScoreNormaliser(cfg.hybrid_normalisation)
        self.combination = cfg.hybrid_combination
        self.weights = None
        self._directory = None

    @property
    def means(self) -> np.ndarray:
        return self.normaliser.means

    @property
    def scales(self) -> np.ndarray:
        return self.normaliser.scales

    @property
    def score_description(self) -> str:
        z = {"zscore": "(score - ID validation mean) / ID validation std",
             "rank": "Phi^-1(ID validation ECDF of the score), linear beyond the ECDF's ends"}
        if self.combination == "max":
            parts = "max(" + ", ".join(f"z({c.name})" for c in self.components) + ")"
        else:
            parts = " + ".join(f"{w:.3f} z({c.name})" for w, c in zip(self.weights, self.components))
        return f"{parts}; z = {z[self.normaliser.kind]}; higher = more OoD"

    def fit_normalisation(self, val_scores: np.ndarray) -> None:
        """Fits normaliser and weights on the components' ID validation scores float [N, K]."""
        self.normaliser = ScoreNormaliser(self.normaliser.kind).fit(val_scores)
        self.weights = combination_weights(self.normaliser.transform(val_scores))
        self._fitted = True

    def _fit(self, train_texts, labels):
        """Restores unfitted components (``train`` saved them first); normalises on ID validation."""
        val_texts = self.context.dataset.id_val
        if len(val_texts) < 2:
            raise ValueError(f"{self.name}: needs ID validation texts to normalise its "
                             f"components, received {len(val_texts)}")
        for component in self.components:
            if not component.fitted:
                component.restore(self.context.detector_dir(component.name))
        self.fit_normalisation(self._component_scores(val_texts))
        logger.info("%s: %s", self.name, self.score_description)

    def save(self, directory: str) -> None:
        """Saves every component under ``directory/components/<name>/``, then the hybrid itself."""
        if not self.fitted:
            raise RequiresFittingError(f"{self.name}: fit before saving")
        for component in self.components:
            component.save(os.path.join(directory, COMPONENTS_DIR, component.name))
        super().save(directory)

    def restore(self, directory: str) -> HybridDetector:
        self._directory = directory
        return super().restore(directory)

    def _state(self):
        state, arrays = self.normaliser.state()
        return ({"components": [c.name for c in self.components], "combination": self.combination,
                 **state}, {**arrays, "weights": self.weights})

    def _restore(self, state, arrays):
        if state["components"] != [c.name for c in self.components]:
            raise RequiresFittingError(f"{self.name} was saved with components {state['components']}, "
                                       f"configured now: {[c.name for c in self.components]}")
        for component in self.components:
            nested = os.path.join(self._directory or "", COMPONENTS_DIR, component.name)
            component.restore(nested if self._directory and os.path.isdir(nested)
                              else self.context.detector_dir(component.name))
        self.normaliser = ScoreNormaliser.from_state(state, arrays)
        self.combination = state.get("combination", "weighted_sum")
        self.weights = arrays["weights"]

    def _component_scores(self, texts) -> np.ndarray:
        return np.stack([c.score(texts) for c in self.components], axis=1)  # [N, K]

    def _score(self, texts):
        return combine(self.normaliser.transform(self._component_scores(texts)), self.weights,
                       self.combination)

    def serving_scorer(self):
        if not self.fitted:
            raise RequiresFittingError(f"{self.name}: fit before exporting")
        from text_ood.scorers import HybridScorer

        return HybridScorer([c.serving_scorer() for c in self.components],
                            [c.name for c in self.components], self.normaliser, self.weights,
                            self.combination)
