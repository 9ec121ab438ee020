"""Train / validation / eval splits and leakage-free query histories.

Two protocols (``--split``):

- ``time``: one global cutoff. The last ``eval_fraction`` of all interactions by time form the
  eval set; the last ``validation_fraction`` of the remaining (training-period) interactions form
  the validation set. Interactions sharing the cutoff's timestamp go to the later split, so no
  example of an earlier split happens at or after a later split's start. The production protocol.
- ``user_time``: per user, the last ``floor(n * eval_fraction)`` interactions by time are eval and
  the last ``floor(m * validation_fraction)`` of the user's remaining ``m`` are validation. The
  protocol for small public data sets, where a global cutoff leaves too few eval users.

Histories: the items of the same user with a timestamp *strictly before* the interaction's
(equal timestamps are not "before"), oldest first, the most recent ``history_length`` of them.
Histories use every earlier interaction of the user whatever its split: at serving time the
user's past is known; only the future is excluded.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence

import apache_beam as beam

from recsys_ssl.schema import example_to_proto


class SplitProtocol(str, enum.Enum):
    TIME = "time"
    USER_TIME = "user_time"


def time_cutoffs(timestamp_counts: Iterable[tuple[int, int]], eval_fraction: float,
                 validation_fraction: float) -> tuple[int, int]:
    """Global cutoffs of the ``time`` protocol from a histogram of timestamps.

    Args:
      timestamp_counts: ``(timestamp, number of interactions)`` pairs, any order.
      eval_fraction: share of all interactions that form the eval set (by time).
      validation_fraction: share of the pre-eval interactions that form the validation set.

    Returns:
      ``(validation_start, eval_start)``: an interaction at time ``t`` is eval if
      ``t >= eval_start``, validation if ``validation_start <= t < eval_start``, else train.
      With a zero fraction the start is past the last timestamp (an empty split).
    """
    histogram = sorted(timestamp_counts)
    if not histogram:
        return 0, 0
    times = [t for t, _ in histogram]
    cumulative = []  # cumulative[i]: number of interactions at or before times[i]
    total = 0
    for _, count in histogram:
        total += count
        cumulative.append(total)

    def start_of_last(fraction: float, population: int, empty_start: int) -> int:
        """Time of the first interaction in the last ``fraction`` of the ``population`` earliest."""
        rank = population - int(round(population * fraction))  # 0-based rank of that interaction
        if rank >= population:
            return empty_start
        return times[bisect.bisect_right(cumulative, rank)]

    eval_start = start_of_last(eval_fraction, total, empty_start=times[-1] + 1)
    before_eval = cumulative[bisect.bisect_left(times, eval_start) - 1] if eval_start > times[0] else 0
    validation_start = start_of_last(validation_fraction, before_eval, empty_start=eval_start)
    return validation_start, eval_start


def user_time_splits(num_interactions: int, eval_fraction: float, validation_fraction: float) -> list[str]:
    """Split names for a user's ``num_interactions`` time-ordered interactions (``user_time``)."""
    num_eval = int(num_interactions * eval_fraction)
    num_validation = int((num_interactions - num_eval) * validation_fraction)
    num_train = num_interactions - num_eval - num_validation
    return ["train"] * num_train + ["validation"] * num_validation + ["eval"] * num_eval


def histories(timestamps: Sequence[int], item_ids: Sequence[str], history_length: int) -> list[list[str]]:
    """For each interaction of one user, the items strictly before it in time (oldest first).

    Args:
      timestamps: the user's interaction times, sorted ascending.
      item_ids: the items, aligned with ``timestamps``.
      history_length: the maximum number of (most recent) items kept.

    Returns:
      ``histories[i]``: up to ``history_length`` items ``item_ids[j]`` with ``timestamps[j] <
      timestamps[i]``, in time order.
    """
    result = []
    for i, t in enumerate(timestamps):
        end = bisect.bisect_left(timestamps, t)  # first index with timestamps[j] >= t
        start = max(0, end - history_length)
        result.append(list(item_ids[start:end]))
    return result


class BuildExamples(beam.PTransform):
    """Per user: time-ordered histories and split assignment; serialised tf.Examples.

    Input: :class:`Interaction` records (already validated). Output: ``(split, user_id, item_id,
    serialized tf.Example)`` tuples.

    Args:
      protocol: the split protocol.
      eval_fraction, validation_fraction: see the module docstring.
      history_length: the maximum history length.
      cutoffs: for ``time``, a singleton side input ``(validation_start, eval_start)``.
    """

    def __init__(self, protocol: SplitProtocol, eval_fraction: float, validation_fraction: float,
                 history_length: int, cutoffs=None):
        super().__init__()
        self._protocol = SplitProtocol(protocol)
        self._eval_fraction = eval_fraction
        self._validation_fraction = validation_fraction
        self._history_length = history_length
        self._cutoffs = cutoffs

    def expand(self, interactions):
        protocol, history_length = self._protocol, self._history_length
        eval_fraction, validation_fraction = self._eval_fraction, self._validation_fraction

        def user_examples(user_and_interactions, cutoffs=None):
            user_id, records = user_and_interactions
            records = sorted(records, key=lambda r: (r.timestamp, r.item_id, r.position))
            timestamps = [r.timestamp for r in records]
            item_ids = [r.item_id for r in records]
            if protocol is SplitProtocol.TIME:
                validation_start, eval_start = cutoffs
                splits = ["eval" if t >= eval_start else "validation" if t >= validation_start else "train"
                          for t in timestamps]
            else:
                splits = user_time_splits(len(records), eval_fraction, validation_fraction)
            for record, split, history in zip(records, splits, histories(timestamps, item_ids, history_length)):
                yield split, user_id, record.item_id, example_to_proto(
                    user_id, history, record.item_id, record.timestamp, record.weight
                )

        keyed = interactions | "KeyByUser" >> beam.Map(lambda r: (r.user_id, r))
        grouped = keyed | "GroupByUser" >> beam.GroupByKey()
        if protocol is SplitProtocol.TIME:
            return grouped | "UserExamples" >> beam.FlatMap(
                user_examples, cutoffs=beam.pvalue.AsSingleton(self._cutoffs)
            )
        return grouped | "UserExamples" >> beam.FlatMap(user_examples)

