"""Validating interactions against the item catalogue, and building the item corpus.

:class:`ValidateAgainstItems` joins interactions and item events with the catalogue by item id:
interactions or events of an unknown item, and second copies of an item id, become dead letters.

:class:`BuildItemCorpus` merges each item's static features with the values of its timestamped
item events (MovieLens tags) that are allowed into item features: only events strictly before the
eval period's start (the global ``time`` cutoff, whatever the split protocol) and, when events
carry a user id, not the user's own held-out (validation or eval) interactions with that item.
Every catalogue item is in the corpus, including items nobody interacted with.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from pipelines.sources import DEAD_LETTER_TAG, DeadLetter, Item

EXCLUDED_TAG = "excluded"


def position_key(position: str) -> tuple[str, int]:
    """Sort key of a ``path:line`` position (line numbers compare as numbers)."""
    path, _, line = position.rpartition(":")
    return path, int(line) if line.isdigit() else 0


class CorpusItem(NamedTuple):
    item_id: str
    features: tuple[tuple[str, tuple[str, ...]], ...]  # (feature name, values), schema order


class ValidateAgainstItems(beam.PTransform):
    """Keeps interactions and item events whose item id is in the catalogue; first copy of each item wins.

    Input: a dict ``{"items": PCollection[Item], "interactions": ..., "events": ...}`` of parsed
    records. Outputs (tagged): ``items`` (unique :class:`Item` s), ``interactions``, ``events``
    and ``dead_letter`` (unknown item ids, duplicate item ids).
    """

    def __init__(self, sources: dict[str, str]):
        """Args: sources: the source name of each input, for dead letters (keys as the input dict)."""
        super().__init__()
        self._sources = sources

    def expand(self, inputs):
        sources = self._sources

        def validate(item_id_and_groups):
            item_id, groups = item_id_and_groups
            items = sorted(groups["items"], key=lambda i: position_key(i.position))
            for duplicate in items[1:]:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    sources["items"], duplicate.position, "duplicate_item_id",
                    f"duplicate item id {item_id!r}; the first definition at {items[0].position} is kept",
                    item_id,
                ))
            for kind in ("interactions", "events"):
                for record in groups[kind]:
                    if items:
                        yield beam.pvalue.TaggedOutput(kind, record)
                    else:
                        source = getattr(record, "source", None) or sources[kind]
                        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                            source, record.position, "unknown_item_id",
                            f"item id {item_id!r} is not in the item catalogue", item_id,
                        ))
            if items:
                yield beam.pvalue.TaggedOutput("items", items[0])

        keyed = {
            kind: pcoll | f"Key{kind.title()}" >> beam.Map(lambda r: (r.item_id, r))
            for kind, pcoll in inputs.items()
        }
        return (
            keyed
            | "JoinByItem" >> beam.CoGroupByKey()
            | "Validate" >> beam.FlatMap(validate).with_outputs(
                "items", "interactions", "events", DEAD_LETTER_TAG
            )
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


def item_feature_values(item: Item | CorpusItem) -> dict[str, tuple[str, ...]]:
    return dict(item.features)
