"""k-nearest-neighbour OoD detector on sentence embeddings (label-free).

Deep nearest neighbours (Sun et al., ICML 2022) on a pre-trained sentence encoder: the OoD score
of a text is one minus the cosine similarity between its unit-norm embedding and its k-th nearest
ID training embedding, ``1 - cos_(k)(x)`` in [0, 2] (monotone in the Euclidean k-NN distance of
unit vectors, ``sqrt(2 - 2 cos)``), or with ``aggregation="mean"`` one minus the mean similarity
of the k nearest. The search is exact: a matrix product against every stored ID embedding, which
the exported SavedModel holds as a variable.

Optionally (``encoder.knn_center``) the embeddings are centred first: the mean ``mu`` of the ID
training embeddings is subtracted from bank and query embeddings, which are then re-normalised,
so the cosine compares directions relative to the ID data rather than to the origin: the offset
all embeddings share otherwise inflates every similarity (CLINC150 training texts, MiniLM pooled
over the last 3 layers: |mu| = 0.62, mean pairwise cosine 0.39).
``mu`` is a [D] constant of the exported graph; the bank is stored centred and re-normalised.
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
      center: subtract the bank mean (float32 [D]) from bank and query embeddings and
        re-normalise both before the cosine search (module docstring).

    Attributes:
      mean: float32 [D] bank mean subtracted before the search, or None (no centring).

    Raises:
      ValueError: ``bank`` is not rank 2, holds fewer than ``k`` embeddings, or an unknown
        aggregation.
    """

    def __init__(self, bank: np.ndarray, k: int, aggregation: str = "kth", center: bool = False):
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
        self.mean = bank.mean(axis=0) if center else None
        if center:
            bank = _center(bank, self.mean)
        self.bank = tf.Variable(bank, trainable=False, name="bank")
        self._chunks = [(s, min(s + BANK_CHUNK, len(bank))) for s in range(0, len(bank), BANK_CHUNK)]

    @tf.function(reduce_retracing=True, autograph=False)
    def __call__(self, embeddings):
        """``embeddings`` float32 [B, D] -> ``1 - cos`` of the k nearest bank entries, float32 [B]."""
        if self.mean is not None:  # a graph constant: traced from the NumPy array
            embeddings = _center(embeddings, tf.constant(self.mean))
        candidates = []
        for start, end in self._chunks:  # static: the bank size is fixed at fit time
            similarity = tf.matmul(embeddings, self.bank[start:end], transpose_b=True)  # [B, n]
            candidates.append(tf.math.top_k(similarity, k=min(self.k, end - start)).values)
        top = tf.math.top_k(tf.concat(candidates, axis=1), k=self.k).values  # [B, k], descending
        if self.aggregation == "mean":
            return 1.0 - tf.reduce_mean(top, axis=1)
        return 1.0 - top[:, self.k - 1]


def _center(embeddings, mean):
    """float32 [N, D] embeddings (NumPy or tensor) minus ``mean`` [D], re-normalised: [N, D]."""
    if isinstance(embeddings, np.ndarray):
        shifted = embeddings - mean
        return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)
    return tf.math.l2_normalize(embeddings - mean, axis=1, epsilon=1e-24)


class KNNDetector(EmbeddingDetector):
    """Label-free k-NN cosine distance to the ID training texts (``config.encoder.knn_*``)."""

    @property
    def score_description(self) -> str:
        cfg = self.context.config.encoder
        which = (f"the k-th (k={cfg.knn_k})" if cfg.knn_aggregation == "kth"
                 else f"the mean of the k={cfg.knn_k}")
        centred = ", embeddings centred on the ID training mean" if cfg.knn_center else ""
        return (f"1 - cosine similarity ({which} nearest ID training texts, embedding pooled over "
                f"the last {cfg.pool_layers} layer(s){centred}); higher = more OoD")

    def _build_head(self, embeddings, labels):
        cfg = self.context.config.encoder
        return KNNHead(embeddings, cfg.knn_k, cfg.knn_aggregation, cfg.knn_center)

    def _head_state(self):
        arrays = {"bank": self.head.bank.numpy()}  # centred and re-normalised when centring
        if self.head.mean is not None:
            arrays["mean"] = self.head.mean
        return {"k": self.head.k, "aggregation": self.head.aggregation}, arrays

    def _head_from_state(self, state, arrays):
        head = KNNHead(arrays["bank"], state["k"], state["aggregation"], center=False)
        head.mean = arrays.get("mean")  # the stored bank is already centred
        return head
