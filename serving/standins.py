"""Stand-in SavedModels that follow the project's export contracts, for tests and benchmarks.

The real exporters live in ``recsys_ssl`` and ``text_ood`` (which ``serving`` must not import);
these stand-ins have the same signatures, so the server, its tests and the load benchmark can run
before (or without) a trained model:

- retrieval: ``serving_default(user_id: string [batch], history: string [batch, None] padded
  with "") -> {item_ids: string [batch, k], scores: float32 [batch, k]}``, with a brute-force
  index (no custom ops) or a ScaNN index (``tfrs.layers.factorized_top_k.ScaNN``, saved with
  ``namespace_whitelist=["Scann"]``, exactly how the retrieval exporter saves it);
- OoD: ``serving_default(text: string [batch]) -> {ood_score: float32 [batch], perplexity:
  float32 [batch]}`` from a character-unigram language model (higher score = more OoD).

The server itself never imports this module (it needs tensorflow-recommenders to build the
retrieval index; serving a ScaNN export only needs the ``scann`` ops).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import tensorflow as tf

from serving.export import atomic_version_dir

logger = logging.getLogger(__name__)


def item_ids(num_items: int) -> list[str]:
    """The stand-in catalogue's item ids: ``item0 ... item{n-1}``."""
    return [f"item{i}" for i in range(num_items)]


class _QueryTower(tf.keras.Model):
    """Hashed user embedding plus the masked mean of history item embeddings, L2-normalised.

    Inputs: ``{"user_id": string [batch], "history": string [batch, None]}`` ("" = padding).
    Output: float32 [batch, embedding_dim].

    History items are embedded by an exact table (a ``StringLookup`` of every item and a row per
    item holding its own vector) or, with ``history_buckets``, by a hashed table of that many
    rows (each initialised with the vector of a random item): the shape of a model trained with
    ``model.item_id_buckets``, whose query side does not grow with the catalogue.
    """

    def __init__(self, items: list[str], item_vectors: np.ndarray, num_user_buckets: int, seed: int,
                 history_buckets: int | None = None):
        super().__init__()
        dim = item_vectors.shape[1]
        rng = np.random.default_rng(seed)
        self.user_hashing = tf.keras.layers.Hashing(num_user_buckets, name="user_hashing")
        self.user_embedding = tf.keras.layers.Embedding(
            num_user_buckets, dim, name="user_embedding",
            embeddings_initializer=tf.keras.initializers.Constant(
                rng.normal(size=(num_user_buckets, dim)).astype("float32") / np.sqrt(dim)),
        )
        if history_buckets is None:
            self.item_lookup = tf.keras.layers.StringLookup(vocabulary=items, mask_token="", name="item_lookup")
            # Row 0: mask, row 1: out-of-vocabulary, rows 2..: the items' own vectors.
            table = np.concatenate([np.zeros((2, dim), "float32"), item_vectors.astype("float32")])
        else:
            self.item_lookup = tf.keras.layers.Hashing(history_buckets, name="history_hashing")
            table = item_vectors[rng.integers(0, len(item_vectors), size=history_buckets)].astype("float32")
        self.item_embedding = tf.keras.layers.Embedding(
            len(table), dim, name="item_embedding", embeddings_initializer=tf.keras.initializers.Constant(table),
        )

    def call(self, inputs):
        user = self.user_embedding(self.user_hashing(inputs["user_id"]))
        history = inputs["history"]
        mask = tf.cast(tf.not_equal(history, ""), tf.float32)[..., tf.newaxis]
        items = self.item_embedding(self.item_lookup(history)) * mask
        mean = tf.reduce_sum(items, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return tf.math.l2_normalize(user + mean, axis=-1)


class _RetrievalModule(tf.Module):
    """The query tower, the index, ``serving_default`` and (optionally) ``search`` by query vector."""

    def __init__(self, tower: tf.keras.Model, index: tf.keras.layers.Layer, query_dim: int | None):
        super().__init__()
        self.tower, self.index = tower, index
        if query_dim is not None:
            self.search = tf.function(self._search, input_signature=[
                tf.TensorSpec([None, query_dim], tf.float32, name="query")])

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="user_id"),
        tf.TensorSpec([None, None], tf.string, name="history"),
    ])
    def serve(self, user_id, history):
        scores, ids = self.index(self.tower({"user_id": user_id, "history": history}))
        return {"item_ids": ids, "scores": scores}

    def _search(self, query):
        scores, ids = self.index(query)
        return {"item_ids": ids, "scores": scores}


