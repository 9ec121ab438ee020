"""The SSL-regularised two-tower retrieval model (Yao et al. 2021) on tensorflow-recommenders.

``L = L_main + alpha * L_ssl``:

- ``L_main``: in-batch softmax over the interactions of a batch (TFRS retrieval task, mean over
  the batch) with temperature, logQ correction from the items' train frequencies, and removal of
  accidental hits.
- ``L_ssl``: a second batch of items sampled **uniformly from the item corpus**, two views by
  complementary feature masking (RFM or CFM) and value dropout (``augment.py``), both through the
  shared item tower, InfoNCE with its own temperature (``losses.info_nce``).

The main items and both SSL views go through the item tower in one call (per-row feature masks),
which keeps the SSL step cheap. All randomness is stateless, from a per-step int32 [2] seed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsys_ssl import schema as fs
from recsys_ssl.augment import FeatureMasking, drop_values
from recsys_ssl.config import Config
from recsys_ssl.data import FIRST_ID, FeatureSet
from recsys_ssl.losses import info_nce, retrieval_task
from recsys_ssl.towers import CorpusHistoryEncoder, ItemTower, QueryTower, hash_item_ids, string_lookup


def feature_affinity(feature_set: FeatureSet, affinity: str) -> np.ndarray:
    """[F, F] affinity between the schema's item features from ``item_feature_mi.json``."""
    document = feature_set.mutual_information
    key = {"raw_mi": "mi", "normalized_mi": "normalized_mi"}[affinity]
    order = [document["features"].index(name) for name in feature_set.schema.item_feature_names]
    matrix = np.asarray(document[key], dtype=np.float64)
    return matrix[np.ix_(order, order)]


