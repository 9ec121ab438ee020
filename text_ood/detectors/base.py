"""The detector contract: ``fit`` on ID texts, ``score`` texts; higher scores = more likely OoD."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class RequiresFittingError(RuntimeError):
    """A detector was asked to score (or export) before :meth:`OODDetector.fit` was called."""


class OODDetector:
    """Base class of every OoD detector of the project.

    Subclasses implement :meth:`_fit` and :meth:`_score`; this class enforces the contract:
    ``score`` before ``fit`` raises :class:`RequiresFittingError`, scores come back as a float64
    array with one finite value per text, and higher always means more OoD.

    Attributes:
      name: the registry name (the row label in ``eval.json``).
    """

    name = "detector"

    def __init__(self):
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    def fit(self, train_texts: Sequence[str], labels: Sequence[int] | None = None) -> OODDetector:
        """Fits the detector on in-distribution texts (``labels``: optional ID classes). Returns self."""
        if len(train_texts) == 0:
            raise ValueError(f"{self.name}: fit needs at least one ID training text, received none")
        self._fit(train_texts, labels)
        self._fitted = True
        return self

    def score(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """OoD scores of ``texts``: float64 [len(texts)], higher = more likely OoD.

        Raises:
          RequiresFittingError: called before :meth:`fit`.
        """
        if not self._fitted:
            raise RequiresFittingError(f"{self.name}: call fit(train_texts) before score(texts)")
        if isinstance(texts, (str, bytes)):
            raise TypeError(f"{self.name}: score expects a sequence of texts, received a single "
                            f"{type(texts).__name__}; wrap it in a list")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        scores = np.asarray(self._score(texts), dtype=np.float64)
        if scores.shape != (len(texts),):
            raise AssertionError(f"{self.name}: _score returned shape {scores.shape} for {len(texts)} texts")
        return scores

    def serving_scorer(self):
        """Returns a ``tf.Module`` for export (see :mod:`text_ood.export`).

        Its ``score_texts(text: tf.string [B]) -> {"ood_score": float32 [B], "perplexity":
        float32 [B]}`` must reproduce :meth:`score` in-graph.

        Raises:
          NotImplementedError: this detector has no in-graph form.
        """
        raise NotImplementedError(f"detector {self.name!r} cannot be exported as a SavedModel")

    def _fit(self, train_texts: Sequence[str], labels: Sequence[int] | None) -> None:
        raise NotImplementedError

    def _score(self, texts: Sequence[str | bytes]) -> np.ndarray:
        raise NotImplementedError
