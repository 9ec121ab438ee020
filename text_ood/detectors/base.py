"""The detector contract: ``fit`` on ID texts, ``score`` texts; higher scores = more likely OoD.

A detector only detects: it fits on already trained models (a language model a training stage
left in the workdir, a pre-trained sentence encoder) and ID texts, and scores texts. ``save``
writes what ``fit`` computed (``detector.json`` + ``arrays.npz``) and ``restore`` reads it back,
so ``evaluate`` and ``export`` use exactly what ``train`` fitted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from core.files import write_json_atomic

DETECTOR_FILE = "detector.json"
ARRAYS_FILE = "arrays.npz"


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

    def save(self, directory: str) -> None:
        """Writes the fitted state to ``directory`` (``detector.json`` last, so it marks completion).

        Raises:
          RequiresFittingError: called before :meth:`fit`.
        """
        if not self._fitted:
            raise RequiresFittingError(f"{self.name}: fit before saving")
        state, arrays = self._state()
        os.makedirs(directory, exist_ok=True)
        if arrays:
            tmp = os.path.join(directory, f".{ARRAYS_FILE}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, os.path.join(directory, ARRAYS_FILE))
        write_json_atomic(os.path.join(directory, DETECTOR_FILE),
                          {"name": self.name, "class": type(self).__name__, "state": state}, indent=2)

    def restore(self, directory: str) -> OODDetector:
        """Loads the state :meth:`save` wrote to ``directory``; returns self, ready to score.

        Raises:
          RequiresFittingError: nothing was saved there (the detector was not trained in this
            workdir), or by another detector class.
        """
        path = os.path.join(directory, DETECTOR_FILE)
        if not os.path.isfile(path):
            raise RequiresFittingError(f"{self.name}: not trained in this workdir (no {path}); run "
                                       f"`python -m text_ood train --detectors {self.name}` first")
        with open(path) as f:
            document = json.load(f)
        if document["class"] != type(self).__name__:
            raise RequiresFittingError(f"{path} holds a {document['class']}, not a {type(self).__name__}")
        arrays_path = os.path.join(directory, ARRAYS_FILE)
        arrays = dict(np.load(arrays_path)) if os.path.isfile(arrays_path) else {}
        self._restore(document["state"], arrays)
        self._fitted = True
        return self

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

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What :meth:`save` writes: JSON-able settings and named arrays."""
        raise NotImplementedError

    def _restore(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """Rebuilds the fitted state from :meth:`_state`'s output."""
        raise NotImplementedError

    def _score(self, texts: Sequence[str | bytes]) -> np.ndarray:
        raise NotImplementedError
