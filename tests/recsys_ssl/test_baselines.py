"""The peers (popularity, item-kNN, EASE) on hand-computed tiny cases, and end to end under the protocol."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ssl import __main__ as cli
from recsys_ssl.baselines import MAX_GRID_EXTENSIONS, extend_grid, run_baselines
from recsys_ssl.peers import EASE, ItemKNN, Popularity, cosine_neighbours

# 3 users x 3 items: user 0 has items {0, 1}, user 1 {1, 2}, user 2 {0, 1, 2}.
X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], np.float32))


def test_ease_closed_form_on_three_items():
    # G = X^T X = [[2, 2, 1], [2, 3, 2], [1, 2, 2]]; with lambda = 1, G + I = [[3, 2, 1], [2, 4, 2], [1, 2, 3]]
    # (det 16), so P = (G + I)^-1 = [[.5, -.25, 0], [-.25, .5, -.25], [0, -.25, .5]] and
    # B_ij = -P_ij / P_jj: B = [[0, .5, 0], [.5, 0, .5], [0, .5, 0]] (zero diagonal).
    ease = EASE(1.0).fit(X)
    np.testing.assert_allclose(ease.weights, [[0, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0]], atol=1e-6)
    # A query holding item 0 scores x B = row 0 of B.
    np.testing.assert_allclose(ease.score(sp.csr_matrix(np.array([[1, 0, 0]], np.float32))), [[0, 0.5, 0]], atol=1e-6)
    # The diagonal constraint holds for any lambda, and a larger lambda shrinks the weights.
    strong = EASE(100.0).fit(X).weights
    assert np.all(np.diag(strong) == 0) and np.abs(strong).max() < 0.05


def test_ease_refuses_a_corpus_above_its_limit_naming_it():
    with pytest.raises(ValueError, match=r"the limit is 2 items .*--ease_max_items"):
        EASE(1.0, max_items=2).fit(X)
    with pytest.raises(ValueError, match="lambda must be > 0"):
        EASE(0.0)


def test_item_knn_cosine_with_neighbourhood_hand_computed():
    # |U_0| = 2, |U_1| = 3, |U_2| = 2; co-counts 0-1: 2, 0-2: 1, 1-2: 2.
    # cos(0,1) = cos(1,2) = 2 / sqrt(6) = 0.8165, cos(0,2) = 1 / 2.
    full = cosine_neighbours(X, neighbours=5).toarray()
    c = 2 / math.sqrt(6)
    np.testing.assert_allclose(full, [[0, c, 0.5], [c, 0, c], [0.5, c, 0]], rtol=1e-6)
    # One neighbour per item: row 1 ties between items 0 and 2 and keeps the lower index.
    knn = ItemKNN(1).fit(X)
    np.testing.assert_allclose(knn.similarity.toarray(), [[0, c, 0], [c, 0, 0], [0, c, 0]], rtol=1e-6)
    queries = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]], np.float32))
    np.testing.assert_allclose(knn.score(queries), [[0, c, 0], [c, 0, 0], [0, 2 * c, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        ItemKNN(0)


def test_popularity_counts_users_per_item():
    np.testing.assert_array_equal(Popularity().fit(X).score(sp.csr_matrix((2, 3), dtype=np.float32)),
                                  [[2, 3, 2], [2, 3, 2]])


def test_grid_extends_until_a_decade_either_side_of_the_chosen_value():
    assert extend_grid([100.0, 1000.0], chosen=1000.0) == 3160.0  # max < 10 x chosen: one half-decade up
    assert extend_grid([100.0, 1000.0], chosen=100.0) == 31.6  # min > chosen / 10: one half-decade down
    assert extend_grid([31.6, 100.0, 1000.0], chosen=100.0) == 10.0
    assert extend_grid([10.0, 31.6, 100.0, 1000.0], chosen=100.0) is None


def test_run_baselines_end_to_end(features_dir, tmp_path):
    from recsys_ssl.data import FeatureSet
    from recsys_ssl.protocol import held_out, read_splits

    out = str(tmp_path / "peers")
    document = run_baselines(features_dir, out, mode="user", ease_lambdas=[1.0, 10.0], knn_neighbours=[2, 20])
    for name in ("popularity", "itemknn", "ease"):
        for file in ("eval.json", "eval_hits.npz"):
            assert os.path.isfile(os.path.join(out, name, file)), (name, file)
    ease = document["peers"]["ease"]
    chosen, grid = ease["chosen"], ease["grid_evaluated"]
    if ease["grid_spans_decade"]:
        assert min(grid) <= chosen / 10 and max(grid) >= chosen * 10
    else:  # the extension stops after MAX_GRID_EXTENSIONS values, with the chosen value at the edge
        assert len(grid) == 2 + MAX_GRID_EXTENSIONS and chosen in (min(grid), max(grid))
    assert document["best_peer"] == max(document["peers"], key=lambda n: document["peers"][n]["validation_recall@100"])
    # Popularity by hand: count users per item over train + validation, rank the non-excluded items
    # (ties by lower corpus row), hit when the target is in the top 10.
    feature_set = FeatureSet.load(features_dir)
    splits = read_splits(feature_set, ("train", "validation", "eval"))
    held = held_out(feature_set.item_ids, "eval", "user", splits)
    row_of = {item: row for row, item in enumerate(feature_set.item_ids)}
    pairs = {(u, row_of[i]) for name in ("train", "validation")
             for u, i in zip(splits[name]["user_id"], splits[name]["item_id"])}
    counts = np.bincount([row for _, row in pairs], minlength=feature_set.num_items)
    expected = []
    for target, exclude in zip(held.targets, held.exclude):
        keep = np.ones(feature_set.num_items, bool)
        keep[exclude] = False
        keep[target] = True
        candidates = np.flatnonzero(keep)
        ranking = candidates[np.lexsort((candidates, -counts[candidates]))]
        expected.append(target in ranking[:10])
    saved = np.load(os.path.join(out, "popularity", "eval_hits.npz"))
    np.testing.assert_array_equal(saved["hits"][:, list(saved["ks"]).index(10)], expected)
    np.testing.assert_array_equal(saved["targets"], held.targets)
    assert document["peers"]["popularity"]["metrics"]["overall"]["recall@10"] == pytest.approx(np.mean(expected))
    # A second call finds every peer done and recomputes nothing.
    again = run_baselines(features_dir, out, mode="user", ease_lambdas=[1.0, 10.0], knn_neighbours=[2, 20])
    def text(peers):  # NaN (empty cold slice) != NaN: compare the JSON text
        return json.dumps(peers, sort_keys=True)

    with open(os.path.join(out, "baselines.json")) as f:
        assert text(again["peers"]) == text(json.load(f)["peers"]) == text(document["peers"])


def test_baselines_cli_refuses_ease_above_the_limit_before_any_work(features_dir, tmp_path, caplog):
    out = str(tmp_path / "refused")
    assert cli.main(["baselines", "--features", features_dir, "--output_dir", out, "--ease_max_items", "10"]) == 2
    assert "the limit is 10 items" in caplog.text
    assert not os.path.exists(out)
    assert cli.main(["baselines", "--features", features_dir, "--output_dir", out, "--peers", "ease,knn"]) == 2
    assert not os.path.exists(out)
