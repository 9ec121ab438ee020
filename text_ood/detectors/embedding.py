"""Detectors on pre-trained sentence embeddings: the shared base and its in-graph scorer.

An :class:`EmbeddingDetector` embeds texts with the workdir's sentence encoder
(``train --encoder DIR``; :mod:`text_ood.encoder`) and scores the unit-norm embeddings with a
*head*: a ``tf.Module`` mapping float32 [B, D] embeddings to float32 [B] OoD scores (higher = more
OoD), built by ``fit`` from the ID training embeddings (cached in ``WORKDIR/embeddings/``).
Python scoring and the exported SavedModel run the same head, so they cannot drift apart;
subclasses implement :meth:`_build_head` and the head's saved form (:meth:`_head_state`,
:meth:`_head_from_state`). Scoring always embeds the raw texts (no disk cache; a split scored
by several detectors in one process is embedded once), as the export does.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.embedding_cache import EmbeddingCache
from text_ood.encoder import SentenceEncoder

HEAD_BATCH = 1024  # embeddings per head call in Python scoring
RECENT_SIZE = 4  # text lists whose embeddings stay in memory (see EmbeddingDetector.embed)
RECENT_MIN_TEXTS = 256
_RECENT: collections.OrderedDict = collections.OrderedDict()


class MissingEncoderError(ValueError):
    """An embedding detector was requested for a workdir trained without ``--encoder``."""


@functools.lru_cache(maxsize=2)
def load_encoder(directory: str, max_length: int, pool_layers: int) -> SentenceEncoder:
    """Loads (once per process) the sentence encoder of ``directory``."""
    return SentenceEncoder.from_directory(directory, max_length, pool_layers)


class EmbeddingDetector(OODDetector):
    """Base of the sentence-embedding detectors (kNN, Mahalanobis).

    Args:
      name: registry name.
      context: the workdir's ``TrainingContext``; its ``encoder_source["path"]`` names the
        encoder directory and ``config.encoder`` the settings.

    Raises:
      MissingEncoderError: the workdir has no encoder.
    """

    score_description = "embedding OoD score; higher = more OoD"

    def __init__(self, name: str, context):
        super().__init__()
        self.name = name
        self.context = context
        if not getattr(context, "encoder_source", None):
            raise MissingEncoderError(
                f"detector {name!r} needs a sentence encoder: train this workdir with "
                "--encoder DIR (a local Hugging Face BERT-family sentence-encoder directory)")
        self.head = None

    @functools.cached_property
    def cache(self) -> EmbeddingCache:
        cfg = self.context.config.encoder
        encoder = load_encoder(self.context.encoder_source["path"], cfg.max_length, cfg.pool_layers)
        return EmbeddingCache(encoder, os.path.join(self.context.workdir, "embeddings"),
                              batch_size=cfg.batch_size)

    @property
    def encoder(self) -> SentenceEncoder:
        return self.cache.encoder

    def embed(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """float32 [N, D] unit-norm embeddings of the texts (computed, never read from disk).

        Lists of :data:`RECENT_MIN_TEXTS` or more are kept in memory for the process's next
        :data:`RECENT_SIZE` calls, so detectors that share an encoder (``evaluate`` of k-NN,
        Mahalanobis, hybrids, ``selected``) embed the same split once; the texts are still
        embedded from their raw form, as the export does.
        """
        if len(texts) < RECENT_MIN_TEXTS:
            return self.encoder.embed(texts, self.context.config.encoder.batch_size)
        key = self.cache.key(texts)  # encoder fingerprint (weights, settings) + the exact texts
        if key not in _RECENT:
            _RECENT[key] = self.encoder.embed(texts, self.context.config.encoder.batch_size)
            while len(_RECENT) > RECENT_SIZE:
                _RECENT.popitem(last=False)
        _RECENT.move_to_end(key)
        return _RECENT[key]

    def _fit(self, train_texts, labels):
        self.head = self._build_head(self.cache.embed(train_texts), labels)

    def _build_head(self, embeddings: np.ndarray, labels: Sequence | None) -> tf.Module:
        """Returns the scoring head fitted on ID embeddings (float32 [N, D]) and optional labels."""
        raise NotImplementedError

    def _head_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted head's settings and arrays (what :meth:`_head_from_state` rebuilds it from)."""
        raise NotImplementedError

    def _head_from_state(self, state: dict, arrays: dict[str, np.ndarray]) -> tf.Module:
        raise NotImplementedError

    def _state(self):
        return self._head_state()

    def _restore(self, state, arrays):
        self.head = self._head_from_state(state, arrays)

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Scores float32 [N, D] embeddings with the fitted head: float64 [N]."""
        if self.head is None:
            raise RequiresFittingError(f"{self.name}: call fit(train_texts) before scoring")
        out = [self.head(tf.constant(embeddings[i:i + HEAD_BATCH])).numpy()
               for i in range(0, len(embeddings), HEAD_BATCH)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def _score(self, texts):
        return self.score_embeddings(self.embed(texts))

    def serving_scorer(self):
        if not self.fitted:
            raise RequiresFittingError(f"{self.name}: fit before exporting")
        from text_ood.scorers import EmbeddingScorer

        return EmbeddingScorer(self.encoder, self.head)
