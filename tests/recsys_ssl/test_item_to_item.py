"""Item-to-item retrieval: seed-item queries, evaluation slices, the export served over a socket."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from core import config as dataclass_config
from recsys_ssl import config as config_lib
from recsys_ssl.data import FeatureSet
from recsys_ssl.evaluate import evaluate
from recsys_ssl.export import export
from recsys_ssl.metrics import corpus_embeddings
from recsys_ssl.train import Trainer
from recsys_ssl.workdir import build_model, restore_best


def _config(*overrides: str) -> config_lib.Config:
    return dataclass_config.apply_overrides(config_lib.tiny(), ["model.query_mode=item", *overrides])


def test_seed_tower_shares_the_item_towers_embeddings(features_dir):
    tf.keras.utils.set_random_seed(0)
    config = _config("ssl.method=cfm")
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    tower = model.query_tower
    assert tower.item_tower is model.item_tower  # the same embedding tables, not copies
    assert len({id(v) for v in model.trainable_variables}) == len(model.trainable_variables)  # each trained once
    # The seed is the latest history entry: the query of [a, b, ""] is the query of [b].
    a, b = feature_set.item_ids[:2]
    long = tower({"history": tf.constant([[a, b, ""]])}).numpy()
    np.testing.assert_allclose(long, tower({"history": tf.constant([[b]])}).numpy(), rtol=1e-6)
    # ... and equals the seed's corpus features through encode().
    np.testing.assert_allclose(long, tower.encode(model.corpus_features(tf.constant([1]))).numpy(), rtol=1e-6)
    # An item outside the corpus is its default embeddings only.
    masked = tf.ones([1, len(feature_set.schema.item_features)], tf.bool)
    np.testing.assert_allclose(tower({"history": tf.constant([["not-an-item"]])}).numpy(),
                               tower.encode(model.corpus_features(tf.constant([0])), masked).numpy(), rtol=1e-6)


def test_item_mode_trains_evaluates_and_serves_similar_items(features_dir, tmp_path):
    from tests.serving.conftest import ServerProcess
    from tests.serving.helpers import post_json

    workdir = str(tmp_path / "run")
    Trainer(features_dir, workdir, _config("train.epochs=1", "ssl.method=cfm")).run()
    result = evaluate(workdir)
    metrics = result["metrics"]
    feature_set = FeatureSet.load(features_dir, 4)
    eval_examples = feature_set.read_split("eval")
    with_seed = int((eval_examples["history"][:, 0] != "").sum())
    assert metrics["overall"]["examples"] == with_seed  # examples without a seed item are not queries
    assert metrics["seed_head"]["examples"] + metrics["seed_tail"]["examples"] == with_seed
    assert "item-to-item" in result["protocol"] and result["query_mode"] == "item"
    assert set(np.load(os.path.join(workdir, "eval_hits.npz"))) >= {"seed_head", "seed_tail"}

    # Export with a ScaNN index that searches every leaf (exact on this small corpus).
    export_dir = str(tmp_path / "export")
    export(workdir, export_dir, "scann", k=5, scann_options={"num_leaves": 4, "num_leaves_to_search": 4})
    model, feature_set, _ = restore_best(workdir)
    items = corpus_embeddings(model, feature_set.num_items)
    seeds = list(feature_set.item_ids[[0, 7]])

    def expected_top5(query: np.ndarray, seed: str) -> tuple[list[str], np.ndarray]:
        scores = items @ query
        order = [i for i in np.argsort(-scores, kind="stable") if feature_set.item_ids[i] != seed][:5]
        return list(feature_set.item_ids[order]), scores[order]

    queries = model.query_tower({"history": tf.constant([[s] for s in seeds])}).numpy()
    # A cold item: not in the corpus, described by the features of corpus row 3 (and a value no
    # vocabulary knows, which counts as missing).
    schema = feature_set.schema
    row = tf.constant([3])
    features = model.corpus_features(row)
    vocab = {f.name: feature_set.vocabularies[f.vocab_name] for f in schema.item_features[1:]}
    cold = {"item_id": ["brand-new"]}
    for f in schema.item_features[1:]:
        values = [vocab[f.name][i - 2] for i in np.ravel(features[f.name].numpy()) if i >= 2]
        cold[f.name] = [values + ["never-seen"]] if f.multivalent else [values[0] if values else ""]
    cold_ids = {"item_id": tf.constant([0])}
    cold_ids.update({name: features[name] for name in features if name != "item_id"})
    cold_query = model.query_tower.encode(cold_ids).numpy()[0]

    config = ('model_config_list {{ config {{ name: "similar" base_path: "{root}/export" '
              'model_platform: "tensorflow" }} }}\n')
    server = ServerProcess(str(tmp_path), str(tmp_path / "server.log"), flags=(), config=config)
    try:
        server.wait_until_available(["similar"])
        status, body, _ = post_json(f"{server.rest_url}/v1/models/similar:predict",
                                    {"instances": [{"item_id": s} for s in seeds]})
        assert status == 200, body
        for seed, query, prediction in zip(seeds, queries, body["predictions"]):
            ids, scores = expected_top5(query, seed)
            assert prediction["item_ids"] == ids and seed not in ids
            np.testing.assert_allclose(prediction["scores"], scores, rtol=1e-4, atol=1e-5)
        status, body, _ = post_json(f"{server.rest_url}/v1/models/similar:predict",
                                    {"signature_name": "cold_item", "inputs": cold})
        assert status == 200, body
        assert body["outputs"]["item_ids"][0] == expected_top5(cold_query, "brand-new")[0]
        status, body, _ = post_json(f"{server.rest_url}/v1/models/similar:predict",
                                    {"signature_name": "cold_item", "inputs": {"item_id": ["x"]}})
        assert status == 400 and "error" in body  # the features are required inputs of that signature
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    info = json.load(open(os.path.join(export_dir, "1", "assets.extra", "retrieval.json")))
    assert info["query_mode"] == "item" and info["signatures"] == ["cold_item", "serving_default"]


def test_item_mode_with_hashed_item_ids_serves_seeds_and_cold_items(features_dir):
    """model.item_id_buckets with model.query_mode=item: the seed's item_id goes through the hashed
    table (corpus seeds via their corpus row, cold seeds by hashing the id given)."""
    from recsys_ssl.export import ItemToItemModule, build_index
    from recsys_ssl.towers import hash_item_ids

    tf.keras.utils.set_random_seed(0)
    config = _config("model.item_id_buckets=13", "model.item_id_hashes=2", "ssl.method=none")
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    items = corpus_embeddings(model, feature_set.num_items)
    module = ItemToItemModule(model, feature_set, build_index(None, items, feature_set.item_ids, "brute_force", 4), 3)
    seed = feature_set.item_ids[5]
    query = model.query_tower({"history": tf.constant([[seed]])}).numpy()[0]
    served = module.serve(tf.constant([seed]))
    scores = items @ query
    expected = [i for i in np.argsort(-scores, kind="stable") if i != 5][:3]
    assert [x.decode() for x in served["item_ids"].numpy()[0]] == list(feature_set.item_ids[expected])
    # cold_item: the same features under a new id = those features with the new id's hashed buckets.
    features = model.corpus_features(tf.constant([5]))
    vocab = {f.name: feature_set.vocabularies[f.vocab_name] for f in feature_set.schema.item_features[1:]}
    inputs = [tf.constant(["brand-new"])]
    for f in feature_set.schema.item_features[1:]:
        values = [vocab[f.name][i - 2] for i in np.ravel(features[f.name].numpy()) if i >= 2]
        inputs.append(tf.constant([values or [""]]) if f.multivalent else tf.constant([values[0] if values else ""]))
    ids = dict(features)
    ids["item_id"] = tf.cast(hash_item_ids(tf.constant(["brand-new"]), 13, 2), tf.int32)
    cold_query = model.query_tower.encode(ids).numpy()[0]
    cold = module.serve_features(*inputs)
    np.testing.assert_allclose(cold["scores"].numpy()[0], np.sort(items @ cold_query)[::-1][:3], rtol=1e-5)