class SSLTwoTowerModel(tfrs.Model):
    """Two towers, the item corpus as id matrices, the main retrieval task and the SSL task.

    Args:
      feature_set: the loaded feature directory (vocabularies, corpus, frequencies, MI).
      config: the run configuration.
    """

    def __init__(self, feature_set: FeatureSet, config: Config):
        super().__init__()
        self.config = config
        schema = feature_set.schema
        self.item_feature_names = schema.item_feature_names
        self.multivalent = [f.multivalent for f in schema.item_features]
        self.num_items = feature_set.num_items
        tower_features = [(f.name, len(feature_set.vocabularies[f.vocab_name]), f.multivalent)
                          for f in schema.item_features]
        corpus_ids = dict(feature_set.item_feature_ids)
        if config.model.item_id_buckets:
            # The item_id feature becomes hashed ids (hashes > 1: a "multivalent" feature whose values
            # the tower averages); SSL dropout still sees item_id as single-valued (self.multivalent).
            hashes = config.model.item_id_hashes
            tower_features = [(name, config.model.item_id_buckets, hashes > 1) if name == fs.ITEM_ID
                              else (name, size, multi) for name, size, multi in tower_features]
            corpus_ids[fs.ITEM_ID] = hash_item_ids(tf.constant(feature_set.item_ids.astype(str)),
                                                   config.model.item_id_buckets, hashes).numpy().astype(np.int32)
        item_tower = ItemTower(
            tower_features, config.model,
            ignored=() if config.model.item_tower_identifiers else [f.name for f in schema.item_features
                                                                     if f.identifier],
        )
        corpus = {name: tf.constant(ids) for name, ids in corpus_ids.items()}
        history_encoder = None
        if config.model.query_history == "item_tower":
            history_encoder = CorpusHistoryEncoder(item_tower, corpus)
        # Assigned in this order so that the model's weight order (and checkpoints) stay as before.
        self.query_tower = QueryTower(
            feature_set.vocabularies[fs.USER_ID], feature_set.vocabularies[fs.ITEM_ID], config.model,
            history_encoder=history_encoder,
        )
        self.item_tower = item_tower
        # Target ids -> corpus rows: the query tower's lookup, or (hashed history, no lookup there) our own.
        self._item_lookup = None
        if self.query_tower.item_lookup is None:
            self._item_lookup = string_lookup(feature_set.vocabularies[fs.ITEM_ID], "item_lookup")
        self.retrieval = retrieval_task(config.train.temperature, config.train.remove_accidental_hits)
        self._corpus = corpus
        self._item_probability = tf.constant(np.maximum(feature_set.item_probability, 1e-9))
        self.masking = None
        if config.ssl.method != "none":
            self.masking = FeatureMasking(
                config.ssl.method, len(self.item_feature_names), [f.identifier for f in schema.item_features],
                feature_affinity(feature_set, config.ssl.affinity) if config.ssl.method == "cfm" else None,
                config.ssl.identifiers, config.ssl.mask_granularity, config.ssl.feature_drop_rate,
            )
        self.ssl_head = None
        if config.ssl.method != "none" and config.ssl.projection_head:
            self.ssl_head = tf.keras.Sequential([
                tf.keras.layers.Dense(config.ssl.projection_head, activation="relu", name="hidden"),
                tf.keras.layers.Dense(config.model.output_dim, name="output"),
            ], name="ssl_head")

    def item_rows(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Corpus rows of item id strings [batch] -> int32 [batch] (-1 for unknown items)."""
        lookup = self.query_tower.item_lookup if self._item_lookup is None else self._item_lookup
        return tf.cast(lookup(item_ids), tf.int32) - FIRST_ID

    def corpus_features(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """The item tower's id inputs of corpus rows int32 [batch]."""
        return {name: tf.gather(ids, rows) for name, ids in self._corpus.items()}

    def item_embeddings(self, rows: tf.Tensor) -> tf.Tensor:
        """float32 [batch, output_dim] unmasked item embeddings of corpus rows."""
        return self.item_tower(self.corpus_features(rows), training=False)

    def _dropout(self, features: dict, rate: float, seed: tf.Tensor) -> dict:
        return {
            name: drop_values(ids, rate, tf.random.experimental.stateless_fold_in(seed, index))
            if multi else ids
            for index, (name, ids, multi) in enumerate(
                (n, features[n], m) for n, m in zip(self.item_feature_names, self.multivalent)
            )
        }

    def loss_terms(self, batch: dict[str, tf.Tensor], seed: tf.Tensor, training: bool = True) -> dict[str, tf.Tensor]:
        """Main, SSL and total loss of one batch.

        Args:
          batch: ``user_id`` string [B], ``history`` string [B, H], ``item_id`` string [B].
          seed: int32 [2], this step's random seed.

        Returns:
          ``{"main", "ssl", "total"}`` scalars (``ssl`` is 0 when the SSL task is off).
        """
        train_config, ssl_config = self.config.train, self.config.ssl
        queries = self.query_tower({fs.USER_ID: batch[fs.USER_ID], fs.HISTORY: batch[fs.HISTORY]}, training=training)
        rows = self.item_rows(batch[fs.ITEM_ID])
        main_items = self.corpus_features(rows)
        if train_config.feature_dropout > 0 and training:
            main_items = self._dropout(main_items, train_config.feature_dropout, tf.random.experimental.stateless_fold_in(seed, 11))
        batch_size = tf.shape(rows)[0]
        num_features = len(self.item_feature_names)

        if self.masking is None:
            candidates = self.item_tower(main_items, training=training)
        else:
            ssl_size = ssl_config.batch_size
            ssl_rows = tf.random.stateless_uniform(
                [ssl_size], seed=tf.random.experimental.stateless_fold_in(seed, 1), minval=0,
                maxval=self.num_items, dtype=tf.int32,
            )
            ssl_items = self.corpus_features(ssl_rows)
            view_1 = self._dropout(ssl_items, ssl_config.dropout, tf.random.experimental.stateless_fold_in(seed, 2))
            view_2 = self._dropout(ssl_items, ssl_config.dropout, tf.random.experimental.stateless_fold_in(seed, 3))
            mask_1, mask_2 = self.masking.view_masks(tf.random.experimental.stateless_fold_in(seed, 4), ssl_size)
            feature_mask = tf.concat([tf.zeros([batch_size, num_features], tf.bool), mask_1, mask_2], axis=0)
            all_items = {name: tf.concat([main_items[name], view_1[name], view_2[name]], axis=0)
                         for name in self.item_feature_names}
            embeddings = self.item_tower(all_items, feature_mask, training=training)
            candidates = embeddings[:batch_size]
            ssl_1, ssl_2 = embeddings[batch_size: batch_size + ssl_size], embeddings[batch_size + ssl_size:]

        probability = tf.gather(self._item_probability, rows) if train_config.logq_correction else None
        if probability is not None and train_config.logq_strength != 1.0:
            probability = tf.pow(probability, train_config.logq_strength)  # log(q^s) = s * log(q)
        main = tf.reduce_mean(self.retrieval(
            queries, candidates, candidate_sampling_probability=probability,
            candidate_ids=rows if train_config.remove_accidental_hits else None,
            compute_metrics=False, compute_batch_metrics=False,
        ))
        if self.masking is None:
            ssl = tf.constant(0.0)
        else:
            if self.ssl_head is not None:
                ssl_1, ssl_2 = (tf.math.l2_normalize(self.ssl_head(v, training=training), axis=-1)
                                for v in (ssl_1, ssl_2))
            ssl = info_nce(ssl_1, ssl_2, ssl_config.temperature, ids=ssl_rows)
        return {"main": main, "ssl": ssl, "total": main + ssl_config.weight * ssl}

    def step_seed(self, step: tf.Tensor) -> tf.Tensor:
        """int32 [2] random seed of training step ``step`` (the SSL batch, masks and dropout)."""
        return tf.stack([tf.constant(self.config.train.seed, tf.int32), tf.cast(step, tf.int32)])

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """``tfrs.Model``'s hook, so that ``model.fit`` trains the SSL-regularised objective.

        The step's seed comes from the optimizer's iteration count, so every ``fit`` step draws
        its own SSL batch and masks (and a resumed ``fit`` replays them).
        """
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        return self.loss_terms(inputs, self.step_seed(step), training=training)["total"]
