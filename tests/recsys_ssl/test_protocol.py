"""The ranking protocol's held-out queries (``recsys_ssl.protocol``): user and item (seed) mode."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_ssl.protocol import SEED, held_out, seed_items, select_queries


def test_seed_items_are_the_latest_history_entries():
    history = np.array([["a", "b", ""], ["", "", ""], ["c", "d", "e"]], dtype=object)
    np.testing.assert_array_equal(seed_items(history), ["b", "", "e"])


def test_item_mode_queries_skip_seedless_examples_and_exclude_the_seed():
    item_ids = np.array(["a", "b", "c", "d"], dtype=object)
    empty_history = np.zeros((0, 2), dtype=object)

    def columns(users, histories, items):
        return {"user_id": np.array(users, dtype=object), "history": np.array(histories, dtype=object).reshape(-1, 2)
                if histories else empty_history, "item_id": np.array(items, dtype=object),
                "timestamp": np.arange(len(items))}

    splits = {"train": columns(["u", "u", "v"], [["", ""], ["a", ""], ["", ""]], ["a", "b", "c"]),
              "validation": columns(["u", "v"], [["a", "b"], ["c", ""]], ["d", "a"])}
    users = held_out(item_ids, "validation", "user", splits)
    np.testing.assert_array_equal(users.targets, [3, 0])
    assert [sorted(e.tolist()) for e in users.exclude] == [[0, 1], [2]]  # the users' train items
    items = held_out(item_ids, "validation", "item", splits)
    np.testing.assert_array_equal(items.seeds, [1, 2])  # u's latest earlier item is b, v's is c
    assert [sorted(e.tolist()) for e in items.exclude] == [[0, 1, 1], [2, 2]]  # train items + the seed
    assert select_queries(splits["train"], "item")[SEED].tolist() == ["a"]  # the first example per user has none
    assert set(items.slices(np.array([True, False, False, False]), np.zeros(4, bool))) == {
        "overall", "head", "tail", "cold", "seed_head", "seed_tail"}
    with pytest.raises(ValueError, match="query mode must be one of"):
        held_out(item_ids, "validation", "items", splits)
    with pytest.raises(ValueError, match="held-out split must be one of"):
        held_out(item_ids, "train", "user", splits)
