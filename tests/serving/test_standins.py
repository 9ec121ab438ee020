"""The retrieval stand-in's scale options: given item vectors, a hashed history table, a search signature."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from serving import standins


@pytest.mark.parametrize("index", ["brute_force", "scann"])
def test_search_signature_finds_an_items_own_vector_and_history_can_be_hashed(tmp_path, index):
    import scann  # noqa: F401  (registers the Scann ops for the in-process load)

    vectors = standins.random_unit_vectors(60, 8, seed=4)
    timings = {}
    path = standins.export_retrieval(str(tmp_path / index), index=index, k=3, item_vectors=vectors,
                                     history_buckets=16, query_signature=True, num_leaves=4,
                                     num_leaves_to_search=4, num_reordering_candidates=10, timings=timings)
    assert set(timings) == {"index_seconds", "save_seconds"}
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "search"}
    found = loaded.signatures["search"](query=tf.constant(vectors[[7, 42]]))
    assert [ids[0].decode() for ids in found["item_ids"].numpy()] == ["item7", "item42"]
    np.testing.assert_allclose(found["scores"].numpy()[:, 0], [1.0, 1.0], rtol=1e-3)
    # serving_default: hashed history (no item vocabulary in the tower), unknown ids hash too.
    out = loaded.signatures["serving_default"](user_id=tf.constant(["u1", "u2"]),
                                               history=tf.constant([["item3", "not-an-item"], ["", ""]]))
    assert out["item_ids"].shape == (2, 3) and np.isfinite(out["scores"].numpy()).all()


def test_item_vectors_set_the_catalogue_and_the_default_export_has_no_search_signature(tmp_path):
    path = standins.export_retrieval(str(tmp_path / "bf"), k=2, item_vectors=standins.random_unit_vectors(12, 4, 0))
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default"}
    out = loaded.signatures["serving_default"](user_id=tf.constant(["u"]), history=tf.constant([["item11"]]))
    assert out["item_ids"].shape == (1, 2)
