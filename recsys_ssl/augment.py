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
probability ``dropout`` independently in each view.

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


class FeatureMasking:
    """Draws the view-1 feature mask of a batch (view 2 is its complement).

    Args:
      method: "rfm" or "cfm".
      num_features: F, the item tower's features in schema order.
      identifier: bool per feature (item_id is an identifier).
      affinity: [F, F] matrix for CFM.
      identifiers: "grouped" or "random_view" (see the module docstring).
    """

    def __init__(self, method: str, num_features: int, identifier: Sequence[bool], affinity: np.ndarray | None,
                 identifiers: str = "random_view"):
        if method not in ("rfm", "cfm"):
            raise ValueError(f"masking method must be 'rfm' or 'cfm', received {method!r}")
        if len(identifier) != num_features:
            raise ValueError(f"identifier flags: expected {num_features}, received {len(identifier)}")
        self.method = method
        self.num_features = num_features
        if method == "cfm":
            if affinity is None or np.shape(affinity) != (num_features, num_features):
                raise ValueError(f"CFM needs a [{num_features}, {num_features}] affinity matrix, "
                                 f"received shape {np.shape(affinity)}")
            if identifiers == "random_view":
                grouped = [i for i in range(num_features) if not identifier[i]]
                self._random_side = np.array(identifier, dtype=bool)
            elif identifiers == "grouped":
                grouped = list(range(num_features))
                self._random_side = np.zeros(num_features, dtype=bool)
            else:
                raise ValueError(f"identifiers must be 'grouped' or 'random_view', received {identifiers!r}")
            if not grouped:
                raise ValueError("CFM needs at least one non-identifier feature to group")
            self.grouped = grouped
            self.masked_sets = cfm_masked_sets(np.asarray(affinity, dtype=np.float64), grouped, num_features)

    def view_mask(self, seed: tf.Tensor) -> tf.Tensor:
        """bool [F]: True = masked in view 1 (and visible in view 2). ``seed``: int32 [2]."""
        if self.method == "rfm":
            scores = tf.random.stateless_uniform([self.num_features], seed=seed)
            ranks = tf.argsort(tf.argsort(scores))
            return ranks < self.num_features // 2
        seed_row = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=len(self.grouped), dtype=tf.int32)
        mask = tf.gather(tf.constant(self.masked_sets), seed_row)
        if self._random_side.any():
            coin = tf.random.stateless_uniform(
                [self.num_features], seed=tf.random.experimental.stateless_fold_in(seed, 1)
            ) < 0.5
            mask = tf.where(tf.constant(self._random_side), coin, mask)
        return mask


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
