"""Feature masking (RFM / CFM), value dropout, the two losses and mixed negative sampling, against
hand-computed values."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from core import config as dataclass_config
from recsys_ssl import config as config_lib
from recsys_ssl.augment import FeatureMasking, cfm_masked_sets, drop_values
from recsys_ssl.losses import info_nce, mixed_sampling_probability, retrieval_task

# Five features: 0 = item_id (identifier), 1..4 regular. 1-2 strongly related, 3-4 related.
AFFINITY = np.array([
    [9.0, 2.0, 2.1, 2.2, 2.3],
    [2.0, 1.0, 0.9, 0.1, 0.2],
    [2.1, 0.9, 1.0, 0.3, 0.1],
    [2.2, 0.1, 0.3, 1.0, 0.8],
    [2.3, 0.2, 0.1, 0.8, 1.0],
])
IDENTIFIER = [True, False, False, False, False]


def _seed(a, b=0):
    return tf.constant([a, b], tf.int32)


def test_cfm_masked_sets_take_the_seed_and_its_highest_affinity_partners():
    sets = cfm_masked_sets(AFFINITY, grouped=[1, 2, 3, 4], num_features=5)
    # k = 4 grouped features -> n = 2: the seed plus its single best partner.
    assert [sorted(np.flatnonzero(row)) for row in sets] == [[1, 2], [1, 2], [3, 4], [3, 4]]
    grouped_all = cfm_masked_sets(AFFINITY, grouped=[0, 1, 2, 3, 4], num_features=5)
    # With the identifier grouped under raw MI it is every feature's top partner (the degenerate case).
    assert all(row[0] for row in grouped_all)


def test_cfm_view_masks_are_complementary_seeded_and_deterministic():
    masking = FeatureMasking("cfm", 5, IDENTIFIER, AFFINITY, identifiers="random_view")
    seen_id_sides = set()
    for step in range(40):
        mask = masking.view_mask(_seed(7, step)).numpy()
        view_2 = ~mask
        assert not (mask & view_2).any() and (mask | view_2).all()  # complementary, covering
        masked_regular = sorted(np.flatnonzero(mask[1:]) + 1)
        assert masked_regular in ([1, 2], [3, 4])  # the seed with its highest-MI partner
        seen_id_sides.add(bool(mask[0]))
        np.testing.assert_array_equal(mask, masking.view_mask(_seed(7, step)).numpy())
    assert seen_id_sides == {True, False}  # the identifier goes to either view


def test_cfm_seed_is_always_masked():
    masking = FeatureMasking("cfm", 5, IDENTIFIER, AFFINITY, identifiers="grouped")
    seeds = set()
    for step in range(60):
        seed = _seed(1, step)
        # The seed feature drawn by view_mask (the same stateless draw).
        row = int(tf.random.stateless_uniform([], seed=seed, minval=0, maxval=5, dtype=tf.int32))
        mask = masking.view_mask(seed).numpy()
        assert mask[masking.grouped[row]], "the seed feature must be masked in view 1"
        seeds.add(row)
    assert len(seeds) == 5  # every feature serves as the seed


def test_rfm_masks_half_of_the_features():
    masking = FeatureMasking("rfm", 5, IDENTIFIER, None)
    masks = [masking.view_mask(_seed(3, s)).numpy() for s in range(30)]
    assert all(m.sum() == 2 for m in masks)
    assert len({tuple(m) for m in masks}) > 3


def test_drop_values_only_drops_real_values():
    ids = tf.constant([[5, 6, 7, 0], [8, 0, 0, 0]] * 50, tf.int32)
    dropped = drop_values(ids, 0.5, _seed(2)).numpy()
    assert ((dropped == 0) | (dropped == ids.numpy())).all()
    kept = (dropped != 0).sum() / (ids.numpy() != 0).sum()
    assert 0.35 < kept < 0.65
    np.testing.assert_array_equal(dropped, drop_values(ids, 0.5, _seed(2)).numpy())
    assert drop_values(ids, 0.0, _seed(2)) is ids


def test_info_nce_hand_computed():
    # Unit vectors: z1 = [e1, e2], z2 = [e1, (e1+e2)/sqrt2]; tau = 0.5.
    z1 = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    r = 1 / math.sqrt(2)
    z2 = tf.constant([[1.0, 0.0], [r, r]])
    # Row 0 logits: [1, r] / 0.5 = [2, 2r]; row 1 logits: [0, r] / 0.5 = [0, 2r].
    row_0 = -2 + math.log(math.exp(2) + math.exp(2 * r))
    row_1 = -2 * r + math.log(1 + math.exp(2 * r))
    assert float(info_nce(z1, z2, 0.5)) == pytest.approx((row_0 + row_1) / 2, rel=1e-6)
    # The same item sampled twice: the duplicate negative leaves the softmax (row 0: only its positive).
    ids = tf.constant([4, 4])
    assert float(info_nce(z1, z2, 0.5, ids=ids)) == pytest.approx(0.0, abs=1e-6)


def test_corrected_retrieval_loss_hand_computed():
    task = retrieval_task(temperature=0.5, remove_accidental_hits=True)
    queries = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    candidates = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    probability = tf.constant([0.5, 0.25, 0.5])
    ids = tf.constant([10, 11, 10])  # candidate 2 is the same item as candidate 0
    losses = task(queries, candidates, candidate_sampling_probability=probability, candidate_ids=ids,
                  compute_metrics=False, compute_batch_metrics=False).numpy()
    # logits = cos / 0.5 - log p. Row 0: [2 - log .5, 0 - log .25, (accidental hit removed)].
    row_0 = -(2 - math.log(0.5)) + math.log(math.exp(2 - math.log(0.5)) + math.exp(-math.log(0.25)))
    # Row 1: [0 - log .5, 2 - log .25, 0 - log .5], positive = 1.
    logits_1 = [-math.log(0.5), 2 - math.log(0.25), -math.log(0.5)]
    row_1 = -logits_1[1] + math.log(sum(math.exp(v) for v in logits_1))
    # Row 2: positive = 2, candidate 0 is an accidental hit -> removed: [removed, -log .25, 2 - log .5].
    row_2 = -(2 - math.log(0.5)) + math.log(math.exp(-math.log(0.25)) + math.exp(2 - math.log(0.5)))
    np.testing.assert_allclose(losses, [row_0, row_1, row_2], rtol=1e-5)


def test_batch_granularity_tiles_the_single_split_of_view_mask():
    # The default ("batch") reproduces the split of view_mask exactly, on every row.
    for method in ("rfm", "cfm"):
        masking = FeatureMasking(method, 5, IDENTIFIER, AFFINITY)
        for step in range(10):
            seed = _seed(5, step)
            mask_1, mask_2 = masking.view_masks(seed, 4)
            single = masking.view_mask(seed).numpy()
            np.testing.assert_array_equal(mask_1.numpy(), np.tile(single, (4, 1)))
            np.testing.assert_array_equal(mask_2.numpy(), ~np.tile(single, (4, 1)))


def test_example_granularity_draws_a_split_per_row():
    masking = FeatureMasking("cfm", 5, IDENTIFIER, AFFINITY, granularity="example")
    mask_1, mask_2 = (m.numpy() for m in masking.view_masks(_seed(9), 200))
    assert (mask_1 ^ mask_2).all()  # complementary in every row
    regular = {tuple(sorted(np.flatnonzero(row[1:]) + 1)) for row in mask_1}
    assert regular == {(1, 2), (3, 4)}  # every row is one of CFM's masked sets, both occur
    assert 0.3 < mask_1[:, 0].mean() < 0.7  # the identifier's side is drawn per row
    rfm = FeatureMasking("rfm", 5, IDENTIFIER, None, granularity="example")
    rows = rfm.view_masks(_seed(9), 200)[0].numpy()
    assert (rows.sum(axis=1) == 2).all() and len({tuple(r) for r in rows}) > 5


def test_identifiers_masked_in_both_views():
    for method, affinity in (("cfm", AFFINITY), ("rfm", None)):
        for granularity in ("batch", "example"):
            masking = FeatureMasking(method, 5, IDENTIFIER, affinity, identifiers="both_masked",
                                     granularity=granularity)
            mask_1, mask_2 = (m.numpy() for m in masking.view_masks(_seed(4), 50))
            assert mask_1[:, 0].all() and mask_2[:, 0].all()
            assert (mask_1[:, 1:] ^ mask_2[:, 1:]).all()  # the rest stays complementary
            assert (mask_1[:, 1:].sum(axis=1) == 2).all()  # half of the 4 regular features


def test_feature_dropout_draws_two_independent_views():
    masking = FeatureMasking("feature_dropout", 5, IDENTIFIER, None, drop_rate=0.3)
    mask_1, mask_2 = (m.numpy() for m in masking.view_masks(_seed(6), 4000))
    assert abs(mask_1.mean() - 0.3) < 0.02 and abs(mask_2.mean() - 0.3) < 0.02
    both = (mask_1 & mask_2).mean()
    assert abs(both - 0.09) < 0.02  # independent: P(both) = 0.3 * 0.3
    np.testing.assert_array_equal(mask_1, masking.view_masks(_seed(6), 4000)[0].numpy())  # seeded
    with pytest.raises(ValueError, match="drop_rate"):
        FeatureMasking("feature_dropout", 5, IDENTIFIER, None, drop_rate=1.0)
    with pytest.raises(ValueError, match="identifiers"):
        FeatureMasking("cfm", 5, IDENTIFIER, AFFINITY, identifiers="sometimes")


def test_item_tower_ignoring_the_id_represents_items_by_their_features_only():
    from recsys_ssl.config import ModelConfig
    from recsys_ssl.towers import ItemTower

    features = [("item_id", 10, False), ("brand", 4, False), ("tags", 6, True)]
    ids = {"item_id": tf.constant([2, 3, 4]), "brand": tf.constant([2, 2, 3]),
           "tags": tf.constant([[2, 3], [2, 3], [4, 0]])}
    tower = ItemTower(features, ModelConfig(), ignored=["item_id"])
    embeddings = tower(ids).numpy()
    assert "item_id" not in tower.embeddings and embeddings.shape == (3, 64)
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)  # same features, other ids
    assert not np.allclose(embeddings[0], embeddings[2], atol=1e-3)  # other features
    assert ItemTower(features, ModelConfig(), ignored=["tags"])(ids).shape == (3, 64)  # multivalent too
    with_ids = ItemTower(features, ModelConfig())(ids).numpy()
    assert not np.allclose(with_ids[0], with_ids[1], atol=1e-3)


def test_query_tower_can_read_the_history_through_the_shared_item_tower():
    from recsys_ssl.config import ModelConfig
    from recsys_ssl.towers import CorpusHistoryEncoder, ItemTower, QueryTower

    config = ModelConfig()
    item_tower = ItemTower([("item_id", 3, False), ("brand", 2, False)], config, ignored=["item_id"])
    corpus = {"item_id": tf.constant([2, 3, 4]), "brand": tf.constant([2, 2, 3])}  # a, b: brand 2
    tower = QueryTower(["u1"], ["a", "b", "c"], config, history_encoder=CorpusHistoryEncoder(item_tower, corpus))

    def query(*history):
        return tower({"user_id": tf.constant(["u1"]), "history": tf.constant([list(history)])}).numpy()[0]

    # a and b differ only by id, which this item tower ignores: same history representation
    np.testing.assert_allclose(query("a", ""), query("b", ""), atol=1e-6)
    np.testing.assert_allclose(query("a", "zzz"), query("a", ""), atol=1e-6)  # unknown items are left out
    assert not np.allclose(query("a", ""), query("c", ""), atol=1e-3)
    assert not hasattr(tower, "history_embedding")
    # the weights are shared: the item tower's variables are part of the query tower's
    assert {id(v) for v in item_tower.trainable_variables} <= {id(v) for v in tower.trainable_variables}


# -- mixed negative sampling (Yang et al. 2020) ------------------------------------------------
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
