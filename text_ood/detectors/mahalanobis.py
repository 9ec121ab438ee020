"""Mahalanobis OoD detector on sentence embeddings: class-conditional with labels, one-class without.

Lee et al. (NeurIPS 2018): fit a Gaussian per ID class with one shared ("tied") covariance and
score a text by its smallest squared Mahalanobis distance to a class mean,
``min_c (x - mu_c)^T Sigma^-1 (x - mu_c)``. Without labels it is the one-class version: one mean,
the covariance of all ID embeddings. The covariance is shrunk towards a scaled identity,
``(1 - a) Sigma + a tr(Sigma)/D I`` (``config.encoder.mahalanobis_shrinkage``), which keeps it
invertible for few texts and damps noisy directions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from text_ood.detectors.embedding import EmbeddingDetector

logger = logging.getLogger(__name__)


def fit_gaussians(embeddings: np.ndarray, labels: Sequence | None,
                  shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the whitening matrix of the shared, shrunk covariance.

    Args:
      embeddings: float [N, D] ID embeddings.
      labels: N class labels (any hashable values), or None for one class.
      shrinkage: ``a`` in [0, 1].

    Returns:
      ``means`` float64 [C, D] and ``whitening`` float64 [D, D] with
      ``whitening @ whitening.T == inverse(shrunk covariance)``.

    Raises:
      ValueError: labels of the wrong length, shrinkage outside [0, 1], or a singular covariance.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"`embeddings` must be [N >= 2, D], received shape {x.shape}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], received {shrinkage}")
    if labels is None:
        index = np.zeros(len(x), dtype=np.int64)
    else:
        if len(labels) != len(x):
            raise ValueError(f"received {len(labels)} labels for {len(x)} texts")
        _, index = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    means = np.stack([x[index == c].mean(axis=0) for c in range(index.max() + 1)])
    residuals = x - means[index]
    covariance = residuals.T @ residuals / len(x)
    dim = covariance.shape[0]
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    if eigenvalues[0] <= 1e-10 * max(eigenvalues.mean(), 1e-300):
        raise ValueError(f"the covariance of {len(x)} embeddings in {dim} dimensions is singular; "
                         "set encoder.mahalanobis_shrinkage > 0")
    return means, eigenvectors / np.sqrt(eigenvalues)


class MahalanobisHead(tf.Module):
    """Smallest squared Mahalanobis distance to the class means.

    Args:
      means: float [C, D] class means.
      whitening: float [D, D], ``whitening @ whitening.T`` = the precision matrix.
    """

    def __init__(self, means: np.ndarray, whitening: np.ndarray):
        super().__init__(name="mahalanobis_head")
        centres = np.asarray(means, np.float64) @ whitening
        self.whitening = tf.Variable(whitening.astype(np.float32), trainable=False, name="whitening")
        self.centres = tf.Variable(centres.astype(np.float32), trainable=False, name="centres")
        self.centre_norms = tf.Variable(np.sum(centres ** 2, axis=1).astype(np.float32),
                                        trainable=False, name="centre_norms")

    @tf.function(reduce_retracing=True, autograph=False)
    def __call__(self, embeddings):
        """``embeddings`` float32 [B, D] -> min_c squared Mahalanobis distance, float32 [B]."""
        z = tf.matmul(embeddings, self.whitening)  # [B, D]
        distances = (tf.reduce_sum(z * z, axis=1, keepdims=True)
                     - 2.0 * tf.matmul(z, self.centres, transpose_b=True)
                     + self.centre_norms[tf.newaxis, :])  # [B, C]
        return tf.maximum(tf.reduce_min(distances, axis=1), 0.0)


class MahalanobisDetector(EmbeddingDetector):
    """Mahalanobis distance on sentence embeddings.

    Args:
      name: registry name.
      context: the workdir's ``TrainingContext``.
      use_labels: class-conditional when ``fit`` receives ID labels; False = always one-class
        (label-free).
    """

    @property
    def score_description(self) -> str:
        means = (f"the nearest of {self.classes} ID class means" if self.classes > 1
                 else "the ID mean (one-class)")
        return (f"squared Mahalanobis distance to {means} (tied covariance, shrinkage "
                f"{self.context.config.encoder.mahalanobis_shrinkage}); higher = more OoD")

    def __init__(self, name: str, context, use_labels: bool = True):
        super().__init__(name, context)
        self.use_labels = use_labels
        self.classes = 0

    def _build_head(self, embeddings, labels):
        labels = labels if self.use_labels else None
        means, whitening = fit_gaussians(embeddings, labels,
                                         self.context.config.encoder.mahalanobis_shrinkage)
        self.classes = len(means)
        self._gaussians = means, whitening
        logger.info("%s: %s Gaussian over %d embeddings (%d classes)", self.name,
                    "class-conditional" if labels is not None else "one-class", len(embeddings),
                    self.classes)
        return MahalanobisHead(means, whitening)

    def _head_state(self):
        means, whitening = self._gaussians
        return {"classes": self.classes}, {"means": means, "whitening": whitening}

    def _head_from_state(self, state, arrays):
        self.classes = state["classes"]
        self._gaussians = arrays["means"], arrays["whitening"]
        return MahalanobisHead(arrays["means"], arrays["whitening"])
