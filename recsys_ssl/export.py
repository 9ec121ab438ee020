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
from recsys_ssl.metrics import corpus_embeddings
from recsys_ssl.workdir import restore_best
from serving.export import atomic_version_dir

INDEXES = ("brute_force", "scann")


def build_index(query_tower: tf.keras.Model, item_embeddings: np.ndarray, item_ids: np.ndarray, index: str,
                k: int, scann_options: dict | None = None) -> tf.keras.Model:
    """A TFRS top-k layer over the corpus embeddings.

    Args:
      query_tower: raw query features -> [batch, d].
      item_embeddings: float32 [num_items, d].
      item_ids: [num_items] item id strings.
      index: "brute_force" or "scann".
      k: number of items returned.
      scann_options: keyword arguments of ``tfrs.layers.factorized_top_k.ScaNN`` (num_leaves, ...).
    """
    k = min(k, len(item_ids))
    if index == "brute_force":
        layer = tfrs.layers.factorized_top_k.BruteForce(query_tower, k=k)
    elif index == "scann":
        options = {"num_leaves": max(1, min(1000, int(np.sqrt(len(item_ids)) * 2))),
                   "num_leaves_to_search": None, "num_reordering_candidates": max(k * 2, 200)}
        options.update(scann_options or {})
        if options["num_leaves_to_search"] is None:
            options["num_leaves_to_search"] = max(1, options["num_leaves"] // 5)
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


def export(workdir: str, export_dir: str, index: str = "brute_force", k: int = 100,
           scann_options: dict | None = None) -> str:
    """Exports the best model of ``workdir``; returns the new version directory."""
    model, feature_set, config = restore_best(workdir)
    embeddings = corpus_embeddings(model, feature_set.num_items)
    layer = build_index(model.query_tower, embeddings, feature_set.item_ids, index, k, scann_options)
    module = RetrievalModule(layer, min(k, feature_set.num_items))
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]) if index == "scann" else None
    with atomic_version_dir(export_dir) as target:
        tf.saved_model.save(module, target.tmp_path, signatures={"serving_default": module.serve}, options=options)
        extra = os.path.join(target.tmp_path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "retrieval.json"), "w") as f:
            json.dump({"k": module.k, "index": index, "num_items": feature_set.num_items,
                       "history_length": feature_set.schema.history_length, "workdir": os.path.abspath(workdir),
                       "ssl_method": config.ssl.method}, f, indent=1)
    logging.info("exported %s index (k=%d) to %s", index, module.k, target.path)
    return target.path
