"""Feature pipeline: interaction logs -> everything the two-tower models train on.

Usage (locally, in-process)::

  python -m pipelines features --input_format movielens --output_dir runs/features --split user_time
  python -m pipelines features --input_format interactions --input my_logs/ --output_dir runs/features --split time

With ``--direct_num_workers=2 --direct_running_mode=multi_processing`` it uses two local worker
processes; any other standard Beam option passes through (``--runner=DataflowRunner --project ...
--region ... --temp_location gs://...``, ``--runner=FlinkRunner``, ``--runner=SparkRunner``).

Outputs in ``--output_dir`` (the artefact contract of DESIGN.md; names in ``recsys_ssl.schema``):
``{train,validation,eval}-*.tfrecord.gz`` (one tf.Example per positive interaction: user_id,
history, item_id, timestamp, weight), ``items-*.tfrecord.gz`` (every catalogue item with all its
features), ``vocab/<feature>.txt``, ``schema.json``, ``stats.json``, ``item_feature_mi.json`` and
``dead_letter/`` (rejected rows with source, position and reason).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Literal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core import cli
from pipelines.beam_args import DEFAULT_MAX_REJECT_FRACTION, check_reject_fraction, rejection_problem, unknown_arguments
from pipelines.features.corpus_statistics import HEAD_FRACTION, CorpusStatisticsFn, head_tail, vocabulary_text
from pipelines.io.writers import WriteJson, WriteTFRecordBatches, WriteTFRecords, write_text
from pipelines.io.input_schema import INPUT_SCHEMA_FILE, check_input_columns
from pipelines.features.interaction_batches import BATCH_LINES, ParseInteractionBatches
from pipelines.features.item_corpus import BuildItemCorpus, CorpusItem, DeduplicateItems, KeepKnownItems
from pipelines.features.movielens import DEFAULT_SUBDIR, movielens_input_spec
from pipelines.io.records import (
    COUNTS_TAG, DEAD_LETTER_TAG, InputSpec, ParseRecords, ReadSourceLines, interaction_parser, item_event_parser,
    item_parser,
)
from pipelines.features.splits import (
    HELDOUT_PAIRS_TAG, TRAIN_ITEMS_TAG, USER_COUNTS_TAG, BuildExamples, SplitProtocol, SumCounts, TimeCutoffs,
)
from recsys_ssl import schema as fs

SOURCE_INTERACTIONS, SOURCE_ITEMS, SOURCE_EVENTS = "interactions", "items", "item_events"


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """``python -m pipelines features``: the job's own flags (Beam's pipeline options pass through)."""

    output_dir: str = cli.output_dir_flag("where the feature directory is written")
    input_format: Literal["movielens", "interactions"] = cli.flag(
        "movielens (ratings/movies/tags CSVs) or interactions (the generic format declared by "
        f"{INPUT_SCHEMA_FILE})", default="movielens")
    input: str | None = cli.flag(
        f"the input data set directory: movielens: an ml-latest(-small) directory (default "
        f"DATA_DIR/{DEFAULT_SUBDIR}); interactions: a directory holding {INPUT_SCHEMA_FILE}",
        default=None, must_exist="dir", metavar="DIR")
    data_dir: str | None = cli.data_dir_flag()
    input_schema: str | None = cli.flag(
        f"interactions: the input schema file (default INPUT/{INPUT_SCHEMA_FILE})", default=None,
        must_exist="file", metavar="FILE")
    split: SplitProtocol = cli.flag(
        "time: a global cutoff, the last --eval_fraction of interactions by time (production); "
        "user_time: the last fraction of each user's interactions (small public data)",
        default=SplitProtocol.USER_TIME)
    eval_fraction: float = cli.flag("share of interactions held out for evaluation", default=0.1)
    validation_fraction: float = cli.flag(
        "share of the training period held out for validation (same protocol)", default=0.1)
    history_length: int = cli.flag("items of history per example (the most recent before it)", default=20)
    min_rating: float | None = cli.flag(
        "keep interactions with weight >= this as positives (default: all)", default=None)
    head_fraction: float = cli.flag("head = this share of items, the most frequent in training",
                                    default=HEAD_FRACTION)
    max_reject_fraction: float = cli.flag(
        "fail (exit 1) when a source rejects all, or more than this fraction, of its rows",
        default=DEFAULT_MAX_REJECT_FRACTION)

    def __post_init__(self):
        for name in ("eval_fraction", "validation_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), received {value}")
        if not 0.0 < self.head_fraction < 1.0:
            raise ValueError(f"--head_fraction must be in (0, 1), received {self.head_fraction}")
        if self.history_length < 1:
            raise ValueError(f"--history_length must be >= 1, received {self.history_length}")
        check_reject_fraction(self.max_reject_fraction)


def build_pipeline(pipeline: beam.Pipeline, spec: InputSpec, options: FeatureOptions) -> None:
    """Adds every step of the feature pipeline to ``pipeline`` (see the module docstring)."""
    out = options.output_dir.rstrip("/")
    feature_names = tuple(column.name for column in spec.item_features)
    schema = fs.FeatureSchema(
        item_features=(fs.FeatureSpec(fs.ITEM_ID, identifier=True),)
        + tuple(fs.FeatureSpec(c.name, multivalent=c.multivalent) for c in spec.item_features),
        history_length=options.history_length,
        has_weight=spec.weight_column is not None,
    )
    if options.min_rating is not None and spec.weight_column is None:
        raise ValueError("--min_rating needs interactions with a weight column")
    counts, dead_letters = [], []

    # 1. Items: parse, keep the first definition of every id. Their ids are a side input below.
    parsed_items = (
        pipeline | "ReadItems" >> ReadSourceLines(SOURCE_ITEMS, spec.items_path)
        | "ParseItems" >> ParseRecords(item_parser(spec))
    )
    unique_items = parsed_items.records | "DeduplicateItems" >> DeduplicateItems(SOURCE_ITEMS)
    items = unique_items["items"]
    known_ids = beam.pvalue.AsSingleton(
        items | "ItemIds" >> beam.Map(lambda i: i.item_id) | "AllItemIds" >> beam.combiners.ToList()
        | "ItemIdSet" >> beam.Map(frozenset))
    counts.append(parsed_items[COUNTS_TAG])
    dead_letters += [parsed_items[DEAD_LETTER_TAG], unique_items[DEAD_LETTER_TAG]]

    # 2. Interactions, in blocks of lines (the hot path; see pipelines/interaction_batches.py): parse and
    #    check item ids into column batches; bad rows are dead letters. Item events, record by record.
    interactions = (
        pipeline | "ReadInteractions" >> ReadSourceLines(SOURCE_INTERACTIONS, spec.interactions_path, BATCH_LINES)
        | "ParseInteractions" >> ParseInteractionBatches(
            SOURCE_INTERACTIONS, interaction_parser(spec),
            (spec.user_id_column, spec.item_id_column, spec.timestamp_column, spec.weight_column), known_ids)
    )
    counts.append(interactions[COUNTS_TAG])
    dead_letters.append(interactions[DEAD_LETTER_TAG])
    event_records = []
    for index, event_spec in enumerate(spec.item_events):
        parsed = (
            pipeline | f"ReadEvents{index}" >> ReadSourceLines(SOURCE_EVENTS, event_spec["path"])
            | f"ParseEvents{index}" >> ParseRecords(item_event_parser(event_spec, spec))
        )
        event_records.append(parsed.records)
        counts.append(parsed[COUNTS_TAG])
        dead_letters.append(parsed[DEAD_LETTER_TAG])
    has_events = bool(event_records)
    if has_events:
        events = event_records | "AllEvents" >> beam.Flatten() | "KnownEvents" >> KeepKnownItems(SOURCE_EVENTS, known_ids)
        counts.append(events[COUNTS_TAG])
        dead_letters.append(events[DEAD_LETTER_TAG])

    # 3. Positive interactions, global time cutoffs, examples with histories and splits.
    min_rating = options.min_rating
    positives = interactions.batches
    if min_rating is not None:
        positives = (positives | "Positives" >> beam.Map(lambda b: b.select(b.weights >= min_rating))
                     | "NonEmpty" >> beam.Filter(lambda b: b.size > 0))
    cutoffs = (
        positives | "Timestamps" >> beam.Map(lambda b: b.timestamps)
        | "TimeCutoffs" >> TimeCutoffs(options.eval_fraction, options.validation_fraction)
    )
    examples = positives | "BuildExamples" >> BuildExamples(
        options.split, options.eval_fraction, options.validation_fraction, options.history_length, cutoffs,
        emit_heldout_pairs=has_events,
    )
    for split in fs.SPLITS:
        _ = examples[split] | f"Write{split.title()}" >> WriteTFRecordBatches(f"{out}/{split}", fs.TFRECORD_SUFFIX)

    # 4. The item corpus: every catalogue item with its features (events before the eval period).
    if has_events:
        corpus_outputs = {"items": items, "events": events.known} | "ItemCorpus" >> BuildItemCorpus(
            cutoffs, examples[HELDOUT_PAIRS_TAG], feature_names)
        corpus, excluded = corpus_outputs["corpus"], corpus_outputs["excluded"]
    else:
        corpus = items | "ItemCorpus" >> beam.Map(lambda i: CorpusItem(i.item_id, i.features))
        excluded = pipeline | "NoExcludedEvents" >> beam.Create([])
    _ = (
        corpus
        | "SerializeItems" >> beam.Map(lambda item: fs.item_to_proto(item.item_id, dict(item.features)))
        | "WriteItems" >> WriteTFRecords(f"{out}/{fs.ITEMS_PREFIX}", fs.TFRECORD_SUFFIX)
    )

    # 5. One pass of corpus statistics (vocabularies, MI), train frequencies, and the small files.
    corpus_stats = corpus | "CorpusStatistics" >> beam.CombineGlobally(
        CorpusStatisticsFn(feature_names, identifier=fs.ITEM_ID))
    train_item_counts = beam.pvalue.AsSingleton(
        examples[TRAIN_ITEMS_TAG] | "CountTrainItems" >> beam.CombineGlobally(SumCounts()))
    train_user_counts = beam.pvalue.AsList(
        examples[USER_COUNTS_TAG]
        | "TrainUsers" >> beam.FlatMap(lambda users: [(user, n["train"]) for user, n in users if n.get("train")]))
    _ = corpus_stats | "WriteCorpusFiles" >> beam.Map(
        write_corpus_files, out, train_item_counts=train_item_counts, train_user_counts=train_user_counts)

    # 6. Dead letters, stats (read = accepted + rejected, per source) and schema.
    all_dead = dead_letters | "AllDeadLetters" >> beam.Flatten()
    _ = (
        all_dead
        | "DeadLetterJson" >> beam.Map(lambda d: d.to_json())
        | "WriteDeadLetters" >> beam.io.WriteToText(f"{out}/{fs.DEAD_LETTER_DIR}/rejected", file_name_suffix=".jsonl")
    )
    rejected = all_dead | "RejectedCounts" >> beam.Map(lambda d: (f"rejected:{d.source}:{d.kind}", 1))
    excluded_counts = excluded | "ExcludedCounts" >> beam.Map(lambda reason_event: (f"excluded:{reason_event[0]}", 1))
    totals = (
        (counts + [rejected, excluded_counts]) | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
    )
    split_totals = (
        examples[USER_COUNTS_TAG]
        | "SplitUserCounts" >> beam.FlatMap(lambda users: [pair for _, n in users for pair in n.items()])
        | "SumSplitUsers" >> beam.CombineGlobally(_SplitTotals())
    )
    _ = (
        corpus_stats
        | "AssembleStats" >> beam.Map(
            lambda stats, **kw: assemble_stats(options, stats["item_ids"], **kw),
            totals=beam.pvalue.AsDict(totals), splits=beam.pvalue.AsSingleton(split_totals),
            train_item_counts=train_item_counts, cutoffs=beam.pvalue.AsSingleton(cutoffs))
        | "WriteStats" >> WriteJson(f"{out}/{fs.STATS_FILE}")
    )
    _ = pipeline | "Schema" >> beam.Create([schema.to_json()]) | "WriteSchema" >> WriteJson(f"{out}/{fs.SCHEMA_FILE}")


def write_corpus_files(corpus_stats: dict, out: str, train_item_counts: dict, train_user_counts: list) -> None:
    """Writes ``vocab/*.txt`` (item features, item_id with train counts, user_id) and the MI document."""
    vocab_dir = f"{out}/{fs.VOCAB_DIR}"
    for name, value_counts in corpus_stats["vocab"].items():
        write_text(f"{vocab_dir}/{name}.txt", vocabulary_text(value_counts))
    write_text(f"{vocab_dir}/{fs.ITEM_ID}.txt",
               vocabulary_text((item_id, train_item_counts.get(item_id, 0)) for item_id in corpus_stats["item_ids"]))
    write_text(f"{vocab_dir}/{fs.USER_ID}.txt", vocabulary_text(train_user_counts))
    write_text(f"{out}/{fs.MI_FILE}", json.dumps(corpus_stats["mutual_information"], indent=1, sort_keys=True) + "\n")


class _SplitTotals(beam.CombineFn):
    """``(split, examples of one user)`` -> ``{split: {"examples": total, "users": users with any}}``."""

    def create_accumulator(self):
        return {}

    def add_input(self, totals, split_and_count):
        split, count = split_and_count
        examples, users = totals.get(split, (0, 0))
        totals[split] = (examples + count, users + 1)
        return totals

    def merge_accumulators(self, accumulators):
        merged = {}
        for totals in accumulators:
            for split, (examples, users) in totals.items():
                old = merged.get(split, (0, 0))
                merged[split] = (old[0] + examples, old[1] + users)
        return merged

    def extract_output(self, totals):
        return {split: {"examples": totals.get(split, (0, 0))[0], "users": totals.get(split, (0, 0))[1]}
                for split in fs.SPLITS}


def assemble_stats(options: FeatureOptions, item_ids: list[str], totals: dict, splits: dict,
                   train_item_counts: dict, cutoffs: tuple[int, int]) -> dict:
    """Builds ``stats.json``: per-source counts (read = accepted + rejected), splits, head/tail.

    ``totals`` holds the pipeline's independent counts: ``read:<source>`` (lines parsed),
    ``accepted:<source>`` (records that passed every check), ``rejected:<source>:<kind>`` (dead
    letters) and ``excluded:<reason>`` (item events kept out of item features).
    """
    sources = {}
    read = {key.split(":", 1)[1]: n for key, n in totals.items() if key.startswith("read:")}
    read.setdefault(SOURCE_INTERACTIONS, 0)  # An empty source is reported (and fails the job), not skipped.
    read.setdefault(SOURCE_ITEMS, 0)
    accepted = {key.split(":", 1)[1]: n for key, n in totals.items() if key.startswith("accepted:")}
    accepted[SOURCE_ITEMS] = len(item_ids)  # unique catalogue items (duplicates are rejected)
    for source, read_count in sorted(read.items()):
        reasons = {key.split(":", 2)[2]: n for key, n in totals.items() if key.startswith(f"rejected:{source}:")}
        rejected_count = sum(reasons.values())
        sources[source] = {
            "read": read_count,
            "accepted": accepted.get(source, 0),
            "rejected": rejected_count,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "reconciled": read_count == accepted.get(source, 0) + rejected_count,
        }
    examples = sum(split["examples"] for split in splits.values())
    sources[SOURCE_INTERACTIONS]["examples"] = examples
    sources[SOURCE_INTERACTIONS]["below_min_rating"] = sources[SOURCE_INTERACTIONS]["accepted"] - examples
    if SOURCE_EVENTS in sources:
        sources[SOURCE_EVENTS]["excluded_from_features"] = {
            key.split(":", 1)[1]: n for key, n in sorted(totals.items()) if key.startswith("excluded:")}
    frequencies = {item_id: train_item_counts.get(item_id, 0) for item_id in item_ids}
    return {
        "options": {k: (v.value if isinstance(v, SplitProtocol) else v) for k, v in dataclasses.asdict(options).items()},
        "sources": sources,
        "reconciled": all(s["reconciled"] for s in sources.values()),
        "splits": splits,
        "time_cutoffs": {"validation_start": cutoffs[0], "eval_start": cutoffs[1]},
        "num_items": len(item_ids),
        "num_items_seen_in_train": sum(1 for c in frequencies.values() if c > 0),
        "head_tail": head_tail(frequencies, options.head_fraction),
        "item_train_frequency": frequencies,
    }


def resolve_input_spec(options: FeatureOptions) -> InputSpec:
    """The input declaration of the job: the MovieLens adapter or ``input_schema.json``, checked.

    Raises:
      UsageError: the input directory or schema cannot be found (the message says where it looked), or
        the schema does not fit its files (the message names the file and the field).
    """
    try:
        return _input_spec(options)
    except (ValueError, FileNotFoundError) as error:
        raise cli.UsageError(str(error)) from None


def _input_spec(options: FeatureOptions) -> InputSpec:
    if options.input_format == "movielens":
        directory = options.input
        if directory is None:
            root = cli.resolve_data_dir(options.data_dir)
            directory = os.path.join(root, DEFAULT_SUBDIR)
            if not os.path.isdir(directory):
                hint = (" (that directory is itself a MovieLens directory: pass it as --input; --data_dir is "
                        "the data root)") if os.path.isfile(os.path.join(root, "ratings.csv")) else ""
                raise cli.UsageError(f"no MovieLens directory at {directory}{hint}")
        spec = movielens_input_spec(directory)
        check_input_columns(spec, f"the MovieLens adapter ({directory})")
        return spec
    if options.input is None and options.input_schema is None:
        raise cli.UsageError(f"--input_format interactions needs --input DIR (holding {INPUT_SCHEMA_FILE}) "
                             "or --input_schema FILE")
    schema_path = options.input_schema or os.path.join(options.input, INPUT_SCHEMA_FILE)
    if not os.path.isfile(schema_path):
        legacy = os.path.join(options.input, fs.SCHEMA_FILE)
        hint = (f"; {legacy} exists: the input declaration was renamed {INPUT_SCHEMA_FILE} (schema.json is the "
                "feature directory's schema)") if os.path.isfile(legacy) else ""
        raise cli.UsageError(f"no input schema at {schema_path}{hint}")
    spec = InputSpec.from_schema_file(schema_path)
    check_input_columns(spec, schema_path)
    return spec


def run_job(options: FeatureOptions, beam_args: list[str]) -> beam.runners.runner.PipelineResult:
    """Builds and runs the pipeline; returns the finished PipelineResult."""
    spec = resolve_input_spec(options)
    pipeline_options = PipelineOptions(beam_args)
    if pipeline_options.view_as(StandardOptions).runner is None:
        pipeline_options.view_as(StandardOptions).runner = "DirectRunner"
    logging.info("feature pipeline: %s -> %s (%s split)", options.input_format, options.output_dir,
                 options.split.value)
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(pipeline, spec, options)
    result = pipeline.run()
    result.wait_until_finish()
    _remove_empty_temp_dirs(options.output_dir)
    return result


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Beam's convention: parses ``argv`` (this job's flags and Beam options) and runs the job."""
    options, beam_args, _ = cli.parse_command("python -m pipelines", COMMAND, argv or [])
    return run_job(options, beam_args)


def _remove_empty_temp_dirs(output_dir: str) -> None:
    """Beam's file sinks leave empty ``beam-temp-*`` directories on local disk; tidy them away."""
    if not os.path.isdir(output_dir):
        return
    for root, dirs, _ in os.walk(output_dir, topdown=False):
        for name in dirs:
            path = os.path.join(root, name)
            if name.startswith("beam-temp-") and not os.listdir(path):
                os.rmdir(path)


def command(options: FeatureOptions, beam_args: list[str]) -> int:
    """Runs the job and checks its counts: exit 1 when they do not reconcile or too much was rejected."""
    run_job(options, beam_args)
    stats_path = os.path.join(options.output_dir, fs.STATS_FILE)
    if not os.path.isfile(stats_path):
        raise cli.JobError(f"the pipeline finished without writing {stats_path}")
    with open(stats_path) as f:
        stats = json.load(f)
    for source, counts in stats["sources"].items():
        logging.info("%s: read %d = accepted %d + rejected %d %s", source, counts["read"], counts["accepted"],
                     counts["rejected"], counts["rejected_by_reason"] or "")
    logging.info("examples: %s", {s: v["examples"] for s, v in stats["splits"].items()})
    if not stats["reconciled"]:
        raise cli.JobError(f"counts do not reconcile (read != accepted + rejected): see {stats_path}")
    problems = [rejection_problem(source, counts["read"], counts["rejected"], options.max_reject_fraction)
                for source, counts in sorted(stats["sources"].items())]
    problems = [p for p in problems if p]
    if problems:
        raise cli.JobError(f"{'; '.join(problems)}; dead letters in "
                           f"{os.path.join(options.output_dir, fs.DEAD_LETTER_DIR)}")
    return 0


COMMAND = cli.Command(
    "features", FeatureOptions, command,
    help="interaction logs -> training examples, item corpus, vocabularies, MI, stats (Beam)",
    description=__doc__, pass_through=unknown_arguments,
    renamed={"--schema": "--input_schema"})
