"""recsys_ssl.metrics.hits_at_k (every recall number comes from it) against hand-ranked examples."""

from __future__ import annotations

import numpy as np

from recsys_ssl.metrics import hits_at_k, recall_summary

# Four items in 2-D; scores are dot products.
ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, -0.5]], np.float32)
QUERIES = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)


def test_hits_at_k_hand_ranked_with_exclusions():
    # q0 = (1, 0) scores items 1, 0, 0.6, -1: ranking i0, i2, i1, i3; its target i2 is 2nd.
    # q1 = (0, 1) scores 0, 1, 0.8, -0.5: ranking i1, i2, i0, i3; its target i0 is 3rd.
    targets = np.array([2, 0])
    no_exclusion = hits_at_k(QUERIES, ITEMS, targets, [np.array([], np.int64)] * 2, ks=(1, 2, 3))
    np.testing.assert_array_equal(no_exclusion, [[False, True, True], [False, False, True]])
    # Excluding q0's earlier item i0 lifts i2 to 1st; q1 excludes i1 and its own target i0 (the
    # target is never excluded): ranking i2, i0, i3, so the target is 2nd.
    excluded = hits_at_k(QUERIES, ITEMS, targets, [np.array([0]), np.array([1, 0])], ks=(1, 2, 3))
    np.testing.assert_array_equal(excluded, [[True, True, True], [False, True, True]])


def test_hits_at_k_with_k_beyond_the_corpus_and_chunking():
    # k larger than the corpus counts every target as a hit; chunks of 1 query give the same hits.
    targets = np.array([3, 3])
    empty = [np.array([], np.int64)] * 2
    np.testing.assert_array_equal(hits_at_k(QUERIES, ITEMS, targets, empty, ks=(3, 10)),
                                  [[False, True], [False, True]])
    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    targets = rng.integers(0, 30, 50)
    exclude = [rng.integers(0, 30, 3) for _ in range(50)]
    whole = hits_at_k(queries, items, targets, exclude, ks=(1, 5, 10))
    np.testing.assert_array_equal(whole, hits_at_k(queries, items, targets, exclude, ks=(1, 5, 10), chunk_size=1))
    # Brute-force reference: rank of the target among the non-excluded items.
    scores = queries @ items.T
    for row in range(50):
        keep = np.ones(30, bool)
        keep[exclude[row]] = False
        keep[targets[row]] = True
        rank = int((scores[row, keep] > scores[row, targets[row]]).sum()) + 1
        np.testing.assert_array_equal(whole[row], [rank <= 1, rank <= 5, rank <= 10])


def test_recall_summary_slices():
    hits = np.array([[True, True], [False, True], [False, False], [True, True]])
    slices = {"overall": np.ones(4, bool), "head": np.array([True, True, False, False]),
              "cold": np.zeros(4, bool)}
    summary = recall_summary(hits, (10, 100), slices)
    assert summary["overall"] == {"examples": 4, "recall@10": 0.5, "recall@100": 0.75}
    assert summary["head"] == {"examples": 2, "recall@10": 0.5, "recall@100": 1.0}
    assert summary["cold"]["examples"] == 0 and np.isnan(summary["cold"]["recall@10"])


def test_hits_follow_top_k_order_on_ties():
    # Integer scores tie often; the rank-based hits must equal membership in tf.math.top_k's top k
    # (ties broken by the lower item index), with exclusions.
    import tensorflow as tf

    from recsys_ssl.metrics import hits_of_scorer, mask_excluded

    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(40, 25)).astype(np.float32)
    targets = rng.integers(0, 25, 40)
    exclude = [rng.integers(0, 25, 4) for _ in range(40)]
    hits = hits_of_scorer(lambda start, end: scores[start:end].copy(), 25, targets, exclude, ks=(1, 3, 10, 30))
    masked = scores.copy()
    mask_excluded(masked, exclude, targets)
    top = tf.math.top_k(masked, k=25).indices.numpy()
    for column, k in enumerate((1, 3, 10, 30)):
        np.testing.assert_array_equal(hits[:, column], (top[:, :k] == targets[:, None]).any(axis=1))