def random_unit_vectors(num: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian vectors scaled to unit length: float32 [num, dim]."""
    vectors = np.random.default_rng(seed).normal(size=(num, dim)).astype("float32")
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def export_retrieval(export_dir: str, *, index: Literal["brute_force", "scann"] = "brute_force",
                     num_items: int = 200, embedding_dim: int = 16, k: int = 10,
                     num_user_buckets: int = 1000, num_leaves: int = 100, num_leaves_to_search: int = 10,
                     num_reordering_candidates: int | None = None, seed: int = 0,
                     version: int | None = None, item_vectors: np.ndarray | None = None,
                     history_buckets: int | None = None, query_signature: bool = False,
                     timings: dict | None = None) -> str:
    """Builds and exports a retrieval stand-in.

    Args:
      export_dir: the model's base path; the SavedModel lands in ``export_dir/<version>``.
      index: ``brute_force`` (loads in stock TF Serving) or ``scann`` (needs the Scann ops).
      num_items, embedding_dim: catalogue size and vector width (of random unit item vectors).
      k: results per query, fixed at export.
      num_user_buckets: hash buckets of the user embedding.
      num_leaves, num_leaves_to_search, num_reordering_candidates: ScaNN index parameters.
      seed: seeds the item and user vectors.
      version: the version number (default: next free).
      item_vectors: float32 [num_items, embedding_dim] item vectors to index instead of random
        ones (then ``num_items`` and ``embedding_dim`` are taken from it).
      history_buckets: None: history items are embedded exactly (one row per item); an int: by a
        hashed table of that many rows (the query side stays small at any catalogue size).
      query_signature: also export ``search(query: float32 [batch, embedding_dim]) -> {item_ids,
        scores}``: the index searched with a query vector computed elsewhere (recall measurements).
      timings: if given, receives ``index_seconds`` (building the index) and ``save_seconds``.

    Returns:
      The version directory written.
    """
    import time

    import tensorflow_recommenders as tfrs

    if item_vectors is None:
        item_vectors = random_unit_vectors(num_items, embedding_dim, seed)
    num_items = len(item_vectors)
    items = item_ids(num_items)
    tower = _QueryTower(items, item_vectors, num_user_buckets, seed + 1, history_buckets)
    if index == "brute_force":
        layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
    elif index == "scann":
        layer = tfrs.layers.factorized_top_k.ScaNN(
            k=k, num_leaves=min(num_leaves, num_items), num_leaves_to_search=num_leaves_to_search,
            num_reordering_candidates=num_reordering_candidates,
        )
    else:
        raise ValueError(f"index must be 'brute_force' or 'scann', received {index!r}")
    started = time.perf_counter()
    layer.index(tf.constant(item_vectors, tf.float32), tf.constant(items))
    index_seconds = time.perf_counter() - started
    module = _RetrievalModule(tower, layer, item_vectors.shape[1] if query_signature else None)
    module.serve(tf.constant(["u0"]), tf.constant([["item0", ""]]))  # Builds the tower.
    signatures = {"serving_default": module.serve, **({"search": module.search} if query_signature else {})}
    started = time.perf_counter()
    with atomic_version_dir(export_dir, version) as target:
        tf.saved_model.save(module, target.tmp_path, signatures=signatures,
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    if timings is not None:
        timings.update(index_seconds=index_seconds, save_seconds=time.perf_counter() - started)
    logger.info("exported %s retrieval stand-in (%d items, k=%d) to %s", index, num_items, k, target.path)
    return target.path


class _ByteUnigramOod(tf.Module):
    """Perplexity of the text under a character-unigram model of in-distribution text.

    Code points above 255 share one bucket (255); invalid UTF-8 decodes to U+FFFD (bucket 255).
    """

    def __init__(self, log_probs: np.ndarray):
        super().__init__()
        self.log_probs = tf.Variable(log_probs.astype("float32"), trainable=False, name="log_probs")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        codes = tf.strings.unicode_decode(text, "UTF-8", errors="replace", replacement_char=0xFFFD)
        codes = tf.minimum(codes, 255)
        nll = -tf.gather(self.log_probs, codes)
        lengths = tf.maximum(tf.cast(codes.row_lengths(), tf.float32), 1.0)
        mean_nll = tf.reduce_sum(nll, axis=1) / lengths
        return {"ood_score": mean_nll, "perplexity": tf.exp(mean_nll)}


def export_ood(export_dir: str, in_distribution: list[str] | None = None, version: int | None = None) -> str:
    """Exports the OoD stand-in fitted (add-one smoothed character counts) on ``in_distribution`` text.

    Returns:
      The version directory written.
    """
    corpus = in_distribution or [
        "what is my account balance", "transfer money to my savings account",
        "how do i reset my pin", "book a table for two tonight", "what's the weather tomorrow",
    ]
    counts = np.ones(256, dtype=np.float64)
    for line in corpus:
        for char in line:
            counts[min(ord(char), 255)] += 1
    module = _ByteUnigramOod(np.log(counts / counts.sum()))
    with atomic_version_dir(export_dir, version) as target:
        tf.saved_model.save(module, target.tmp_path, signatures={"serving_default": module.serve})
    logger.info("exported OoD stand-in to %s", target.path)
    return target.path
