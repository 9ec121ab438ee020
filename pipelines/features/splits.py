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
import itertools
import zlib
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np

from pipelines.features.interaction_batches import InteractionBatch
from recsys_ssl.schema import SPLITS, example_to_proto


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


BUCKET_SECONDS = 86_400


def _ranks_to_locate(total: int, eval_fraction: float, validation_fraction: float,
                     before_eval_range: tuple[int, int]) -> list[int]:
    """0-based ranks (in time order) whose timestamps the cutoffs of :func:`time_cutoffs` need."""
    ranks = [total - int(round(total * eval_fraction))]
    low, high = before_eval_range
    ranks += [low - int(round(low * validation_fraction)), high - int(round(high * validation_fraction))]
    return ranks


def candidate_buckets(coarse: Iterable[tuple[int, int]], eval_fraction: float, validation_fraction: float) -> set[int]:
    """Buckets whose exact timestamps decide the cutoffs (the rest can be summarised by their counts).

    ``coarse`` is a histogram ``(bucket, count)`` of ``timestamp // BUCKET_SECONDS``. The eval start
    lies in the bucket holding rank ``N - round(N e)``; the number of interactions before it is
    between the count before that bucket and that rank, and the validation rank ``m - round(m v)``
    grows with that number, so the buckets holding the two extreme validation ranks, and all
    between them, are the only other ones needed (plus the last bucket, whose last timestamp
    defines the start of an empty split).
    """
    histogram = sorted(coarse)
    cumulative, total = [], 0
    for _, count in histogram:
        total += count
        cumulative.append(total)
    if not histogram:
        return set()

    def bucket_of(rank: int) -> int | None:
        index = bisect.bisect_right(cumulative, rank)
        return index if index < len(histogram) else None

    eval_rank = total - int(round(total * eval_fraction))
    eval_index = bucket_of(eval_rank)
    if eval_index is None:
        before_eval = (total, total)
    else:
        before_eval = (cumulative[eval_index - 1] if eval_index > 0 else 0, eval_rank)
    _, low_rank, high_rank = _ranks_to_locate(total, eval_fraction, validation_fraction, before_eval)
    indices = {eval_index, len(histogram) - 1}  # the last bucket: an empty split starts after its last time
    low_index, high_index = bucket_of(low_rank), bucket_of(high_rank)
    if low_index is not None:
        indices.update(range(low_index, (high_index if high_index is not None else len(histogram) - 1) + 1))
    return {histogram[i][0] for i in indices if i is not None}


def compressed_histogram(coarse: Iterable[tuple[int, int]], fine: Iterable[tuple[int, int]],
                         candidates: set[int]) -> list[tuple[int, int]]:
    """A histogram with exact timestamps in candidate buckets and one entry per other bucket.

    Non-candidate buckets collapse to their start time: ranks inside them are never asked for,
    and their order relative to every exact timestamp is kept, so :func:`time_cutoffs` of this
    histogram equals :func:`time_cutoffs` of the full one.
    """
    result = [(bucket * BUCKET_SECONDS, count) for bucket, count in coarse if bucket not in candidates]
    return result + list(fine)


