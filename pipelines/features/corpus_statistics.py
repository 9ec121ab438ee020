"""One pass over the item corpus: vocabulary counts and the statistics of item-feature MI.

:class:`CorpusStatisticsFn` is a ``CombineFn`` over corpus items: it collects each item's feature
values as integer codes (:class:`CodedCorpus`: one code table per feature, ~150 bytes per item
instead of ~1.6 KB of Python tuples and strings, so 10M items fit in ~1.5 GB) and builds every
table once at the end with numpy (:func:`coded_value_table`, :func:`coded_joint`), instead of Beam
elements per value or per feature pair. :func:`value_table` and :func:`joint_table` are the same
definitions item by item (readable; the coded path is tested against them). Its output holds

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
from array import array
from collections.abc import Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np

from pipelines.features.mutual_information import (
    assemble_matrix, coded_joint_statistics, entropy, identifier_pair_stats,
)

HEAD_FRACTION = 0.2  # head = the top 20% of items by train frequency


def value_table(column: Sequence[tuple[str, ...]]) -> tuple[dict, dict, int, float]:
    """One feature's tables over items (the reference definition; the pipeline runs :func:`coded_value_table`).

    ``column``: each item's values, e.g. ``[("a",), ("b", "c"), ()]``.

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
    """The joint mass of two features over items (the reference definition; the pipeline runs :func:`coded_joint`).

    Pairwise deletion: items lacking either feature are skipped.

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


class CodedCorpus:
    """Corpus items as integer codes: the accumulator of :class:`CorpusStatisticsFn`.

    Per feature ``f``: ``codes[f]`` maps each value seen to its code (first seen = 0, 1, ...),
    ``values[f]`` holds every item's value codes back to back (int32) and ``ends[f][k]`` where
    item ``k``'s values end (int64); ``item_ids[k]`` is item ``k``'s id.
    """

    def __init__(self, num_features: int):
        self.item_ids: list[str] = []
        self.codes: list[dict[str, int]] = [{} for _ in range(num_features)]
        self.values = [array("i") for _ in range(num_features)]
        self.ends = [array("q") for _ in range(num_features)]

    def add(self, item_id: str, feature_values: Sequence[Sequence[str]]) -> None:
        self.item_ids.append(item_id)
        for codes, values, ends, item_values in zip(self.codes, self.values, self.ends, feature_values):
            for value in item_values:
                code = codes.get(value)
                if code is None:
                    code = codes[value] = len(codes)
                values.append(code)
            ends.append(len(values))

    def extend(self, other: "CodedCorpus") -> None:
        """Appends ``other``'s items, translating its codes into this corpus's."""
        self.item_ids.extend(other.item_ids)
        for f, other_codes in enumerate(other.codes):
            codes = self.codes[f]
            translate = np.empty(len(other_codes), np.int32)
            for value, code in other_codes.items():
                translate[code] = codes.setdefault(value, len(codes))
            offset = len(self.values[f])
            self.values[f].frombytes(translate[np.frombuffer(other.values[f], np.int32)].tobytes())
            self.ends[f].frombytes((np.frombuffer(other.ends[f], np.int64) + offset).tobytes())

    def column(self, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feature ``f``: (value codes int32 [values], start int64 [items], length int64 [items])."""
        ends = np.frombuffer(self.ends[f], np.int64)
        lengths = np.diff(ends, prepend=0)
        return np.frombuffer(self.values[f], np.int32), ends - lengths, lengths


def coded_value_table(codes: np.ndarray, lengths: np.ndarray, num_codes: int) -> tuple[np.ndarray, np.ndarray, int, float]:
    """:func:`value_table` on codes: ``(mass [num_codes], count [num_codes], support, sum of log sizes)``."""
    share = np.repeat(1.0 / np.maximum(lengths, 1), lengths)
    mass = np.bincount(codes, weights=share, minlength=num_codes)
    count = np.bincount(codes, minlength=num_codes)
    return mass, count, int((lengths > 0).sum()), float(np.log(lengths[lengths > 1]).sum())


def coded_joint(first: tuple[np.ndarray, np.ndarray, np.ndarray],
                second: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`joint_table` on codes: every (value of first, value of second) pair of every item having both.

    Args:
      first, second: :meth:`CodedCorpus.column` of two features.

    Returns:
      ``(x codes, y codes, mass of each pair = 1 / (|A| |B|), support)``: the rows of the joint.
    """
    (x_codes, x_start, x_length), (y_codes, y_start, y_length) = first, second
    items = np.flatnonzero((x_length > 0) & (y_length > 0))
    a, b = x_length[items], y_length[items]
    pairs = a * b
    item = np.repeat(np.arange(len(items)), pairs)
    position = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    b_of_pair = b[item]
    x = x_codes[x_start[items][item] + position // b_of_pair]
    y = y_codes[y_start[items][item] + position % b_of_pair]
    return x.astype(np.int64), y.astype(np.int64), 1.0 / pairs[item], len(items)


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
        return CodedCorpus(len(self._names))  # the tables are built once at the end

    def add_input(self, accumulator, item):
        features = dict(item.features)
        accumulator.add(item.item_id, [features.get(name, ()) for name in self._names])
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.extend(other)
        return merged

    def extract_output(self, accumulator):
        num_items = len(accumulator.item_ids)
        columns = [accumulator.column(f) for f in range(len(self._names))]
        feature_stats, vocab = {}, {}
        for f, name in enumerate(self._names):
            codes = accumulator.codes[f]
            mass, count, support, log_sizes = coded_value_table(columns[f][0], columns[f][2], len(codes))
            vocab[name] = sorted((value, int(count[code])) for value, code in codes.items())
            feature_stats[name] = {"entropy": entropy(mass.tolist()), "support": support,
                                   "mean_log_size": log_sizes / support if support else 0.0}
        feature_stats[self._identifier] = {"entropy": math.log(num_items) if num_items else 0.0,
                                           "support": num_items, "mean_log_size": 0.0}
        pair_stats = {}
        for (i, first), (j, second) in itertools.combinations(enumerate(self._names), 2):
            x, y, weight, support = coded_joint(columns[i], columns[j])
            if not support:
                continue
            mi, h_first, h_second = coded_joint_statistics(x, y, weight)
            pair_stats[(first, second)] = {"mi": mi, "entropy_first": h_first, "entropy_second": h_second,
                                           "support": support}
        names = (self._identifier,) + self._names
        pair_stats.update(identifier_pair_stats(self._identifier, names, feature_stats))
        return {
            "item_ids": sorted(accumulator.item_ids),
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
