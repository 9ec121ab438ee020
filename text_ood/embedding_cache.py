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


def pool_layer_embeddings(layers: np.ndarray, pool: int) -> np.ndarray:
    """float32 [N, L + 1, D] unit-norm per-layer embeddings -> [N, D] of the last ``pool`` layers.

    The re-normalised mean, as :meth:`SentenceEncoder.embed_texts` computes it with
    ``pool_layers = pool`` (equal to float32 rounding, ~1e-7).
    """
    mean = layers[:, -pool:].mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)


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
        # Every-layer entries do not depend on pool_layers: keyed as if pool_layers were 1.
        fingerprint = (self.encoder.fingerprint.rsplit(":pool", 1)[0] + ":pool1:all_layers" if all_layers
                       else self.encoder.fingerprint)
        digest = hashlib.sha256(fingerprint.encode())
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
        layers_path = os.path.join(self.directory, f"{self.key(texts, True)}.npy")
        if not all_layers and os.path.isfile(layers_path):
            # The every-layer entry (e.g. from `select`) holds this embedding: the re-normalised
            # mean of the last pool_layers unit-norm layers, as SentenceEncoder.embed_texts (to
            # float32 rounding, ~1e-7).
            logger.info("pooling %d cached every-layer embeddings (last %d layers)", len(texts),
                        self.encoder.pool_layers)
            embeddings = pool_layer_embeddings(np.load(layers_path), self.encoder.pool_layers)
            save_npy_atomic(path, embeddings)
            return embeddings
        logger.info("embedding %d texts%s", len(texts), " (every layer)" if all_layers else "")
        embeddings = self.encoder.embed(texts, self.batch_size, all_layers=all_layers)
        os.makedirs(self.directory, exist_ok=True)
        save_npy_atomic(path, embeddings)  # a concurrent reader sees the whole file or none
        return embeddings
