"""k-NN and Mahalanobis heads and the hybrid's combination rule, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from text_ood.detectors import knn as knn_module
from text_ood.detectors.hybrid import combination_weights
from text_ood.detectors.knn import KNNHead
from text_ood.detectors.mahalanobis import MahalanobisHead, fit_gaussians
from text_ood.normalisation import ScoreNormaliser


def _score(head, queries):
    return head(tf.constant(queries, tf.float32)).numpy()


def test_knn_head_by_hand():
    bank = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    queries = [[1.0, 0.0], [0.8, 0.6]]
    # Similarities: q1 -> [1, 0, 0.6]; q2 -> [0.8, 0.6, 0.96].
    np.testing.assert_allclose(_score(KNNHead(bank, 1), queries), [0.0, 0.04], atol=1e-6)
    np.testing.assert_allclose(_score(KNNHead(bank, 2), queries), [0.4, 0.2], atol=1e-6)
    np.testing.assert_allclose(_score(KNNHead(bank, 2, "mean"), queries), [0.2, 0.12], atol=1e-6)
    np.testing.assert_allclose(_score(KNNHead(bank, 3, "mean"), queries),
                               [1 - 1.6 / 3, 1 - 2.36 / 3], atol=1e-6)


def test_knn_head_chunked_search_is_exact(monkeypatch):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(23, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    whole = _score(KNNHead(bank, 4), queries)
    monkeypatch.setattr(knn_module, "BANK_CHUNK", 3)  # 8 blocks, the last with 2 entries
    chunked = KNNHead(bank, 4)
    assert len(chunked._chunks) == 8
    np.testing.assert_allclose(_score(chunked, queries), whole, atol=1e-6)
    expected = 1 - np.sort(queries @ bank.T, axis=1)[:, -4]
    np.testing.assert_allclose(whole, expected, atol=1e-6)


def test_centred_knn_head_by_hand():
    bank = [[0.6, 0.8], [0.6, -0.8]]
    queries = [[1.0, 0.0], [0.8, 0.6]]
    # Uncentred similarities: q1 -> [0.6, 0.6]; q2 -> [0.96, 0].
    np.testing.assert_allclose(_score(KNNHead(bank, 1), queries), [0.4, 0.04], atol=1e-6)
    # Mean (0.6, 0): the bank becomes (0, 1), (0, -1); q1 -> (1, 0), q2 -> (0.2, 0.6) / |.|
    # = (1, 3) / sqrt(10). Similarities: q1 -> [0, 0]; q2 -> [3, -3] / sqrt(10).
    centred = KNNHead(bank, 1, center=True)
    np.testing.assert_allclose(centred.mean, [0.6, 0.0], atol=1e-7)
    np.testing.assert_allclose(centred.bank.numpy(), [[0, 1], [0, -1]], atol=1e-6)
    np.testing.assert_allclose(_score(centred, queries), [1.0, 1 - 3 / np.sqrt(10)], atol=1e-6)
    np.testing.assert_allclose(_score(KNNHead(bank, 2, "mean", center=True), queries), [1.0, 1.0],
                               atol=1e-6)
    assert KNNHead(bank, 1).mean is None


def test_centred_knn_head_matches_numpy(monkeypatch):
    rng = np.random.default_rng(1)
    bank = rng.normal(loc=0.5, size=(23, 8)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = rng.normal(loc=0.5, size=(5, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    mean = bank.mean(axis=0)
    similarity = unit(queries - mean) @ unit(bank - mean).T
    expected = 1 - np.sort(similarity, axis=1)[:, ::-1][:, :3].mean(axis=1)
    np.testing.assert_allclose(_score(KNNHead(bank, 3, "mean", center=True), queries), expected,
                               atol=1e-5)
    monkeypatch.setattr(knn_module, "BANK_CHUNK", 4)
    np.testing.assert_allclose(_score(KNNHead(bank, 3, "mean", center=True), queries), expected,
                               atol=1e-5)


def test_knn_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be in \\[1, 2\\]"):
        KNNHead(np.eye(2), 3)
    with pytest.raises(ValueError, match="rank-2"):
        KNNHead(np.ones(4), 1)
    with pytest.raises(ValueError, match="aggregation must be"):
        KNNHead(np.eye(2), 1, "max")


def test_one_class_mahalanobis_by_hand():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    # Mean 0, covariance diag(2/4, 8/4) = diag(0.5, 2): precision diag(2, 0.5).
    means, whitening = fit_gaussians(x, None, shrinkage=0.0)
    head = MahalanobisHead(means, whitening)
    np.testing.assert_allclose(_score(head, [[1, 1], [0, 0], [0, 2]]), [2.5, 0.0, 2.0], atol=1e-5)
    # Shrinkage 0.5 towards tr/D = 1.25: diag(0.875, 1.625).
    shrunk = MahalanobisHead(*fit_gaussians(x, None, shrinkage=0.5))
    np.testing.assert_allclose(_score(shrunk, [[1, 1]]), [1 / 0.875 + 1 / 1.625], atol=1e-5)


def test_class_conditional_mahalanobis_by_hand():
    x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = ["a", "a", "b", "b"]
    # Means a = (2, 0), b = (0, 2); tied covariance of the residuals = diag(0.5, 0.5).
    means, whitening = fit_gaussians(x, labels, shrinkage=0.0)
    np.testing.assert_allclose(means, [[2, 0], [0, 2]])
    head = MahalanobisHead(means, whitening)
    # (2, 1): to a 2 * 1 = 2, to b 2 * (4 + 1) = 10 -> 2.  (1, 1): 2 * 2 = 4 to both.
    np.testing.assert_allclose(_score(head, [[2, 1], [1, 1]]), [2.0, 4.0], atol=1e-5)


def test_mahalanobis_fit_errors():
    with pytest.raises(ValueError, match="singular; set encoder.mahalanobis_shrinkage"):
        fit_gaussians(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), None, shrinkage=0.0)
    with pytest.raises(ValueError, match="3 labels for 2 texts"):
        fit_gaussians(np.eye(2), ["a", "b", "c"], shrinkage=0.1)
    with pytest.raises(ValueError, match="shrinkage must be in"):
        fit_gaussians(np.eye(2), None, shrinkage=1.5)


def test_combination_weights_by_hand():
    u1, u2, u3 = (np.array(v, float) for v in ([1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]))
    # Correlations: corr(z1, z2) = 0.8, z3 uncorrelated. C^-1 1 = (1/1.8, 1/1.8, 1) -> / 2.111.
    z = np.stack([u1, 0.8 * u1 + 0.6 * u2, u3], axis=1)
    np.testing.assert_allclose(combination_weights(z), [0.5 / 1.9, 0.5 / 1.9, 0.9 / 1.9], atol=1e-9)
    # Two components: equal weights whatever their correlation.
    np.testing.assert_allclose(combination_weights(z[:, :2]), [0.5, 0.5], atol=1e-9)
    # z2 ~ (z1 + z3) / sqrt(2): correlations 0.7, 0.7, 0. C^-1 1 solves x1 + 0.7 x2 = 1,
    # 1.4 x1 + x2 = 1 -> x2 = -20: the minimum-variance mix would subtract z2.
    redundant = np.stack([u1, 0.7 * u1 + 0.7 * u2 + 0.141 * u3, u2], axis=1)
    with pytest.raises(ValueError, match="not all positive"):
        combination_weights(redundant)
    with pytest.raises(ValueError, match="linearly dependent"):
        combination_weights(np.stack([u1, u2, u1 + u2], axis=1))


def test_standardisation():
    normaliser = ScoreNormaliser("zscore").fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
    np.testing.assert_allclose(normaliser.means, [2.0, 20.0])
    np.testing.assert_allclose(normaliser.scales, [1.0, 10.0])
    with pytest.raises(ValueError, match="constant"):
        ScoreNormaliser("zscore").fit(np.array([[1.0, 2.0], [1.0, 3.0]]))


def test_classifier_scores_by_hand():
    from text_ood.detectors.classifier import ClassifierHead, classifier_scores

    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])  # softmax [0.75, 0.25] and [0.5, 0.5]
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(classifier_scores(logits, "entropy").numpy(), [entropy, np.log(2)], atol=1e-9)
    np.testing.assert_allclose(classifier_scores(logits, "msp").numpy(), [0.25, 0.5], atol=1e-9)
    np.testing.assert_allclose(classifier_scores(logits, "energy").numpy(), [-np.log(4.0), -np.log(2.0)],
                               atol=1e-9)
    # The head: identity kernel, zero bias -> the same numbers in float32.
    head = ClassifierHead(np.eye(2), np.zeros(2), "msp")
    np.testing.assert_allclose(_score(head, logits), [0.25, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="classifier_score must be one of"):
        classifier_scores(logits, "margin")


def test_softmax_fit_separates_classes_and_needs_labels():
    from text_ood.detectors.classifier import fit_softmax

    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    weights, bias, classes = fit_softmax(x, ["b", "b", "a", "a"], c=1.0, steps=200)
    assert classes == ["a", "b"]
    assert list(np.argmax(x @ weights + bias, axis=1)) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="one ID class label per training text, received none"):
        fit_softmax(x, None, 1.0, 5)
    with pytest.raises(ValueError, match="at least two ID classes"):
        fit_softmax(x, ["a"] * 4, 1.0, 5)
