"""One pass over the item corpus: vocabulary counts and the statistics of item-feature MI.

:class:`CorpusStatisticsFn` is a ``CombineFn`` over corpus items (one input per item, so the
Python work per item happens inside the combiner instead of as Beam elements per value or per
feature pair). Its output holds

- ``item_ids``: every corpus item id;
- ``vocab``: per item feature, ``(value, number of items having it)``;
- ``mutual_information``: the ``item_feature_mi.json`` document (definitions in
  :mod:`pipelines.mutual_information`).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence

import apache_beam as beam

from pipelines.mutual_information import assemble_matrix, entropy, identifier_pair_stats, joint_statistics


class _Accumulator:
    __slots__ = ("item_ids", "joint", "pair_support", "mass", "count", "support", "log_sizes")

    def __init__(self):
        self.item_ids: list[str] = []
        self.joint = defaultdict(lambda: defaultdict(float))  # (f_i, f_j) -> (a, b) -> mass
        self.pair_support = defaultdict(int)  # (f_i, f_j) -> items having both
        self.mass = defaultdict(lambda: defaultdict(float))  # f -> value -> mass (1/|values| per item)
        self.count = defaultdict(lambda: defaultdict(int))  # f -> value -> items having it
        self.support = defaultdict(int)  # f -> items having it
        self.log_sizes = defaultdict(float)  # f -> sum over items of log |values|

    def __reduce__(self):  # picklable despite the lambdas: rebuild from plain dicts
        return _rebuild, ((self.item_ids, {k: dict(v) for k, v in self.joint.items()}, dict(self.pair_support),
                           {k: dict(v) for k, v in self.mass.items()}, {k: dict(v) for k, v in self.count.items()},
                           dict(self.support), dict(self.log_sizes)),)


def _rebuild(state) -> _Accumulator:
    accumulator = _Accumulator()
    item_ids, joint, pair_support, mass, count, support, log_sizes = state
    accumulator.item_ids = item_ids
    for key, table in joint.items():
        accumulator.joint[key].update(table)
    accumulator.pair_support.update(pair_support)
    for key, table in mass.items():
        accumulator.mass[key].update(table)
    for key, table in count.items():
        accumulator.count[key].update(table)
    accumulator.support.update(support)
    accumulator.log_sizes.update(log_sizes)
    return accumulator


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
        return _Accumulator()

    def add_input(self, accumulator, item):
        accumulator.item_ids.append(item.item_id)
        features = dict(item.features)
        for name in self._names:
            values = features.get(name, ())
            if not values:
                continue
            accumulator.support[name] += 1
            accumulator.log_sizes[name] += math.log(len(values))
            share = 1.0 / len(values)
            mass, count = accumulator.mass[name], accumulator.count[name]
            for value in values:
                mass[value] += share
                count[value] += 1
        for first, second in itertools.combinations(self._names, 2):
            values_i, values_j = features.get(first, ()), features.get(second, ())
            if not values_i or not values_j:
                continue
            accumulator.pair_support[(first, second)] += 1
            share = 1.0 / (len(values_i) * len(values_j))
            table = accumulator.joint[(first, second)]
            for a in values_i:
                for b in values_j:
                    table[(a, b)] += share
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.item_ids.extend(other.item_ids)
            for key, table in other.joint.items():
                target = merged.joint[key]
                for cell, mass in table.items():
                    target[cell] += mass
            for tables, others in ((merged.mass, other.mass), (merged.count, other.count)):
                for key, table in others.items():
                    target = tables[key]
                    for value, amount in table.items():
                        target[value] += amount
            for totals, others in ((merged.pair_support, other.pair_support), (merged.support, other.support),
                                   (merged.log_sizes, other.log_sizes)):
                for key, amount in others.items():
                    totals[key] += amount
        return merged

    def extract_output(self, accumulator):
        num_items = len(accumulator.item_ids)
        feature_stats = {
            name: {"entropy": entropy(accumulator.mass[name].values()), "support": accumulator.support[name],
                   "mean_log_size": accumulator.log_sizes[name] / accumulator.support[name]
                   if accumulator.support[name] else 0.0}
            for name in self._names
        }
        feature_stats[self._identifier] = {"entropy": math.log(num_items) if num_items else 0.0,
                                           "support": num_items, "mean_log_size": 0.0}
        pair_stats = {}
        for pair, table in accumulator.joint.items():
            mi, h_first, h_second = joint_statistics(table)
            pair_stats[pair] = {"mi": mi, "entropy_first": h_first, "entropy_second": h_second,
                                "support": accumulator.pair_support[pair]}
        names = (self._identifier,) + self._names
        pair_stats.update(identifier_pair_stats(self._identifier, names, feature_stats))
        return {
            "item_ids": sorted(accumulator.item_ids),
            "vocab": {name: sorted(accumulator.count[name].items()) for name in self._names},
            "mutual_information": assemble_matrix(names, pair_stats, feature_stats),
        }
