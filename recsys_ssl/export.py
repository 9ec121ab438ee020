"""Export: a versioned SavedModel that maps raw query features to the top-k corpus items.

``python -m recsys_ssl export --workdir DIR --export_dir DIR --index {brute_force,scann} [--k 100]``

Signature ``serving_default(user_id: string [batch], history: string [batch, H'])`` ->
``{"item_ids": string [batch, k], "scores": float32 [batch, k]}``; ``history`` is padded with ""
(any width H' works; the query tower pools the non-empty entries). The index holds the item
tower's embeddings of the whole corpus, computed at export.

- ``brute_force``: exact dot products in plain TensorFlow ops; loads in stock TF Serving.
- ``scann``: a ScaNN index (``tfrs.layers.factorized_top_k.ScaNN``); the SavedModel contains the
  ``Scann`` ops, so it is saved with that namespace allowed and needs this project's server (or a
  ScaNN-enabled TF Serving build).

Item-to-item models (``model.query_mode=item``) export ``ItemToItemModule``'s signatures instead:
``serving_default(item_id)`` and ``cold_item(item_id, <item features>)`` -> the k most similar
items (the seed excluded).

The version directory appears atomically (``serving.export.atomic_version_dir``) and carries
``assets.extra/retrieval.json`` (k, index, item count, source workdir).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys_ssl import schema as fs
from recsys_ssl.data import FIRST_ID, PAD_ID
from recsys_ssl.metrics import corpus_embeddings
from recsys_ssl.towers import hash_item_ids, string_lookup
from recsys_ssl.workdir import restore_best
from serving.export import atomic_version_dir

INDEXES = ("brute_force", "scann")


def scann_defaults(num_items: int, k: int, num_leaves: int | None = None) -> dict:
    """ScaNN index parameters for a corpus of ``num_items`` returning ``k`` items.

    ``num_leaves`` ~ 2 sqrt(N) (at most 4,000), ``num_leaves_to_search`` a fifth of them (at most
    200), ``num_reordering_candidates`` max(2k, 200, N / 5,000). Up to 250k items this is the rule
    the project always used; above it the caps follow the 10M x 64 measurement (BENCHMARKS.md,
    issue 25): with 4,000 leaves recall@10 is set by the re-scoring depth (reorder 500: 0.89,
    2,000: 0.97), not by the leaves searched (100 and 500 give the same recall). A given
    ``num_leaves`` replaces the first rule (the number searched follows it).
    """
    num_leaves = num_leaves or max(1, min(4000, int(np.sqrt(num_items) * 2)))
    return {"num_leaves": num_leaves, "num_leaves_to_search": max(1, min(200, num_leaves // 5)),
            "num_reordering_candidates": max(k * 2, 200, num_items // 5000)}


def build_index(query_tower: tf.keras.Model, item_embeddings: np.ndarray, item_ids: np.ndarray, index: str,
                k: int, scann_options: dict | None = None) -> tf.keras.Model:
    """A TFRS top-k layer over the corpus embeddings.

    Args:
      query_tower: raw query features -> [batch, d].
      item_embeddings: float32 [num_items, d].
      item_ids: [num_items] item id strings.
      index: "brute_force" or "scann".
      k: number of items returned.
      scann_options: keyword arguments of ``tfrs.layers.factorized_top_k.ScaNN`` (num_leaves, ...)
        over :func:`scann_defaults`; ``None`` values keep the default.
    """
    k = min(k, len(item_ids))
    if index == "brute_force":
        layer = tfrs.layers.factorized_top_k.BruteForce(query_tower, k=k)
    elif index == "scann":
        given = {key: value for key, value in (scann_options or {}).items() if value is not None}
        options = scann_defaults(len(item_ids), k, given.get("num_leaves"))
        options.update(given)
        layer = tfrs.layers.factorized_top_k.ScaNN(query_tower, k=k, **options)
    else:
        raise ValueError(f"index must be one of {INDEXES}, received {index!r}")
    # index() on whole tensors (what index_from_dataset does after concatenating its batches),
    # without a tf.data pipeline over a multi-GiB array (10M x 64 float32 = 2.4 GiB).
    return layer.index(tf.constant(item_embeddings, tf.float32), tf.constant(item_ids.astype(str)))


class RetrievalModule(tf.Module):
    """Holds the index and the ``serving_default`` signature."""

    def __init__(self, index_layer: tf.keras.Model, k: int):
        super().__init__()
        self.index_layer = index_layer
        self.k = k

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=fs.USER_ID),
                                  tf.TensorSpec([None, None], tf.string, name=fs.HISTORY)])
    def serve(self, user_id, history):
        scores, item_ids = self.index_layer({fs.USER_ID: user_id, fs.HISTORY: history}, k=self.k)
        return {"item_ids": item_ids, "scores": scores}


class ItemToItemModule(tf.Module):
    """Item-to-item retrieval (``model.query_mode=item``): similar items of a seed item.

    Signatures (k fixed at export; the seed itself is never returned):

    - ``serving_default(item_id: string [batch])`` -> ``{item_ids: string [batch, k], scores:
      float32 [batch, k]}``: the seed is a corpus item, described by its corpus features (an id
      outside the corpus has none: only the default embeddings represent it).
    - ``cold_item(item_id: string [batch], <feature>: string [batch] or [batch, V] ...)``: the seed is
      described by the features given, one input per item feature of the schema (multivalent ones
      padded with ""); values outside the vocabularies (and an unknown item_id) count as missing.
      For items that are not in the corpus yet. With hashed item ids (``model.item_id_buckets``)
      the item_id is hashed like any other id (so a new id takes its buckets' embeddings).

    Args:
      model: the trained model (its query tower is a ``SeedItemTower``).
      feature_set: its feature directory (the vocabularies).
      index_layer: a top-k layer over the corpus embeddings without a query model, k + 1 results.
      k: results per seed.
    """

    def __init__(self, model, feature_set, index_layer: tf.keras.Model, k: int):
        super().__init__()
        self.seed_tower = model.query_tower
        self.item_id_buckets, self.item_id_hashes = model.config.model.item_id_buckets, model.config.model.item_id_hashes
        self.index_layer = index_layer
        self.k = k
        self.max_values = model.config.model.max_values
        schema = feature_set.schema
        self.features = [(f.name, f.multivalent) for f in schema.item_features[1:]]
        self.lookups = {f.name: string_lookup(feature_set.vocabularies[f.vocab_name], f"{f.name}_lookup")
                        for f in schema.item_features[1:]}
        specs = [tf.TensorSpec([None], tf.string, name=fs.ITEM_ID)] + [
            tf.TensorSpec([None, None] if multi else [None], tf.string, name=name) for name, multi in self.features]
        self.serve_features = tf.function(self._serve_features, input_signature=specs)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=fs.ITEM_ID)])
    def serve(self, item_id):
        return self._top_k(self.seed_tower({fs.HISTORY: item_id[:, None]}), item_id)

    def _serve_features(self, item_id, *values):
        if self.item_id_buckets:
            ids = {fs.ITEM_ID: tf.cast(hash_item_ids(item_id, self.item_id_buckets, self.item_id_hashes), tf.int32)}
        else:
            ids = {fs.ITEM_ID: self._known(self.seed_tower.item_lookup(item_id))}
        for (name, multi), value in zip(self.features, values):
            looked_up = self._known(self.lookups[name](value))
            ids[name] = looked_up[:, : self.max_values] if multi else looked_up
        return self._top_k(self.seed_tower.encode(ids), item_id)

    @staticmethod
    def _known(ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(ids, tf.int32)
        return tf.where(ids >= FIRST_ID, ids, PAD_ID)  # out-of-vocabulary values count as missing

    def _top_k(self, queries, seed_ids):
        scores, item_ids = self.index_layer(queries, k=self.k + 1)
        scores, item_ids = tf.reshape(scores, [-1, self.k + 1]), tf.reshape(item_ids, [-1, self.k + 1])
        # The seed is not a recommendation for itself: keep the first k other items, in rank order.
        is_seed = tf.cast(tf.equal(item_ids, seed_ids[:, None]), tf.int32)
        order = tf.argsort(is_seed, axis=1, stable=True)[:, : self.k]
        return {"item_ids": tf.gather(item_ids, order, batch_dims=1), "scores": tf.gather(scores, order, batch_dims=1)}


def export(workdir: str, export_dir: str, index: str = "brute_force", k: int = 100,
           scann_options: dict | None = None) -> str:
    """Exports the best model of ``workdir``; returns the new version directory."""
    model, feature_set, config = restore_best(workdir)
    embeddings = corpus_embeddings(model, feature_set.num_items)
    if config.model.query_mode == "item":
        k = min(k, feature_set.num_items - 1)
        layer = build_index(None, embeddings, feature_set.item_ids, index, k + 1, scann_options)
        module = ItemToItemModule(model, feature_set, layer, k)
        signatures = {"serving_default": module.serve, "cold_item": module.serve_features}
    else:
        layer = build_index(model.query_tower, embeddings, feature_set.item_ids, index, k, scann_options)
        module = RetrievalModule(layer, min(k, feature_set.num_items))
        signatures = {"serving_default": module.serve}
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if index == "scann" else None
    with atomic_version_dir(export_dir) as target:
        tf.saved_model.save(module, target.tmp_path, signatures=signatures, options=options)
        extra = os.path.join(target.tmp_path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "retrieval.json"), "w") as f:
            json.dump({"k": module.k, "index": index, "num_items": feature_set.num_items,
                       "history_length": feature_set.schema.history_length, "workdir": os.path.abspath(workdir),
                       "ssl_method": config.ssl.method, "query_mode": config.model.query_mode,
                       "signatures": sorted(signatures)}, f, indent=1)
    logging.info("exported %s index (k=%d) to %s", index, module.k, target.path)
    return target.path
