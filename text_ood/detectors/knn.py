"""k-nearest-neighbour OoD detector on sentence embeddings (label-free).

Deep nearest neighbours (Sun et al., ICML 2022) on a pre-trained sentence encoder: the OoD score
of a text is one minus the cosine similarity between its unit-norm embedding and its k-th nearest
ID training embedding, ``1 - cos_(k)(x)`` in [0, 2] (monotone in the Euclidean k-NN distance of
unit vectors, ``sqrt(2 - 2 cos)``), or with ``aggregation="mean"`` one minus the mean similarity
of the k nearest. The search is exact: a matrix product against every stored ID embedding, which
the exported SavedModel holds as a variable.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from text_ood.detectors.embedding import EmbeddingDetector

BANK_CHUNK = 65536  # ID embeddings per similarity block: bounds the [B, chunk] score matrix


class KNNHead(tf.Module):
    """Exact k-NN cosine distance to a bank of unit-norm ID embeddings.

    Args:
      bank: float32 [N, D] unit-norm ID embeddings (N >= k).
      k: neighbours looked at (1 = the nearest).
      aggregation: "kth" scores the k-th nearest similarity, "mean" the mean of the k nearest.

    Raises:
      ValueError: ``bank`` is not rank 2, holds fewer than ``k`` embeddings, or an unknown
        aggregation.
    """

    def __init__(self, bank: np.ndarray, k: int, aggregation: str = "kth"):
        super().__init__(name="knn_head")
        if aggregation not in ("kth", "mean"):
            raise ValueError(f"aggregation must be 'kth' or 'mean', received {aggregation!r}")
        self.aggregation = aggregation
        bank = np.asarray(bank, dtype=np.float32)
        if bank.ndim != 2:
            raise ValueError(f"`bank` must be a rank-2 [N, D] array, received shape {bank.shape}")
        if not 1 <= k <= len(bank):
            raise ValueError(f"k must be in [1, {len(bank)}] (the bank size), received {k}")
        self.k = k
        self.bank = tf.Variable(bank, trainable=False, name="bank")
        self._chunks = [(s, min(s + BANK_CHUNK, len(bank))) for s in range(0, len(bank), BANK_CHUNK)]

    @tf.function(reduce_retracing=True, autograph=False)
    def __call__(self, embeddings):
        """``embeddings`` float32 [B, D] -> ``1 - cos`` of the k nearest bank entries, float32 [B]."""
        candidates = []
        for start, end in self._chunks:  # static: the bank size is fixed at fit time
            similarity = tf.matmul(embeddings, self.bank[start:end], transpose_b=True)  # [B, n]
            candidates.append(tf.math.top_k(similarity, k=min(self.k, end - start)).values)
        top = tf.math.top_k(tf.concat(candidates, axis=1), k=self.k).values  # [B, k], descending
        if self.aggregation == "mean":
            return 1.0 - tf.reduce_mean(top, axis=1)
        return 1.0 - top[:, self.k - 1]


class KNNDetector(EmbeddingDetector):
    """Label-free k-NN cosine distance to the ID training texts (``config.encoder.knn_*``)."""

    @property
    def score_description(self) -> str:
        cfg = self.context.config.encoder
        which = (f"the k-th (k={cfg.knn_k})" if cfg.knn_aggregation == "kth"
                 else f"the mean of the k={cfg.knn_k}")
        return (f"1 - cosine similarity ({which} nearest ID training texts, embedding pooled over "
                f"the last {cfg.pool_layers} layer(s)); higher = more OoD")

    def _build_head(self, embeddings, labels):
        cfg = self.context.config.encoder
        return KNNHead(embeddings, cfg.knn_k, cfg.knn_aggregation)
