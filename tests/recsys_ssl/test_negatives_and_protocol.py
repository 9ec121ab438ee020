"""Mixed negative sampling (hand-computed logits) and the ranking protocol's queries (user / item mode)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from core import config as dataclass_config
from recsys_ssl import config as config_lib
from recsys_ssl.losses import mixed_sampling_probability, retrieval_task
from recsys_ssl.protocol import SEED, held_out, seed_items, select_queries


def test_mixed_sampling_probability_is_the_mixture_of_unigram_and_uniform():
    # B = 2 in-batch candidates, B' = 2 uniform ones over N = 4 items: q = (2 p + 2 / 4) / 4.
    p = tf.constant([0.5, 0.25, 0.25, 0.0])
    q = mixed_sampling_probability(p, 2, 2, 4).numpy()
    np.testing.assert_allclose(q, [(1.0 + 0.5) / 4, (0.5 + 0.5) / 4, (0.5 + 0.5) / 4, 0.5 / 4], rtol=1e-6)
    # B' = 0 is the in-batch correction itself.
    np.testing.assert_allclose(mixed_sampling_probability(p, 2, 0, 4).numpy(), p.numpy())


def test_mns_loss_hand_computed_with_accidental_hits_in_both_kinds():
    # Two queries; candidates: the batch's items 10, 11, then uniform items 11 and 12.
    task = retrieval_task(temperature=0.5, remove_accidental_hits=True)
    queries = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    candidates = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8]])
    ids = tf.constant([10, 11, 11, 12])
    p = tf.constant([0.5, 0.25, 0.25, 0.0])  # unigram (train) probabilities; item 12 never in training
    q = mixed_sampling_probability(p, 2, 2, 4)  # [0.375, 0.25, 0.25, 0.125]
    losses = task(queries, candidates, candidate_sampling_probability=q, candidate_ids=ids,
                  compute_metrics=False, compute_batch_metrics=False).numpy()
    # logits = cos / 0.5 - log q.
    # Row 0 (positive 10): cos = [1, 0, 0, .6] -> [2 - log .375, -log .25, -log .25, 1.2 - log .125].
    row_0 = [2 - math.log(0.375), -math.log(0.25), -math.log(0.25), 1.2 - math.log(0.125)]
    loss_0 = -row_0[0] + math.log(sum(math.exp(v) for v in row_0))
    # Row 1 (positive 11 at column 1): the uniform candidate 11 (column 2) is an accidental hit, removed:
    # cos = [0, 1, -, .8] -> [-log .375, 2 - log .25, removed, 1.6 - log .125].
    row_1 = [-math.log(0.375), 2 - math.log(0.25), 1.6 - math.log(0.125)]
    loss_1 = -row_1[1] + math.log(sum(math.exp(v) for v in row_1))
    np.testing.assert_allclose(losses, [loss_0, loss_1], rtol=1e-5)


def test_mns_negatives_config_is_validated():
    with pytest.raises(ValueError, match="mns_negatives"):
        config_lib.TrainConfig(mns_negatives=-1)
    assert config_lib.tiny().train.mns_negatives == 0


def test_model_loss_with_mns_scores_every_query_against_batch_and_uniform_items(features_dir):
    from recsys_ssl.data import FeatureSet
    from recsys_ssl.workdir import build_model

    tf.keras.utils.set_random_seed(0)
    config = dataclass_config.apply_overrides(config_lib.tiny(), ["ssl.method=none", "train.mns_negatives=5"])
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    batch = next(iter(feature_set.examples("train").batch(8)))
    seed = tf.constant([3, 7], tf.int32)
    loss = float(model.loss_terms(batch, seed, training=False)["main"])
    # The same loss from the parts: the uniform rows come from the step seed (fold-in 12).
    negatives = tf.random.stateless_uniform([5], seed=tf.random.experimental.stateless_fold_in(seed, 12), minval=0,
                                            maxval=feature_set.num_items, dtype=tf.int32)
    rows = tf.concat([model.item_rows(batch["item_id"]), negatives], axis=0)
    p = tf.gather(tf.constant(np.maximum(feature_set.item_probability, 1e-9)), rows)
    q = (8 * p + 5 / feature_set.num_items) / 13
    expected = retrieval_task(config.train.temperature, True)(
        model.query_tower({"user_id": batch["user_id"], "history": batch["history"]}), model.item_embeddings(rows),
        candidate_sampling_probability=q, candidate_ids=rows, compute_metrics=False, compute_batch_metrics=False)
    assert loss == pytest.approx(float(tf.reduce_mean(expected)), rel=1e-5)
    # With 0 uniform negatives the model computes the in-batch loss (the default path).
    model.config = dataclasses.replace(config, train=dataclasses.replace(config.train, mns_negatives=0))
    in_batch = retrieval_task(config.train.temperature, True)(
        model.query_tower({"user_id": batch["user_id"], "history": batch["history"]}),
        model.item_embeddings(rows[:8]), candidate_sampling_probability=p[:8], candidate_ids=rows[:8],
        compute_metrics=False, compute_batch_metrics=False)
    assert float(model.loss_terms(batch, seed, training=False)["main"]) == pytest.approx(
        float(tf.reduce_mean(in_batch)), rel=1e-5)


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
