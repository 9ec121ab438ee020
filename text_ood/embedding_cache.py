"""A disk cache of sentence embeddings per workdir, so detectors sharing an encoder embed once.

``train``, ``evaluate`` and ``export`` each re-fit the embedding detectors (kNN, Mahalanobis, the
hybrid) on the ID training texts and score the same splits; embedding 15,000 texts takes minutes
on a CPU, fitting the detectors on the embeddings takes seconds. Entries are keyed by the
encoder's fingerprint (weights, vocabulary, max length) and the exact texts, so a changed encoder
or data set never reads stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np

from core.files import save_npy_atomic
from text_ood.encoder import SentenceEncoder

logger = logging.getLogger(__name__)


class EmbeddingCache:
    """Embeds text lists with ``encoder``, caching lists of ``min_texts`` or more under ``directory``.

    Args:
      encoder: the sentence encoder.
      directory: cache directory (created on first write), e.g. ``WORKDIR/embeddings``.
      batch_size: texts per encoder call.
      min_texts: shorter lists (single requests) are embedded without touching the disk. The
        directory only ever saves time: delete it whenever.
    """

    def __init__(self, encoder: SentenceEncoder, directory: str, batch_size: int = 128,
                 min_texts: int = 16):
        self.encoder = encoder
        self.directory = directory
        self.batch_size = batch_size
        self.min_texts = min_texts

    def key(self, texts: Sequence[str | bytes], all_layers: bool = False) -> str:
        digest = hashlib.sha256(self.encoder.fingerprint.encode() + (b":all_layers" if all_layers else b""))
        for text in texts:
            data = text if isinstance(text, bytes) else str(text).encode("utf-8", errors="replace")
            digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()[:24]

    def embed(self, texts: Sequence[str | bytes], all_layers: bool = False) -> np.ndarray:
        """float32 [len(texts), D] unit-norm embeddings, from the cache when present.

        With ``all_layers`` the unit-norm pooled states of every layer, float32 [N, L + 1, D]
        (:meth:`SentenceEncoder.embed`), for studies of ``pool_layers``.
        """
        if len(texts) < self.min_texts:
            return self.encoder.embed(texts, self.batch_size, all_layers=all_layers)
        path = os.path.join(self.directory, f"{self.key(texts, all_layers)}.npy")
        shape = ((len(texts), self.encoder.num_layers + 1, self.encoder.dim) if all_layers
                 else (len(texts), self.encoder.dim))
        if os.path.isfile(path):
            embeddings = np.load(path)
            if embeddings.shape == shape:
                return embeddings
            logger.warning("ignoring cache entry %s of shape %s", path, embeddings.shape)
        logger.info("embedding %d texts%s", len(texts), " (every layer)" if all_layers else "")
        embeddings = self.encoder.embed(texts, self.batch_size, all_layers=all_layers)
        os.makedirs(self.directory, exist_ok=True)
        save_npy_atomic(path, embeddings)  # a concurrent reader sees the whole file or none
        return embeddings