class TimeCutoffs(beam.PTransform):
    """Batches of timestamps ([n] int64 arrays) -> singleton ``(validation_start, eval_start)`` of
    the ``time`` protocol.

    Exact, in two cheap passes: a histogram of days, then a histogram of the exact timestamps of
    the few days that contain the cutoffs (:func:`candidate_buckets`); each batch contributes its
    ``np.unique`` counts.
    """

    def __init__(self, eval_fraction: float, validation_fraction: float):
        super().__init__()
        self._eval_fraction, self._validation_fraction = eval_fraction, validation_fraction

    def expand(self, timestamp_batches):
        e, v = self._eval_fraction, self._validation_fraction

        def counts(values: np.ndarray):
            keys, numbers = np.unique(values, return_counts=True)
            return zip(keys.tolist(), numbers.tolist())

        coarse = (
            timestamp_batches
            | "CountDaysInBatch" >> beam.FlatMap(lambda times: counts(times // BUCKET_SECONDS))
            | "SumDays" >> beam.CombinePerKey(sum)
            | "DayList" >> beam.combiners.ToList()
        )
        candidates = coarse | "Candidates" >> beam.Map(lambda c: candidate_buckets(c, e, v))
        fine = (
            timestamp_batches
            | "CountCandidateTimes" >> beam.FlatMap(
                lambda times, days: counts(times[np.isin(times // BUCKET_SECONDS, sorted(days))]),
                days=beam.pvalue.AsSingleton(candidates))
            | "SumTimes" >> beam.CombinePerKey(sum)
            | "TimeList" >> beam.combiners.ToList()
        )
        return (
            coarse
            | "Cutoffs" >> beam.Map(
                lambda days, times, chosen: time_cutoffs(compressed_histogram(days, times, chosen), e, v),
                times=beam.pvalue.AsSingleton(fine), chosen=beam.pvalue.AsSingleton(candidates),
            )
        )


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


USER_COUNTS_TAG, TRAIN_ITEMS_TAG, HELDOUT_PAIRS_TAG = "user_counts", "train_items", "heldout_pairs"
NUM_USER_BUCKETS = 64  # Users are hashed into this many groups; each group is one unit of work.


def user_bucket(user_id: str) -> int:
    """A user's group: a hash that is the same in every worker process (unlike ``hash``)."""
    return zlib.crc32(user_id.encode("utf-8")) % NUM_USER_BUCKETS


class BuildExamples(beam.PTransform):
    """Per user: time-ordered histories and split assignment; serialised tf.Examples.

    Input: :class:`pipelines.features.interaction_batches.InteractionBatch` es (validated interactions).
    Users are hashed into :data:`NUM_USER_BUCKETS` groups; each batch is cut into one piece per
    group, the pieces of a group are brought together (one GroupByKey over a few thousand
    elements, not one per interaction), and each group's users are processed in turn. Outputs
    (tagged), one element per group and kind:

    - ``train``, ``validation``, ``eval``: lists of serialized tf.Examples of each split;
    - ``user_counts``: a list of ``(user_id, {split: number of examples})``, one per user;
    - ``train_items``: a ``{item_id: number of train examples}`` dict;
    - ``heldout_pairs``: ``(user_id, item_id)`` of every validation / eval example, one element
      each (only when ``emit_heldout_pairs``; used to keep a user's own held-out interactions out
      of item features).

    Args:
      protocol: the split protocol.
      eval_fraction, validation_fraction: see the module docstring.
      history_length: the maximum history length.
      cutoffs: a singleton side input ``(validation_start, eval_start)`` (used by ``time``).
      emit_heldout_pairs: whether to output ``heldout_pairs``.
    """

    def __init__(self, protocol: SplitProtocol, eval_fraction: float, validation_fraction: float,
                 history_length: int, cutoffs, emit_heldout_pairs: bool = False):
        super().__init__()
        self._protocol = SplitProtocol(protocol)
        self._eval_fraction = eval_fraction
        self._validation_fraction = validation_fraction
        self._history_length = history_length
        self._cutoffs = cutoffs
        self._emit_heldout_pairs = emit_heldout_pairs

    def expand(self, batches):
        protocol, history_length = self._protocol, self._history_length
        eval_fraction, validation_fraction = self._eval_fraction, self._validation_fraction
        emit_heldout_pairs = self._emit_heldout_pairs

        def user_examples(user_id, records, cutoffs):
            """``records``: the user's ``(timestamp, item_id, weight)``, sorted. Yields (split, example, item)."""
            timestamps = [r[0] for r in records]
            item_ids = [r[1] for r in records]
            if protocol is SplitProtocol.TIME:
                validation_start, eval_start = cutoffs
                splits = ["eval" if t >= eval_start else "validation" if t >= validation_start else "train"
                          for t in timestamps]
            else:
                splits = user_time_splits(len(records), eval_fraction, validation_fraction)
            for (timestamp, item_id, weight), split, history in zip(
                    records, splits, histories(timestamps, item_ids, history_length)):
                yield split, example_to_proto(user_id, history, item_id, timestamp, weight), item_id

        def group_examples(bucket, pieces, cutoffs=None):
            batch = InteractionBatch.concatenate(list(pieces))
            weights = [None] * batch.size if batch.weights is None else batch.weights.tolist()
            # (user, timestamp, item, weight): time order, deterministic ties.
            rows = sorted(zip(batch.user_ids.tolist(), batch.timestamps.tolist(), batch.item_ids.tolist(), weights),
                          key=lambda r: (r[0], r[1], r[2], -1.0 if r[3] is None else r[3]))
            examples = {split: [] for split in SPLITS}
            train_items: dict[str, int] = {}
            user_counts = []
            for user_id, user_rows in itertools.groupby(rows, key=lambda r: r[0]):
                counts = {}
                for split, example, item_id in user_examples(user_id, [r[1:] for r in user_rows], cutoffs):
                    counts[split] = counts.get(split, 0) + 1
                    examples[split].append(example)
                    if split == "train":
                        train_items[item_id] = train_items.get(item_id, 0) + 1
                    elif emit_heldout_pairs:
                        yield beam.pvalue.TaggedOutput(HELDOUT_PAIRS_TAG, (user_id, item_id))
                user_counts.append((user_id, counts))
            for split, serialized in examples.items():
                if serialized:
                    yield beam.pvalue.TaggedOutput(split, serialized)
            yield beam.pvalue.TaggedOutput(TRAIN_ITEMS_TAG, train_items)
            yield beam.pvalue.TaggedOutput(USER_COUNTS_TAG, user_counts)

        def pieces_by_group(batch: InteractionBatch):
            groups = np.fromiter((user_bucket(u) for u in batch.user_ids), np.int64, batch.size)
            order = np.argsort(groups, kind="stable")
            bounds = np.flatnonzero(np.diff(groups[order])) + 1
            for index in np.split(order, bounds):
                if len(index):
                    yield int(groups[index[0]]), batch.select(index)

        return (
            batches
            | "PiecesByUserGroup" >> beam.FlatMap(pieces_by_group)
            | "GroupByUserGroup" >> beam.GroupByKey()
            | "GroupExamples" >> beam.FlatMapTuple(group_examples, cutoffs=beam.pvalue.AsSingleton(self._cutoffs))
            .with_outputs(*SPLITS, USER_COUNTS_TAG, TRAIN_ITEMS_TAG, HELDOUT_PAIRS_TAG)
        )


class SumCounts(beam.CombineFn):
    """``{key: count}`` dicts -> their sum (train item frequencies from :class:`BuildExamples`)."""

    def create_accumulator(self):
        return {}

    def add_input(self, total, counts):
        for key, count in counts.items():
            total[key] = total.get(key, 0) + count
        return total

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        total = next(accumulators)
        for other in accumulators:
            self.add_input(total, other)
        return total

    def extract_output(self, total):
        return total
