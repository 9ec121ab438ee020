"""Losses: the corrected in-batch softmax of the main task and the SSL InfoNCE."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

MIN_LOGIT = -1e9


def retrieval_task(temperature: float, remove_accidental_hits: bool) -> tfrs.tasks.Retrieval:
    """TFRS's retrieval task returning per-example losses (reduction NONE).

    ``tfrs.tasks.Retrieval`` sums its loss over the batch by default; the model averages the
    per-example losses instead, so that ``alpha`` weighs two losses of the same scale.
    Logits are ``cos(q, c) / temperature - log(P(c))`` when sampling probabilities are given
    (logQ correction), and accidental hits (the positive item appearing again as a negative) are
    removed when candidate ids are given.
    """
    return tfrs.tasks.Retrieval(
        loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        name="retrieval",
    )


def mixed_sampling_probability(probability: tf.Tensor, batch_size: tf.Tensor, num_negatives: int,
                               num_items: int) -> tf.Tensor:
    """Sampling probability of candidates under mixed negative sampling (Yang et al., WWW 2020 companion).

    MNS scores every query of a batch against the ``B`` in-batch items (drawn from the training
    data, i.e. from the unigram distribution ``p_j``) **and** ``B'`` items drawn uniformly from
    the item corpus of ``N`` items (``1 / N`` each). In-batch negatives alone never show the model
    the items the training data rarely or never holds (fresh and tail items): it never learns to
    push them away, although serving ranks the whole corpus; the uniform ones fix that selection
    bias. The candidate set is then a sample from the mixture of the two distributions, each slot
    unigram with probability ``B / (B + B')`` and uniform with ``B' / (B + B')``, so the logQ
    correction (the importance weight of the sampled softmax) uses the mixture's probability,
    for both kinds of candidate alike (an item can arrive either way)::

        q_j = (B * p_j + B' / N) / (B + B')

    and the logits are ``cos(q, c_j) / temperature - log(q_j)`` (``- s * log(q_j)`` with
    ``train.logq_strength = s``). With ``B' = 0`` this is ``p_j``, the in-batch correction.

    Args:
      probability: float32 [C] unigram probabilities ``p_j`` of the candidates (in-batch first,
        then the uniform ones).
      batch_size: B, the number of in-batch candidates (a scalar tensor or int).
      num_negatives: B', the number of uniform candidates.
      num_items: N, the corpus size.

    Returns:
      float32 [C] mixture probabilities ``q_j``.
    """
    batch = tf.cast(batch_size, tf.float32)
    extra = float(num_negatives)
    return (batch * probability + extra / float(num_items)) / (batch + extra)


def info_nce(view_1: tf.Tensor, view_2: tf.Tensor, temperature: float, ids: tf.Tensor | None = None) -> tf.Tensor:
    """The SSL loss of Yao et al. 2021, eq. (3), averaged over the batch.

    ``L = -1/N sum_i log( exp(s(z_i, z'_i)/tau) / sum_j exp(s(z_i, z'_j)/tau) )``, with ``s`` the
    dot product of unit vectors (cosine) and the other items of the SSL batch as negatives.

    Args:
      view_1: float32 [N, d], unit-norm embeddings of view 1.
      view_2: float32 [N, d], unit-norm embeddings of view 2 (row i = same item as view_1 row i).
      temperature: tau > 0.
      ids: optional int [N] item ids; a negative j with ``ids[j] == ids[i]`` (the same item sampled
        twice) is removed from row i's softmax.

    Returns:
      Scalar float32 loss.
    """
    logits = tf.matmul(view_1, view_2, transpose_b=True) / temperature
    size = tf.shape(logits)[0]
    labels = tf.eye(size)
    if ids is not None:
        duplicates = tf.cast(tf.equal(ids[:, None], ids[None, :]), tf.float32) - labels
        logits = tf.where(duplicates > 0, MIN_LOGIT, logits)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))
