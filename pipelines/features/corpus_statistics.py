"""One pass over the item corpus: vocabulary counts and the statistics of item-feature MI.

:class:`CorpusStatisticsFn` is a ``CombineFn`` over corpus items: it collects each item's feature
values and builds every table once at the end (:func:`value_table`, :func:`joint_table`, with
``Counter`` passes for single-valued features), instead of Beam elements per value or per feature
pair. Its output holds

- ``item_ids``: every corpus item id;
- ``vocab``: per item feature, ``(value, number of items having it)``;
- ``mutual_information``: the ``item_feature_mi.json`` document (definitions in
  :mod:`pipelines.features.mutual_information`).

Also the corpus statistics written beside it: vocabulary files (:func:`vocabulary_text`) and the
head/tail split of the items by train frequency (:func:`head_tail`).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import apache_beam as beam

from pipelines.features.mutual_information import assemble_matrix, entropy, identifier_pair_stats, joint_statistics

HEAD_FRACTION = 0.2  # head = the top 20% of items by train frequency


def value_table(column: Sequence[tuple[str, ...]]) -> tuple[dict, dict, int, float]:
    """One feature's tables over items: each item's values, e.g. ``[("a",), ("b", "c"), ()]``.

    Returns:
      ``(mass, count, support, sum of log sizes)``: ``mass[v]`` sums ``1 / |values|`` over the items
      having ``v``; ``count[v]`` counts them; ``support`` counts items with any value.
    """
    count = collections.Counter(values[0] for values in column if len(values) == 1)
    mass = {value: float(n) for value, n in count.items()}
    support, log_sizes = sum(count.values()), 0.0
    for values in column:
        if len(values) > 1:
            support += 1
            log_sizes += math.log(len(values))
            share = 1.0 / len(values)
            for value in values:
                mass[value] = mass.get(value, 0.0) + share
                count[value] += 1
    return mass, dict(count), support, log_sizes


def joint_table(first: Sequence[tuple[str, ...]], second: Sequence[tuple[str, ...]]) -> tuple[dict, int]:
    """The joint mass of two features over items (pairwise deletion: items lacking either are skipped).

    An item with values ``A`` and ``B`` adds ``1 / (|A| |B|)`` to every ``(a, b)``; single-valued
    pairs are counted in one ``Counter`` pass.

    Returns:
      ``({(a, b): mass}, number of items having both features)``.
    """
    single = collections.Counter((x[0], y[0]) for x, y in zip(first, second) if len(x) == 1 and len(y) == 1)
    table = {cell: float(n) for cell, n in single.items()}
    support = sum(single.values())
    for values_i, values_j in zip(first, second):
        if not values_i or not values_j or (len(values_i) == 1 and len(values_j) == 1):
            continue
        support += 1
        share = 1.0 / (len(values_i) * len(values_j))
        for a in values_i:
            for b in values_j:
                table[(a, b)] = table.get((a, b), 0.0) + share
    return table, support


class CorpusStatisticsFn(beam.CombineFn):
    """Corpus items -> ``{"item_ids", "vocab", "mutual_information"}`` (see the module docstring).

    Args:
      feature_names: the item features (without the identifier), schema order.
      identifier: the identifier feature's name (``item_id``), first in the MI matrix.
    """

    def __init__(self, feature_names: Sequence[str], identifier: str = "item_id"):
        self._names = tuple(feature_names)
        self._identifier = identifier

    def create_accumulator(self):
        return []  # (item_id, (values of each feature)) per item; the tables are built once at the end.

    def add_input(self, accumulator, item):
        features = dict(item.features)
        accumulator.append((item.item_id, tuple(tuple(features.get(name, ())) for name in self._names)))
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.extend(other)
        return merged

    def extract_output(self, accumulator):
        item_ids = [item_id for item_id, _ in accumulator]
        columns = dict(zip(self._names, zip(*(values for _, values in accumulator)))) if accumulator \
            else {name: () for name in self._names}
        num_items = len(item_ids)
        feature_stats, vocab = {}, {}
        for name in self._names:
            mass, count, support, log_sizes = value_table(columns[name])
            vocab[name] = sorted(count.items())
            feature_stats[name] = {"entropy": entropy(mass.values()), "support": support,
                                   "mean_log_size": log_sizes / support if support else 0.0}
        feature_stats[self._identifier] = {"entropy": math.log(num_items) if num_items else 0.0,
                                           "support": num_items, "mean_log_size": 0.0}
        pair_stats = {}
        for first, second in itertools.combinations(self._names, 2):
            table, support = joint_table(columns[first], columns[second])
            if not support:
                continue
            mi, h_first, h_second = joint_statistics(table)
            pair_stats[(first, second)] = {"mi": mi, "entropy_first": h_first, "entropy_second": h_second,
                                           "support": support}
        names = (self._identifier,) + self._names
        pair_stats.update(identifier_pair_stats(self._identifier, names, feature_stats))
        return {
            "item_ids": sorted(item_ids),
            "vocab": vocab,
            "mutual_information": assemble_matrix(names, pair_stats, feature_stats),
        }


def vocabulary_text(counts: Iterable[tuple[str, int]]) -> str:
    """``value<TAB>count`` lines, most frequent first, ties by value (a deterministic order)."""
    ordered = sorted(counts, key=lambda vc: (-vc[1], vc[0]))
    for value, _ in ordered:
        if "\t" in value or "\n" in value or "\r" in value:
            raise ValueError(f"vocabulary values may not contain tabs or newlines, received {value!r}")
    return "".join(f"{value}\t{count}\n" for value, count in ordered)


def head_tail(frequencies: Mapping[str, int], head_fraction: float = HEAD_FRACTION) -> dict:
    """The head/tail split of the item corpus by train frequency.

    Head: the ``ceil(head_fraction * num_items)`` most frequent items (ties broken by item id),
    restricted to items with at least one train interaction. Tail: every other corpus item,
    including items never seen in training.

    Returns:
      ``{"head_fraction", "num_head_items", "num_tail_items", "head_min_frequency",
      "head_interaction_share", "head_items"}`` (head items sorted by id).
    """
    ranked = sorted(frequencies.items(), key=lambda kv: (-kv[1], kv[0]))
    size = math.ceil(head_fraction * len(ranked))
    head = [item for item, count in ranked[:size] if count > 0]
    total = sum(frequencies.values())
    head_total = sum(frequencies[item] for item in head)
    return {
        "head_fraction": head_fraction,
        "num_head_items": len(head),
        "num_tail_items": len(ranked) - len(head),
        "head_min_frequency": min((frequencies[i] for i in head), default=0),
        "head_interaction_share": head_total / total if total else 0.0,
        "head_items": sorted(head),
    }
