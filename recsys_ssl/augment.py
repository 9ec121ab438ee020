"""Two views of an item for the SSL task: complementary feature masking and value dropout.

Yao et al. 2021, section 3.2: the item features are split into two disjoint sets; view 1 masks
the first set, view 2 the second (masked features take their default embedding in the tower).

- **RFM** (random feature masking): a random half of all features, redrawn every batch.
- **CFM** (correlated feature masking): a seed feature drawn uniformly every batch, plus the
  ``n - 1`` features with the highest affinity to it, ``n = max(1, floor(k / 2))`` of the ``k``
  grouped features. Masking correlated features together removes the shortcut of predicting a
  masked feature from its correlated partner in the other view.

Identifier features (item_id). The raw MI between an identifier and any feature equals that
feature's entropy (the id determines everything), so with raw MI the id is every feature's top
partner and CFM degenerates into "the seed and the id on one side". Two remedies, chosen by
``SSLConfig``: ``affinity="normalized_mi"`` (MI / sqrt(H_i H_j)) ranks partners by how much of
their information they share rather than by entropy, and ``identifiers="random_view"`` keeps
identifiers out of the grouping and gives each one to a random view per batch. The ablation in
BENCHMARKS.md measures the choices.

Then **value dropout**: each remaining value of a multivalent feature is dropped with
probability ``value_dropout`` independently in each view.

Variants (``SSLConfig``), each tested:

- ``granularity="batch"`` draws one split per SSL batch (every row shares the seed feature and
  the identifiers' coin); ``"example"`` draws one per row (the augmentation diversity of
  SimCLR-style per-example views).
- ``identifiers="both_masked"`` masks identifiers in both views, so the views agree only
  through the other features.
- **Feature dropout** (``method="feature_dropout"``, the baseline of the paper's comparison):
  not complementary; each view drops every feature independently with probability
  ``feature_dropout_rate`` (per row).

All randomness is stateless, from an int32 [2] seed, so a resumed run replays the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from recsys_ssl.data import PAD_ID


def cfm_masked_sets(affinity: np.ndarray, grouped: Sequence[int], num_features: int) -> np.ndarray:
    """For each seed feature, the features CFM masks in view 1.

    Args:
      affinity: [F, F] symmetric feature affinity (MI or normalised MI).
      grouped: indices of the features taking part in the grouping (k of them).
      num_features: F.

    Returns:
      bool [k, F]: row ``s`` is the masked set when ``grouped[s]`` is the seed: the seed plus the
      ``n - 1`` other grouped features of highest affinity to it (ties broken by feature index),
      ``n = max(1, k // 2)``. Features outside ``grouped`` are never set.
    """
    k = len(grouped)
    n = max(1, k // 2)
    sets = np.zeros((k, num_features), dtype=bool)
    for row, seed in enumerate(grouped):
        partners = sorted((g for g in grouped if g != seed), key=lambda g: (-affinity[seed, g], g))
        sets[row, [seed] + partners[: n - 1]] = True
    return sets


MASKING_METHODS = ("rfm", "cfm", "feature_dropout")
IDENTIFIER_MODES = ("grouped", "random_view", "both_masked")
GRANULARITIES = ("batch", "example")


class FeatureMasking:
    """Draws the feature masks of the two SSL views.

    Args:
      method: "rfm", "cfm" or "feature_dropout".
      num_features: F, the item tower's features in schema order.
      identifier: bool per feature (item_id is an identifier).
      affinity: [F, F] matrix for CFM.
      identifiers: "grouped", "random_view" or "both_masked" (see the module docstring); ignored
        by feature dropout, which treats every feature alike.
      granularity: "batch" (one split per batch) or "example" (one per row).
      drop_rate: feature dropout's per-feature drop probability.
    """

    def __init__(self, method: str, num_features: int, identifier: Sequence[bool], affinity: np.ndarray | None,
                 identifiers: str = "random_view", granularity: str = "batch", drop_rate: float = 0.5):
        if method not in MASKING_METHODS:
            raise ValueError(f"masking method must be one of {MASKING_METHODS}, received {method!r}")
        if len(identifier) != num_features:
            raise ValueError(f"identifier flags: expected {num_features}, received {len(identifier)}")
        if identifiers not in IDENTIFIER_MODES:
            raise ValueError(f"identifiers must be one of {IDENTIFIER_MODES}, received {identifiers!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, received {granularity!r}")
        if not 0.0 < drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in (0, 1), received {drop_rate}")
        self.method, self.num_features, self.granularity = method, num_features, granularity
        self.identifiers, self.drop_rate = identifiers, drop_rate
        self._identifier = np.array(identifier, dtype=bool)
        # Features taking part in the complementary split: RFM splits all of them (identifiers
        # too) unless identifiers are masked in both views; CFM keeps identifiers out of the MI
        # grouping unless "grouped".
        cfm_random_view = method == "cfm" and identifiers == "random_view"
        both = identifiers == "both_masked" and method != "feature_dropout"
        self.grouped = [i for i in range(num_features) if not ((cfm_random_view or both) and identifier[i])]
        if not self.grouped:
            raise ValueError("masking needs at least one non-identifier feature")
        self._random_side = self._identifier if cfm_random_view else np.zeros(num_features, dtype=bool)
        self._both = self._identifier if both else np.zeros(num_features, dtype=bool)
        if method == "cfm":
            if affinity is None or np.shape(affinity) != (num_features, num_features):
                raise ValueError(f"CFM needs a [{num_features}, {num_features}] affinity matrix, "
                                 f"received shape {np.shape(affinity)}")
            self.masked_sets = cfm_masked_sets(np.asarray(affinity, dtype=np.float64), self.grouped, num_features)

    def view_mask(self, seed: tf.Tensor) -> tf.Tensor:
        """bool [F]: the batch-level view-1 split of RFM / CFM (True = masked in view 1).

        Identifiers: "random_view" puts each into one view at random; "grouped" splits them with
        the rest (RFM always does); "both_masked" leaves them False here (:meth:`view_masks`
        masks them in both views). ``seed``: int32 [2].
        """
        if self.method == "rfm" and self.identifiers != "both_masked":
            scores = tf.random.stateless_uniform([self.num_features], seed=seed)
            ranks = tf.argsort(tf.argsort(scores))
            return ranks < self.num_features // 2
        return self._split(seed, None)

    def _split(self, seed: tf.Tensor, rows: int | tf.Tensor | None) -> tf.Tensor:
        """View-1 split of the grouped features, [F] (``rows`` None) or [rows, F]."""
        shape = [] if rows is None else [rows]
        grouped = tf.constant(self.grouped, tf.int32)
        if self.method == "rfm":
            scores = tf.random.stateless_uniform(shape + [len(self.grouped)], seed=seed)
            ranks = tf.argsort(tf.argsort(scores, axis=-1), axis=-1)
            chosen = ranks < len(self.grouped) // 2  # [..., G]
            mask = tf.scatter_nd(grouped[:, None], tf.transpose(tf.reshape(chosen, [-1, len(self.grouped)])),
                                 [self.num_features, tf.reduce_prod(shape)])
            mask = tf.reshape(tf.transpose(mask), shape + [self.num_features])
        else:
            seed_row = tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=len(self.grouped),
                                                   dtype=tf.int32)
            mask = tf.gather(tf.constant(self.masked_sets), seed_row)
        if self._random_side.any():
            coin = tf.random.stateless_uniform(
                shape + [self.num_features], seed=tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
            mask = tf.where(tf.constant(self._random_side), coin, mask)
        return mask

    def view_masks(self, seed: tf.Tensor, rows: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The masks of both views for an SSL batch of ``rows`` items.

        Returns:
          ``(mask_1, mask_2)``, bool [rows, F] each (True = the feature takes its default embedding).
          RFM / CFM: view 2 is view 1's complement (identifiers in "both_masked" mode are masked in
          both). Feature dropout: two independent draws.
        """
        if self.method == "feature_dropout":
            mask_1 = tf.random.stateless_uniform([rows, self.num_features], seed=seed) < self.drop_rate
            mask_2 = tf.random.stateless_uniform(
                [rows, self.num_features], seed=tf.random.experimental.stateless_fold_in(seed, 2)) < self.drop_rate
            return mask_1, mask_2
        if self.granularity == "batch":
            mask = tf.tile(self.view_mask(seed)[None, :], [rows, 1])
        else:
            mask = self._split(seed, rows)
        both = tf.constant(self._both)[None, :]
        return tf.logical_or(mask, both), tf.logical_or(tf.logical_not(mask), both)


def drop_values(ids: tf.Tensor, rate: float, seed: tf.Tensor) -> tf.Tensor:
    """Drops each non-padding value of a multivalent id matrix with probability ``rate``.

    Args:
      ids: int32 [batch, max_values], 0 = padding.
      rate: drop probability in [0, 1).
      seed: int32 [2].

    Returns:
      int32 [batch, max_values] with dropped values set to 0 (padding).
    """
    if rate <= 0.0:
        return ids
    keep = tf.random.stateless_uniform(tf.shape(ids), seed=seed) >= rate
    return tf.where(keep, ids, tf.zeros_like(ids) + PAD_ID)
