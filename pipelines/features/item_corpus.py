"""Validating records against the item catalogue, and building the item corpus.

:class:`DeduplicateItems` keeps the first definition (by position) of every item id; later copies
are dead letters. :class:`KeepKnownItems` routes records (interactions, item events) whose item id
is not in the catalogue to dead letters. The catalogue's ids reach the workers as a side input: a
retrieval corpus is held in memory by the model and its index anyway, so its ids fit in a
worker's memory, and the log itself is never shuffled for this check.

:class:`BuildItemCorpus` merges each item's static features with the values of its timestamped
item events (MovieLens tags) that are allowed into item features: only events strictly before the
eval period's start (the global ``time`` cutoff, whatever the split protocol) and, when events
carry a user id, not the user's own held-out (validation or eval) interactions with that item.
Every catalogue item is in the corpus, including items nobody interacted with.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import apache_beam as beam

from pipelines.io.records import COUNTS_TAG, DEAD_LETTER_TAG, DeadLetter, bundle_count

EXCLUDED_TAG = "excluded"


def position_key(position: str) -> tuple[str, int]:
    """Sort key of a ``path@offset`` position (offsets compare as numbers)."""
    path, _, offset = position.rpartition("@")
    return path, int(offset) if offset.isdigit() else 0


def _as_json(record: NamedTuple) -> str:
    """The parsed record as JSON: dead letters rejected after parsing keep every parsed field."""
    return json.dumps(record._asdict(), ensure_ascii=False)


class CorpusItem(NamedTuple):
    item_id: str
    features: tuple[tuple[str, tuple[str, ...]], ...]  # (feature name, values), schema order


class DeduplicateItems(beam.PTransform):
    """Parsed :class:`Item` s -> unique items (main output) and ``dead_letter`` (later copies)."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    def expand(self, items):
        source = self._source

        def first_wins(item_id, copies):
            copies = sorted(copies, key=lambda i: position_key(i.position))
            for duplicate in copies[1:]:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    source, duplicate.position, "duplicate_item_id",
                    f"duplicate item id {item_id!r}; the first definition at {copies[0].position} is kept",
                    _as_json(duplicate),
                ))
            yield copies[0]

        return (
            items
            | "KeyById" >> beam.Map(lambda i: (i.item_id, i))
            | "GroupById" >> beam.GroupByKey()
            | "FirstWins" >> beam.FlatMapTuple(first_wins).with_outputs(DEAD_LETTER_TAG, main="items")
        )


def unknown_item_dead_letter(source: str, record: NamedTuple) -> DeadLetter:
    """The dead letter of a parsed record whose ``item_id`` is not in the catalogue."""
    return DeadLetter(source, record.position, "unknown_item_id",
                      f"item id {record.item_id!r} is not in the item catalogue", _as_json(record))


class _KeepKnownDoFn(beam.DoFn):
    def __init__(self, source: str):
        self._source = source

    def start_bundle(self):
        self._accepted = 0

    def process(self, record, known):
        if record.item_id in known:
            self._accepted += 1
            yield record
        else:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, unknown_item_dead_letter(self._source, record))

    def finish_bundle(self):
        if self._accepted:
            yield bundle_count(f"accepted:{self._source}", self._accepted)


class KeepKnownItems(beam.PTransform):
    """Records with an ``item_id`` in the catalogue pass; the others become ``unknown_item_id`` dead letters.

    Args:
      source: the records' source name, for dead letters and counts.
      known_ids: a ``beam.pvalue.AsDict`` side input whose keys are the catalogue's item ids.

    Outputs: ``known``, ``dead_letter`` and ``counts`` (``("accepted:<source>", n)`` per bundle).
    """

    def __init__(self, source: str, known_ids):
        super().__init__()
        self._source, self._known_ids = source, known_ids

    def expand(self, records):
        return records | "CheckItemId" >> beam.ParDo(_KeepKnownDoFn(self._source), known=self._known_ids).with_outputs(
            DEAD_LETTER_TAG, COUNTS_TAG, main="known"
        )


class BuildItemCorpus(beam.PTransform):
    """Merges item events into item features; outputs :class:`CorpusItem` s and excluded events.

    Args:
      cutoffs: singleton side input ``(validation_start, eval_start)`` of the global time split;
        events at or after ``eval_start`` are excluded.
      heldout_pairs: ``(user_id, item_id)`` pairs of validation and eval examples; events by that
        user on that item are excluded.
      feature_names: the item features in schema order.

    Input: ``{"items": PCollection[Item], "events": PCollection[ItemEvent]}``. Outputs (tagged):
    ``corpus`` and ``excluded`` (``(reason, event)`` pairs, counted in stats).
    """

    def __init__(self, cutoffs, heldout_pairs, feature_names: tuple[str, ...]):
        super().__init__()
        self._cutoffs = cutoffs
        self._heldout_pairs = heldout_pairs
        self._feature_names = feature_names

    def expand(self, inputs):
        feature_names = self._feature_names

        def after_cutoff(event, cutoffs):
            if event.timestamp >= cutoffs[1]:
                yield beam.pvalue.TaggedOutput(EXCLUDED_TAG, ("after_eval_start", event))
            else:
                yield event

        timely = inputs["events"] | "ExcludeAfterEvalStart" >> beam.FlatMap(
            after_cutoff, cutoffs=beam.pvalue.AsSingleton(self._cutoffs)
        ).with_outputs(EXCLUDED_TAG, main="kept")

        def not_heldout(pair_and_groups):
            _, groups = pair_and_groups
            heldout = bool(groups["heldout"])
            for event in groups["events"]:
                if heldout:
                    yield beam.pvalue.TaggedOutput(EXCLUDED_TAG, ("heldout_user_item_pair", event))
                else:
                    yield event

        with_users = timely.kept | "EventsWithUser" >> beam.Filter(lambda e: e.user_id is not None)
        without_users = timely.kept | "EventsWithoutUser" >> beam.Filter(lambda e: e.user_id is None)
        pair_checked = (
            {
                "events": with_users | "KeyEventByPair" >> beam.Map(lambda e: ((e.user_id, e.item_id), e)),
                "heldout": self._heldout_pairs | "KeyHeldout" >> beam.Map(lambda p: (p, None)),
            }
            | "JoinHeldoutPairs" >> beam.CoGroupByKey()
            | "ExcludeHeldoutPairs" >> beam.FlatMap(not_heldout).with_outputs(EXCLUDED_TAG, main="kept")
        )
        kept_events = (pair_checked.kept, without_users) | "KeptEvents" >> beam.Flatten()

        def merge(item_id_and_groups):
            item_id, groups = item_id_and_groups
            (item,) = groups["items"]
            values = {name: list(vals) for name, vals in item.features}
            for event in sorted(groups["events"], key=lambda e: (e.timestamp, e.value)):
                if event.value not in values[event.feature]:
                    values[event.feature].append(event.value)
            return CorpusItem(item_id, tuple((name, tuple(values[name])) for name in feature_names))

        corpus = (
            {
                "items": inputs["items"] | "KeyItems" >> beam.Map(lambda i: (i.item_id, i)),
                "events": kept_events | "KeyEvents" >> beam.Map(lambda e: (e.item_id, e)),
            }
            | "JoinEvents" >> beam.CoGroupByKey()
            | "MergeFeatures" >> beam.Map(merge)
        )
        excluded = (timely[EXCLUDED_TAG], pair_checked[EXCLUDED_TAG]) | "Excluded" >> beam.Flatten()
        return {"corpus": corpus, "excluded": excluded}

