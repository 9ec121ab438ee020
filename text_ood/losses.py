"""Losses of the text OoD half: causal LM NLL and the two MLKD distillation levels.

Shapes: ``B`` batch, ``T`` tokens (``[BOS] ... [EOS]`` then padding), ``V`` vocabulary,
``D`` hidden size. Logits at position ``t`` predict token ``t + 1``, so token-level losses use
``logits[:, :-1]`` against ``ids[:, 1:]`` with weights ``mask[:, 1:]`` (the real target tokens).
"""

from __future__ import annotations

import tensorflow as tf


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def token_nll(logits: tf.Tensor, ids: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-token negative log-likelihood of the next token.

    Args:
      logits: float32 [B, T, V].
      ids: int32 [B, T].
      mask: float32 [B, T], 1 on real tokens.

    Returns:
      ``nll`` float32 [B, T - 1] (nats) and its ``weights`` float32 [B, T - 1] (``mask[:, 1:]``).
    """
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids[:, 1:], logits=logits[:, :-1])
    return nll, mask[:, 1:]


def causal_lm_loss(logits: tf.Tensor, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean next-token NLL over real target tokens: scalar float32."""
    nll, weights = token_nll(logits, ids, mask)
    return _masked_mean(nll, weights)


def sequence_mean_nll(logits: tf.Tensor, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean NLL of each sequence (log-perplexity; the OoD score): float32 [B]."""
    nll, weights = token_nll(logits, ids, mask)
    return tf.reduce_sum(nll * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def prediction_distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor,
                                 mask: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """Prediction-layer distillation: KL(p_teacher^T || p_student^T) averaged over real tokens.

    Wu et al. 2023, Eq. 3: at every position whose next token is real, the student's
    temperature-softened next-token distribution is pulled towards the teacher's.

    Args:
      teacher_logits: float32 [B, T, V] (no gradient flows into the teacher).
      student_logits: float32 [B, T, V].
      mask: float32 [B, T], 1 on real tokens.
      temperature: softmax temperature T of both distributions.

    Returns:
      Scalar float32: sum_v p_t(v) (log p_t(v) - log p_s(v)), mean over positions 0..T-2 with
      ``mask[:, 1:] == 1``.
    """
    teacher_logits = tf.stop_gradient(teacher_logits[:, :-1]) / temperature
    student_logits = student_logits[:, :-1] / temperature
    teacher_log_probs = tf.nn.log_softmax(teacher_logits, axis=-1)
    student_log_probs = tf.nn.log_softmax(student_logits, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return _masked_mean(kl, mask[:, 1:])


def _layer_normalise(states: tf.Tensor, epsilon: float = 1e-5) -> tf.Tensor:
    """Zero mean, unit variance over the last axis (LayerNorm without scale and offset)."""
    mean, variance = tf.nn.moments(states, axes=[-1], keepdims=True)
    return (states - mean) * tf.math.rsqrt(variance + epsilon)


def state_distances(student: tf.Tensor, teacher: tf.Tensor, distance: str = "mse") -> tf.Tensor:
    """Per-token distance between student and (projected) teacher states.

    Args:
      student: float32 [..., D].
      teacher: float32 [..., D], broadcastable against ``student``.
      distance: "mse" (mean over D of the squared difference; the released recipe),
        "layernorm_mse" (the same after :func:`_layer_normalise` of both: invariant to the
        states' scale, so it cannot be met by shrinking them) or "cosine" (1 - cosine similarity).

    Returns:
      float32 [...] (the broadcast shape without D).
    """
    if distance == "mse":
        return tf.reduce_mean(tf.square(student - teacher), axis=-1)
    if distance == "layernorm_mse":
        return tf.reduce_mean(tf.square(_layer_normalise(student) - _layer_normalise(teacher)),
                              axis=-1)
    if distance == "cosine":
        return 1.0 - tf.reduce_sum(tf.math.l2_normalize(student, axis=-1)
                                   * tf.math.l2_normalize(teacher, axis=-1), axis=-1)
    raise ValueError(f"distance must be 'mse', 'layernorm_mse' or 'cosine', received {distance!r}")


def intermediate_distillation_loss(student_hidden: list[tf.Tensor], projected_teacher: tf.Tensor,
                                   mask: tf.Tensor, nearest_k: int = 2,
                                   distance: str = "mse") -> tf.Tensor:
    """Similarity-based intermediate-layer distillation (Wu et al. 2023, Eq. 4-5, released recipe).

    For each distilled student layer ``s`` and real token, the distance to teacher layer ``l`` is
    ``d_l = mean_D (h_s - W h_l)^2`` (``distance="mse"``; see :func:`state_distances` for the
    normalised variants); the ``nearest_k`` smallest distances are summed (beta_k = 1). The
    result is summed over student layers and averaged over real tokens.

    Args:
      student_hidden: list of S tensors float32 [B, T, D_s] (the distilled student layers).
      projected_teacher: float32 [L, B, T, D_s]: every teacher layer after the shared projection W.
      mask: float32 [B, T], 1 on real tokens.
      nearest_k: K, clipped to L.
      distance: "mse", "layernorm_mse" or "cosine".

    Returns:
      Scalar float32.
    """
    num_teacher_layers = projected_teacher.shape[0]
    k = min(nearest_k, num_teacher_layers) if num_teacher_layers else nearest_k
    total = tf.zeros_like(mask)
    for hidden in student_hidden:
        distances = state_distances(hidden[tf.newaxis], projected_teacher, distance)
        distances = tf.transpose(distances, [1, 2, 0])  # [B, T, L]
        nearest = -tf.math.top_k(-distances, k=k).values  # k smallest: [B, T, k]
        total += tf.reduce_sum(nearest, axis=-1)
    return _masked_mean(total, mask)


def mlkd_student_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, ids: tf.Tensor,
                      mask: tf.Tensor, temperature: float = 1.0, prediction_weight: float = 1.0,
                      lm_weight: float = 0.0, intermediate: tf.Tensor | None = None,
                      intermediate_weight: float = 0.0) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The student's training loss (Wu et al. 2023, Eq. 6, plus an optional ground-truth term).

    ``loss = prediction_weight * L_pred + intermediate_weight * L_int + lm_weight * L_lm`` with
    ``L_pred`` = :func:`prediction_distillation_loss` at ``temperature``, ``L_int`` the
    intermediate-layer term (computed by the caller with :func:`intermediate_distillation_loss`;
    ``None`` drops it) and ``L_lm`` = :func:`causal_lm_loss` of the student on the ID tokens.
    The paper's recipe is ``lm_weight = 0``; a term whose weight is 0 is not computed.

    Args:
      teacher_logits: float32 [B, T, V].
      student_logits: float32 [B, T, V].
      ids: int32 [B, T].
      mask: float32 [B, T], 1 on real tokens.
      temperature: prediction-layer softmax temperature.
      prediction_weight / lm_weight / intermediate_weight: the terms' weights (>= 0).
      intermediate: scalar float32 ``L_int``, or None.

    Returns:
      ``(loss, parts)``: the scalar float32 loss and the unweighted terms by name
      (``prediction_kd``, ``intermediate_kd``, ``lm_nll``; only those computed).
    """
    parts = {}
    loss = tf.constant(0.0)
    if prediction_weight:
        parts["prediction_kd"] = prediction_distillation_loss(teacher_logits, student_logits, mask,
                                                              temperature)
        loss += prediction_weight * parts["prediction_kd"]
    if intermediate is not None and intermediate_weight:
        parts["intermediate_kd"] = intermediate
        loss += intermediate_weight * intermediate
    if lm_weight:
        parts["lm_nll"] = causal_lm_loss(student_logits, ids, mask)
        loss += lm_weight * parts["lm_nll"]
    return loss, parts
