"""The ranking protocol behind every recall number: which examples are queries, what is excluded.

Shared by the two-tower evaluation (``evaluate``), the validation recall that selects epochs
(``train``) and the peers (``baselines``), so that all of them rank the same queries against the
same candidates:

- **Queries**: the examples of a held-out split (``validation`` or ``eval``). In ``user`` mode
  every example is a query (user, history -> target). In ``item`` mode (item-to-item retrieval)
  the query is the **seed item**: the user's most recent item strictly before the target, i.e.
  the last non-empty entry of the example's ``history`` (the feature pipeline writes histories
  oldest first, strictly earlier timestamps only). Examples without a seed (a user's first
  interaction) are not queries in ``item`` mode.
- **Candidates**: the whole item corpus (``vocab/item_id.txt``; row ``r`` = its ``r``-th entry).
- **Excluded** from each query's ranking: every item of the user's examples in the earlier splits
  (``EARLIER_SPLITS``: train for validation; train and validation for eval) and, in ``item`` mode,
  the seed itself; never the target.
- **Slices** (by the target item): head / tail from ``stats.json``, cold = no train interaction
  (a subset of tail); in ``item`` mode also seed_head / seed_tail (by the seed item).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from recsys_ssl import schema as fs
from recsys_ssl.metrics import seen_rows

QUERY_MODES = ("user", "item")
EARLIER_SPLITS = {"eval": ("train", "validation"), "validation": ("train",)}
SEED = "seed"  # the column item-mode queries add to the examples: the seed item id


def check_mode(mode: str) -> str:
    if mode not in QUERY_MODES:
        raise ValueError(f"query mode must be one of {QUERY_MODES}, received {mode!r}")
    return mode


def corpus_rows(item_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Corpus rows of item id strings.

    Args:
      item_ids: [N] the corpus item ids (``FeatureSet.item_ids``), row order.
      ids: [Q] item ids to look up.

    Returns:
      int64 [Q], -1 for ids not in the corpus (and for "").
    """
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    return np.fromiter((row_of.get(i, -1) for i in ids), np.int64, len(ids))


def seed_items(history: np.ndarray) -> np.ndarray:
    """The most recent item of each history: object [n, H] (oldest first, padded with "") -> [n]
    ("" for an empty history)."""
    history = np.asarray(history, dtype=object)
    if history.size == 0:
        return np.zeros(len(history), dtype=object)
    filled = history != ""
    count = filled.sum(axis=1)
    seeds = history[np.arange(len(history)), np.maximum(count - 1, 0)].copy()
    seeds[count == 0] = ""
    return seeds


def select_queries(examples: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """The examples that are queries in ``mode``; ``item`` mode keeps those with a seed and adds
    the ``seed`` column (object [Q])."""
    examples = dict(examples)
    if check_mode(mode) == "user":
        return examples
    seeds = seed_items(examples[fs.HISTORY])
    keep = seeds != ""
    selected = {key: value[keep] for key, value in examples.items()}
    selected[SEED] = seeds[keep]
    return selected


@dataclasses.dataclass
class HeldOut:
    """The queries of a held-out split under the protocol (see the module docstring).

    Attributes:
      split: "validation" or "eval".
      mode: "user" or "item".
      examples: the query examples' columns (``FeatureSet.read_split``; ``item`` mode adds ``seed``).
      targets: int64 [Q] corpus rows of the targets.
      exclude: Q int64 arrays of corpus rows excluded from each query's ranking.
      seeds: int64 [Q] corpus rows of the seed items (``item`` mode), else None.
    """

    split: str
    mode: str
    examples: dict[str, np.ndarray]
    targets: np.ndarray
    exclude: list[np.ndarray]
    seeds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> HeldOut:
        """The queries at ``index`` (int or bool array), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return HeldOut(self.split, self.mode, {k: v[index] for k, v in self.examples.items()}, self.targets[index],
                       [self.exclude[i] for i in index], None if self.seeds is None else self.seeds[index])

    def slices(self, is_head: np.ndarray, is_cold: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean [Q] masks: overall, head, tail, cold (by target) and, in item mode, seed_head /
        seed_tail (by seed)."""
        head = is_head[self.targets]
        slices = {"overall": np.ones(len(self), bool), "head": head, "tail": ~head, "cold": is_cold[self.targets]}
        if self.seeds is not None:
            slices["seed_head"] = is_head[self.seeds]
            slices["seed_tail"] = ~is_head[self.seeds]
        return slices

    def protocol(self, num_items: int) -> str:
        """A sentence for reports: what was ranked against what, and what was excluded."""
        text = (f"exact scores over all {num_items} corpus items; items of the user's "
                f"{' and '.join(EARLIER_SPLITS[self.split])} examples excluded (never the target); slice = target "
                "item's head/tail membership from stats.json; cold = no interaction in the train split")
        if self.mode == "item":
            text += ("; item-to-item: query = the seed item (the user's latest item strictly before the target), "
                     "examples without one skipped, the seed excluded too; seed_head / seed_tail = the seed's slice")
        return text


def held_out(item_ids: np.ndarray, split: str, mode: str, splits: Mapping[str, Mapping[str, np.ndarray]]) -> HeldOut:
    """The queries of ``split`` in ``mode``.

    Args:
      item_ids: [N] corpus item ids (``FeatureSet.item_ids``).
      split: "validation" or "eval".
      mode: "user" or "item".
      splits: split name -> its columns (``FeatureSet.read_split``), for ``split`` and its
        ``EARLIER_SPLITS``.

    Raises:
      ValueError: an unknown split or mode, or targets (or seeds) missing from the corpus.
    """
    if split not in EARLIER_SPLITS:
        raise ValueError(f"held-out split must be one of {sorted(EARLIER_SPLITS)}, received {split!r}")
    check_mode(mode)
    earlier = [splits[name] for name in EARLIER_SPLITS[split]]
    seen = seen_rows(np.concatenate([e[fs.USER_ID] for e in earlier]),
                     np.concatenate([corpus_rows(item_ids, e[fs.ITEM_ID]) for e in earlier]))
    examples = select_queries(splits[split], mode)
    targets = corpus_rows(item_ids, examples[fs.ITEM_ID])
    if (targets < 0).any():
        raise ValueError(f"{int((targets < 0).sum())} {split} targets are not in the item corpus")
    empty = np.zeros(0, np.int64)
    exclude = [seen.get(user, empty) for user in examples[fs.USER_ID]]
    seeds = None
    if mode == "item":
        seeds = corpus_rows(item_ids, examples[SEED])
        if (seeds < 0).any():
            raise ValueError(f"{int((seeds < 0).sum())} {split} seed items are not in the item corpus")
        exclude = [np.append(e, s) for e, s in zip(exclude, seeds)]
    return HeldOut(split, mode, examples, targets, exclude, seeds)


def read_splits(feature_set, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{name: feature_set.read_split(name)}`` for the given split names."""
    return {name: feature_set.read_split(name) for name in names}
