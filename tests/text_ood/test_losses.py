"""Losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

import text_ood  # noqa: F401
import tensorflow as tf

from text_ood.losses import (causal_lm_loss, intermediate_distillation_loss, mlkd_student_loss,
                             prediction_distillation_loss, sequence_mean_nll, state_distances)


def test_causal_lm_loss_ignores_padding():
    # Vocabulary 2; uniform logits -> NLL ln 2 per real target token, padding ignored.
    logits = tf.zeros([1, 4, 2])
    ids = tf.constant([[0, 1, 0, 1]])
    mask = tf.constant([[1.0, 1.0, 1.0, 0.0]])  # targets: ids[1], ids[2] are real, ids[3] pad
    assert float(causal_lm_loss(logits, ids, mask)) == pytest.approx(math.log(2))


def test_sequence_mean_nll_hand_computed():
    # Position 0 predicts id 1 with p = e^2 / (e^2 + 1); position 1 predicts id 0 with p = 1/2.
    logits = tf.constant([[[0.0, 2.0], [0.0, 0.0], [5.0, 5.0]]])
    ids = tf.constant([[0, 1, 0]])
    mask = tf.constant([[1.0, 1.0, 1.0]])
    p = math.exp(2) / (math.exp(2) + 1)
    expected = (-math.log(p) + math.log(2)) / 2
    assert float(sequence_mean_nll(logits, ids, mask)[0]) == pytest.approx(expected, rel=1e-5)


def test_prediction_distillation_kl_hand_computed():
    # Teacher p = (0.5, 0.5) (logits 0, 0); student q = softmax(ln 3, 0) = (0.75, 0.25).
    # KL(p || q) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(2/3) + 0.5 ln 2.
    teacher = tf.constant([[[0.0, 0.0], [9.0, 9.0]]])
    student = tf.constant([[[math.log(3.0), 0.0], [1.0, 2.0]]])
    mask = tf.constant([[1.0, 1.0]])
    expected = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert float(prediction_distillation_loss(teacher, student, mask)) == pytest.approx(expected, rel=1e-5)
    # Identical distributions -> 0; temperature 2 halves the logits before the softmax.
    assert float(prediction_distillation_loss(student, student, mask)) == pytest.approx(0.0, abs=1e-6)
    t2 = 0.5 * math.log(0.5 / (math.sqrt(3) / (math.sqrt(3) + 1))) + 0.5 * math.log(0.5 / (1 / (math.sqrt(3) + 1)))
    assert float(prediction_distillation_loss(teacher, student, mask, temperature=2.0)) == \
        pytest.approx(t2, rel=1e-5)


def test_prediction_distillation_masks_padded_targets():
    teacher = tf.constant([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    student = tf.constant([[[math.log(3.0), 0.0], [50.0, 0.0], [0.0, 0.0]]])
    mask = tf.constant([[1.0, 1.0, 0.0]])  # only position 0 has a real target
    expected = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert float(prediction_distillation_loss(teacher, student, mask)) == pytest.approx(expected, rel=1e-5)


def test_intermediate_distillation_sums_k_nearest_teacher_layers():
    # One student layer, 3 projected teacher layers, D = 2, two tokens (second is padding).
    student = [tf.constant([[[0.0, 0.0], [7.0, 7.0]]])]
    teacher = tf.constant([
        [[[1.0, 1.0], [0.0, 0.0]]],   # MSE to token 0: (1 + 1) / 2 = 1
        [[[2.0, 0.0], [0.0, 0.0]]],   # (4 + 0) / 2 = 2
        [[[3.0, 3.0], [0.0, 0.0]]],   # (9 + 9) / 2 = 9
    ])
    mask = tf.constant([[1.0, 0.0]])
    assert float(intermediate_distillation_loss(student, teacher, mask, nearest_k=2)) == pytest.approx(3.0)
    assert float(intermediate_distillation_loss(student, teacher, mask, nearest_k=1)) == pytest.approx(1.0)
    # Two student layers: distances add up (second layer: MSE 0, 1, 4 for [1, 1] -> nearest 0 + 1).
    two = student + [tf.constant([[[1.0, 1.0], [0.0, 0.0]]])]
    assert float(intermediate_distillation_loss(two, teacher, mask, nearest_k=2)) == pytest.approx(3.0 + 1.0)


def test_intermediate_distillation_has_gradients_for_student_and_projection():
    rng = np.random.default_rng(0)
    student = tf.Variable(rng.normal(size=(1, 2, 3, 4)).astype(np.float32))
    projection = tf.keras.layers.Dense(4)
    teacher = tf.constant(rng.normal(size=(3, 2, 3, 5)).astype(np.float32))
    mask = tf.ones([2, 3])
    with tf.GradientTape() as tape:
        loss = intermediate_distillation_loss([student[0]], projection(teacher), mask)
    grads = tape.gradient(loss, [student] + projection.trainable_variables)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_mlkd_student_loss_weights_hand_computed():
    # Vocabulary 2, one real target (ids[1] = 1). Teacher p = (0.5, 0.5); student q = (0.75, 0.25).
    # L_pred = KL(p || q) = 0.5 ln(2/3) + 0.5 ln 2; L_lm = -ln q(1) = ln 4; L_int given = 0.7.
    teacher = tf.constant([[[0.0, 0.0], [9.0, 9.0]]])
    student = tf.constant([[[math.log(3.0), 0.0], [1.0, 2.0]]])
    ids = tf.constant([[0, 1]])
    mask = tf.constant([[1.0, 1.0]])
    kl = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    loss, parts = mlkd_student_loss(teacher, student, ids, mask, prediction_weight=1.0,
                                    lm_weight=2.0, intermediate=tf.constant(0.7),
                                    intermediate_weight=0.5)
    assert float(loss) == pytest.approx(kl + 0.5 * 0.7 + 2.0 * math.log(4), rel=1e-5)
    assert float(parts["lm_nll"]) == pytest.approx(math.log(4), rel=1e-5)
    assert float(parts["prediction_kd"]) == pytest.approx(kl, rel=1e-5)
    # The paper's recipe (lm_weight 0): the ground-truth term is neither added nor computed.
    loss, parts = mlkd_student_loss(teacher, student, ids, mask)
    assert float(loss) == pytest.approx(kl, rel=1e-5) and set(parts) == {"prediction_kd"}
    # Ground truth only: the plain causal LM loss.
    loss, parts = mlkd_student_loss(teacher, student, ids, mask, prediction_weight=0.0,
                                    lm_weight=1.0)
    assert float(loss) == pytest.approx(math.log(4), rel=1e-5) and set(parts) == {"lm_nll"}


def test_normalised_state_distances_hand_computed():
    # student (1, 3), teacher (2, 6) = 2 x student: MSE = ((1 + 9) / 2) = 5, but after layer
    # normalisation both are (-1, 1) and cosine similarity is 1: the normalised distances are 0.
    student = tf.constant([[1.0, 3.0]])
    teacher = tf.constant([[2.0, 6.0]])
    assert float(state_distances(student, teacher, "mse")[0]) == pytest.approx(5.0)
    assert float(state_distances(student, teacher, "layernorm_mse")[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(state_distances(student, teacher, "cosine")[0]) == pytest.approx(0.0, abs=1e-6)
    # Orthogonal (1, 0) vs (0, 1): cosine distance 1; layer-normalised (1, -1) vs (-1, 1): MSE 4.
    student, teacher = tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 1.0]])
    assert float(state_distances(student, teacher, "cosine")[0]) == pytest.approx(1.0)
    assert float(state_distances(student, teacher, "layernorm_mse")[0]) == pytest.approx(4.0, rel=1e-4)
    # Shrinking both states leaves the normalised distances unchanged (no trivial solution).
    small = state_distances(0.1 * student, 0.1 * teacher, "layernorm_mse")
    assert float(small[0]) == pytest.approx(4.0, rel=1e-2)
    with pytest.raises(ValueError, match="distance must be"):
        state_distances(student, teacher, "l1")


def test_intermediate_distillation_with_a_normalised_distance():
    # One student layer and two teacher layers: a scaled copy (distance 0 after normalising)
    # and an orthogonal state (cosine distance 1); K = 1 keeps the copy, K = 2 adds both.
    student = [tf.constant([[[1.0, 0.0]]])]
    teacher = tf.constant([[[[5.0, 0.0]]], [[[0.0, 1.0]]]])
    mask = tf.constant([[1.0]])
    assert float(intermediate_distillation_loss(student, teacher, mask, 1, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(intermediate_distillation_loss(student, teacher, mask, 2, "cosine")) == pytest.approx(1.0)
