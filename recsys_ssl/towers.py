"""The query and item towers of the two-tower retrieval model.

Both end in an MLP and an L2 normalisation, so their dot product is a cosine similarity.
The query tower takes raw strings (so exported models take raw query features); the item tower
takes feature ids (the model gathers them from the in-memory item corpus, see ``data.py``) and a
per-example feature mask: a masked feature, or one with no value, is represented by that
feature's learned default embedding (Yao et al. 2021, section 3.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from recsys_ssl import schema as fs
from recsys_ssl.config import ModelConfig
from recsys_ssl.data import FIRST_ID, PAD_ID


def _mlp(hidden: Sequence[int], output_dim: int, name: str) -> tf.keras.Sequential:
    layers = [tf.keras.layers.Dense(units, activation="relu", name=f"{name}_hidden_{i}") for i, units in enumerate(hidden)]
    layers.append(tf.keras.layers.Dense(output_dim, name=f"{name}_output"))
    return tf.keras.Sequential(layers, name=name)


def string_lookup(vocabulary: Sequence[str], name: str) -> tf.keras.layers.StringLookup:
    """Maps "" to 0 (padding), unknown strings to 1 (OOV) and ``vocabulary[i]`` to ``2 + i``."""
    return tf.keras.layers.StringLookup(
        vocabulary=list(vocabulary), mask_token="", num_oov_indices=1, output_mode="int", name=name
    )


def hash_item_ids(item_ids: tf.Tensor, buckets: int, hashes: int = 1) -> tf.Tensor:
    """Item id strings -> hashed embedding ids (``model.item_id_buckets``), in ``[FIRST_ID, FIRST_ID + buckets)``.

    Hash ``0`` is FarmHash64 of the id (``tf.strings.to_hash_bucket_fast``, a stock op: exported
    models load in TF Serving); hash ``i > 0`` hashes the id joined with ``"\x1f<i>"``.

    Args:
      item_ids: string [...] item ids.
      buckets: embedding rows shared by all items.
      hashes: buckets per id.

    Returns:
      int64 [...] when ``hashes == 1``, else int64 [..., hashes].
    """
    salted = [item_ids] + [tf.strings.join([item_ids, f"\x1f{i}"]) for i in range(1, hashes)]
    ids = [tf.strings.to_hash_bucket_fast(s, buckets) + FIRST_ID for s in salted]
    return ids[0] if hashes == 1 else tf.stack(ids, axis=-1)


class QueryTower(tf.keras.Model):
    """user_id and the pooled history items -> MLP -> L2-normalised query embedding.

    Inputs: ``{"user_id": string [batch], "history": string [batch, H]}`` (history padded with "").
    Output: float32 [batch, output_dim], unit norm. Unknown users use the OOV embedding; an empty
    history pools to zeros.

    Args:
      history_encoder: None: history items are embedded by the tower's own id table (unknown items
        use its OOV row; with ``config.item_id_buckets`` the table has that many hashed rows and
        unknown items hash into one of them). Otherwise a callable ``(item ids int [batch, H], training) -> float32
        [batch, H, d]`` (e.g. ``CorpusHistoryEncoder``); unknown items are then left out of the mean.
    """

    def __init__(self, user_vocabulary: Sequence[str], item_vocabulary: Sequence[str], config: ModelConfig,
                 name: str = "query_tower", history_encoder=None):
        super().__init__(name=name)
        self.user_lookup = string_lookup(user_vocabulary, "user_lookup")
        # A hashed history table needs no item vocabulary: the tower (and its export) then holds none.
        hashed_history = bool(config.item_id_buckets) and history_encoder is None
        self.item_lookup = None if hashed_history else string_lookup(item_vocabulary, "item_lookup")
        self.user_embedding = tf.keras.layers.Embedding(len(user_vocabulary) + 2, config.embedding_dim,
                                                        name="user_embedding")
        self.history_encoder = history_encoder
        self.item_id_buckets, self.item_id_hashes = config.item_id_buckets, config.item_id_hashes
        if history_encoder is None:
            rows = config.item_id_buckets or len(item_vocabulary)
            self.history_embedding = tf.keras.layers.Embedding(rows + 2, config.embedding_dim,
                                                               name="history_embedding")
        self.mlp = _mlp(config.query_hidden, config.output_dim, "mlp")

    def call(self, inputs, training=False):
        user = self.user_embedding(self.user_lookup(inputs[fs.USER_ID]))
        if self.history_encoder is None and self.item_id_buckets:
            valid = tf.cast(tf.not_equal(inputs[fs.HISTORY], ""), tf.float32)[..., None]
            embedded = self.history_embedding(hash_item_ids(inputs[fs.HISTORY], self.item_id_buckets,
                                                            self.item_id_hashes))
            if self.item_id_hashes > 1:
                embedded = tf.reduce_mean(embedded, axis=-2)
        else:
            history_ids = self.item_lookup(inputs[fs.HISTORY])
            if self.history_encoder is None:
                valid = tf.cast(tf.not_equal(history_ids, PAD_ID), tf.float32)[..., None]
                embedded = self.history_embedding(history_ids)
            else:
                valid = tf.cast(history_ids >= FIRST_ID, tf.float32)[..., None]
                embedded = self.history_encoder(history_ids, training=training)
        history = tf.reduce_sum(embedded * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
        return tf.math.l2_normalize(self.mlp(tf.concat([user, history], axis=-1), training=training), axis=-1)


class CorpusHistoryEncoder(tf.keras.layers.Layer):
    """History item ids -> the item tower's embeddings of those corpus items (shared weights).

    Args:
      item_tower: the model's ``ItemTower``.
      corpus: feature name -> int32 tensor [num_items] or [num_items, max_values], the item tower's
        inputs per corpus row (row = item id - FIRST_ID); the model's own corpus tables, not a copy.

    Call: item ids int [batch, H] (``QueryTower.item_lookup`` output) -> float32 [batch, H, output_dim];
    rows of padding or unknown items are computed on row 0 and must be masked by the caller.
    """

    def __init__(self, item_tower: "ItemTower", corpus: Mapping[str, tf.Tensor], name: str = "history_item_encoder"):
        super().__init__(name=name)
        self.item_tower = item_tower
        self.corpus = dict(corpus)

    def call(self, history_ids, training=False):
        shape = tf.shape(history_ids)
        rows = tf.maximum(tf.cast(tf.reshape(history_ids, [-1]), tf.int32) - FIRST_ID, 0)
        embedded = self.item_tower({name: tf.gather(ids, rows) for name, ids in self.corpus.items()},
                                   training=training)
        return tf.reshape(embedded, tf.concat([shape, [-1]], axis=0))


class ItemTower(tf.keras.Model):
    """One embedding per item feature (multivalent ones mean-pooled), default embeddings for masked
    or missing features, MLP, L2 normalisation.

    Args:
      features: ``(name, vocabulary_size, multivalent)`` per item feature, schema order.
      config: tower sizes.
      ignored: names of features the tower never looks at (they always take their default
        embedding; no embedding table is built for them).

    Call:
      feature_ids: name -> int32 [batch] (single-valued) or [batch, max_values] (multivalent,
        0-padded) ids.
      feature_mask: optional bool [batch, num_features]; True replaces the feature by its default
        embedding.
      Returns float32 [batch, output_dim], unit norm.
    """

    def __init__(self, features: Sequence[tuple[str, int, bool]], config: ModelConfig, name: str = "item_tower",
                 ignored: Sequence[str] = ()):
        super().__init__(name=name)
        self.feature_names = [name_ for name_, _, _ in features]
        self.multivalent = {name_: multi for name_, _, multi in features}
        self.embeddings = {
            name_: tf.keras.layers.Embedding(size + 2, config.embedding_dim, name=f"{name_}_embedding")
            for name_, size, _ in features if name_ not in ignored
        }
        self.default_embeddings = self.add_weight(
            name="default_embeddings", shape=(len(features), config.embedding_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
        )
        self.mlp = _mlp(config.item_hidden, config.output_dim, "mlp")

    def call(self, feature_ids, feature_mask=None, training=False):
        pooled = []
        for index, name in enumerate(self.feature_names):
            ids = feature_ids[name]
            if name not in self.embeddings:  # ignored feature
                pooled.append(tf.tile(self.default_embeddings[index][None, :], [tf.shape(ids)[0], 1]))
                continue
            embedded = self.embeddings[name](ids)
            if self.multivalent[name]:
                valid_values = tf.cast(tf.not_equal(ids, PAD_ID), tf.float32)[..., None]
                count = tf.reduce_sum(valid_values, axis=1)
                embedded = tf.reduce_sum(embedded * valid_values, axis=1) / tf.maximum(count, 1.0)
                present = count[:, 0] > 0
            else:
                present = tf.not_equal(ids, PAD_ID)
            use_value = present if feature_mask is None else tf.logical_and(present, tf.logical_not(feature_mask[:, index]))
            pooled.append(tf.where(use_value[:, None], embedded, self.default_embeddings[index][None, :]))
        return tf.math.l2_normalize(self.mlp(tf.concat(pooled, axis=-1), training=training), axis=-1)
