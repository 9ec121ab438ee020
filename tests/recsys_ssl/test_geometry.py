"""Embedding-geometry diagnostics against hand-built corpora with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_ssl.geometry import group_geometry, tail_misses


def _unit(*vectors):
    array = np.array(vectors, np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_group_geometry_on_two_orthogonal_groups():
    # Group 2 = three copies of e0, group 3 = three copies of e1: same-group cosine 1, cross 0.
    embeddings = _unit([1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1])
    groups = np.array([2, 2, 2, 3, 3, 3])
    result = group_geometry(embeddings, groups, rows=np.arange(6), rng=np.random.default_rng(0), neighbours=2,
                            random_pairs=4000)
    assert result["same_group_cos"] == pytest.approx(1.0)
    # Random partners are uniform over the corpus: half of them share the direction.
    assert result["random_cos"] == pytest.approx(0.5, abs=0.03)
    assert result["cohesion"] == pytest.approx(0.5, abs=0.03)
    assert result["nn10_same_group"] == pytest.approx(1.0)
    # uniformity = log mean exp(-2 |x-y|^2): |x-y|^2 is 0 (same) or 2 (orthogonal).
    assert result["uniformity"] == pytest.approx(np.log(0.5 + 0.5 * np.exp(-4.0)), abs=0.03)


def test_group_geometry_excludes_the_item_itself():
    # Item 0's only group-mate points the opposite way: mean cosine to the *others* is -1, not 0.
    embeddings = _unit([1, 0], [-1, 0], [0, 1])
    groups = np.array([2, 2, 3])
    result = group_geometry(embeddings, groups, rows=np.array([0]), rng=np.random.default_rng(0), neighbours=1)
    assert result["same_group_cos"] == pytest.approx(-1.0)
    assert result["nn10_same_group"] == 0.0  # its nearest neighbour is item 2 of the other group


def test_tail_misses_splits_misses_into_lost_in_group_and_beyond():
    # Corpus: items 0-2 group 2 along e0 with decreasing scores, items 3-4 group 3 along e1.
    embeddings = np.array([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0], [0.0, 1.0], [0.0, 0.95]], np.float32)
    groups = np.array([2, 2, 2, 3, 3])
    queries = np.array([
        [1.0, 0.0],  # target 2: items 0, 1 above it (same group) -> missed at k=2, group retrieved
        [1.0, 0.0],  # target 0: top -> hit
        [0.0, 1.0],  # target 2: items 3, 4 above it (other group), 0 and 1 tie at 0 -> group not in top 2
        [1.0, 0.0],  # target 2 with items 0 and 1 excluded -> hit
    ], np.float32)
    targets = np.array([2, 0, 2, 2])
    exclude = [np.array([], np.int64), np.array([0]), np.array([], np.int64), np.array([0, 1])]
    result = tail_misses(queries, embeddings, groups, targets, exclude, k=2, chunk_size=3)
    assert result["examples"] == 4
    assert result["hit@100"] == pytest.approx(2 / 4)  # the key names the default k
    assert result["group@100"] == pytest.approx(3 / 4)
    assert result["lost_in_group"] == pytest.approx(1 / 2)  # of the two misses, one had its group retrieved
    # same-group items above the target per example: 2, 0, 0, 0; other-group: 0, 0, 2, 0.
    assert result["same_group_above"] == 0.0
    assert result["other_group_above"] == 0.0

    # Medians over the first and third examples alone: same-group above 2 and 0, other-group 0 and 2.
    pair = tail_misses(queries[[0, 2]], embeddings, groups, targets[[0, 2]], [exclude[0], exclude[2]], k=2)
    assert pair["same_group_above"] == 1.0
    assert pair["other_group_above"] == 1.0
    assert pair["hit@100"] == 0.0
