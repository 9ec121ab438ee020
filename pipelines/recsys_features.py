"""Feature pipeline: interaction logs -> everything the two-tower models train on.

Usage (locally, in-process)::

  python -m pipelines.recsys_features --input_format movielens \\
      --data_dir $SSL_DATA_DIR/movielens/ml-latest-small --output_dir runs/features --split user_time

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

import argparse
import dataclasses
import json
import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.feature_outputs import HEAD_FRACTION, WriteJson, WriteVocabularies, head_tail
from pipelines.item_corpus import BuildItemCorpus, ValidateAgainstItems
from pipelines.movielens import DEFAULT_SUBDIR, movielens_input_spec
from pipelines.mutual_information import ItemFeatureMutualInformation
from pipelines.sources import (
    DEAD_LETTER_TAG, InputSpec, ParseRecords, ReadSourceLines, interaction_parser, item_event_parser,
    item_parser,
)
from pipelines.splits import BuildExamples, SplitProtocol, time_cutoffs
from recsys_ssl import schema as fs
from serving.env import data_root

NAMESPACE = "recsys_features"
SOURCE_INTERACTIONS, SOURCE_ITEMS, SOURCE_EVENTS = "interactions", "items", "item_events"


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """The pipeline's own flags (Beam's options are separate)."""

    output_dir: str
    split: SplitProtocol = SplitProtocol.USER_TIME
    eval_fraction: float = 0.1
    validation_fraction: float = 0.1
    history_length: int = 20
    min_rating: float | None = None
    head_fraction: float = HEAD_FRACTION

    def __post_init__(self):
        for name in ("eval_fraction", "validation_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), received {value}")
        if not 0.0 < self.head_fraction < 1.0:
            raise ValueError(f"--head_fraction must be in (0, 1), received {self.head_fraction}")
        if self.history_length < 1:
            raise ValueError(f"--history_length must be >= 1, received {self.history_length}")


def _count(pcoll, label: str):
    """A singleton side input: the number of elements of ``pcoll``."""
    return beam.pvalue.AsSingleton(pcoll | label >> beam.combiners.Count.Globally())


def _count_by(pcoll, label: str, key_fn):
    """A side input dict ``{key: count}`` over ``pcoll``."""
    return beam.pvalue.AsDict(
        pcoll | f"{label}Key" >> beam.Map(key_fn) | f"{label}Count" >> beam.combiners.Count.PerElement()
    )


def _counted(name: str):
    counter = Metrics.counter(NAMESPACE, name)

    def increment(element):
        counter.inc()
        return element

    return increment


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

    # 1. Read and parse every source; lines that cannot be parsed are dead letters.
    raw = {
        SOURCE_INTERACTIONS: pipeline | "ReadInteractions" >> ReadSourceLines(SOURCE_INTERACTIONS, spec.interactions_path),
        SOURCE_ITEMS: pipeline | "ReadItems" >> ReadSourceLines(SOURCE_ITEMS, spec.items_path),
    }
    parsed_interactions = raw[SOURCE_INTERACTIONS] | "ParseInteractions" >> ParseRecords(interaction_parser(spec))
    parsed_items = raw[SOURCE_ITEMS] | "ParseItems" >> ParseRecords(item_parser(spec))
    dead_letters = [parsed_interactions[DEAD_LETTER_TAG], parsed_items[DEAD_LETTER_TAG]]
    event_records, event_lines = [], []
    for index, event_spec in enumerate(spec.item_events):
        lines = pipeline | f"ReadEvents{index}" >> ReadSourceLines(SOURCE_EVENTS, event_spec["path"])
        parsed = lines | f"ParseEvents{index}" >> ParseRecords(item_event_parser(event_spec, spec))
        event_lines.append(lines)
        event_records.append(parsed.records)
        dead_letters.append(parsed[DEAD_LETTER_TAG])
    if event_lines:
        raw[SOURCE_EVENTS] = event_lines | "AllEventLines" >> beam.Flatten()
    events = (event_records or [pipeline | "NoEvents" >> beam.Create([])]) | "AllEvents" >> beam.Flatten()

    # 2. Join with the catalogue: unknown and duplicate item ids are dead letters.
    validated = {
        "items": parsed_items.records, "interactions": parsed_interactions.records, "events": events,
    } | "ValidateItemIds" >> ValidateAgainstItems(
        {"items": SOURCE_ITEMS, "interactions": SOURCE_INTERACTIONS, "events": SOURCE_EVENTS}
    )
    dead_letters.append(validated[DEAD_LETTER_TAG])

    # 3. Positive interactions, global time cutoffs, examples with histories and splits.
    min_rating = options.min_rating
    positives = validated.interactions | "Positives" >> beam.Filter(
        lambda r: min_rating is None or r.weight >= min_rating
    )
    cutoffs = (
        positives
        | "Timestamps" >> beam.Map(lambda r: r.timestamp)
        | "TimestampHistogram" >> beam.combiners.Count.PerElement()
        | "HistogramList" >> beam.combiners.ToList()
        | "TimeCutoffs" >> beam.Map(time_cutoffs, options.eval_fraction, options.validation_fraction)
    )
    examples = positives | "BuildExamples" >> BuildExamples(
        options.split, options.eval_fraction, options.validation_fraction, options.history_length, cutoffs
    )
    for split in fs.SPLITS:
        _ = (
            examples
            | f"Only{split.title()}" >> beam.Filter(lambda e, s=split: e[0] == s)
            | f"Count{split.title()}" >> beam.Map(_counted(f"examples_{split}"))
            | f"Serialized{split.title()}" >> beam.Map(lambda e: e[3])
            | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
                f"{out}/{split}", file_name_suffix=fs.TFRECORD_SUFFIX, compression_type=CompressionTypes.GZIP
            )
        )
    train = examples | "TrainOnly" >> beam.Filter(lambda e: e[0] == "train")
    heldout_pairs = (
        examples
        | "HeldOut" >> beam.Filter(lambda e: e[0] != "train")
        | "HeldOutPairs" >> beam.Map(lambda e: (e[1], e[2]))
        | "UniquePairs" >> beam.Distinct()
    )

    # 4. The item corpus: every catalogue item with its features (events before the eval period).
    corpus_outputs = {"items": validated["items"], "events": validated.events} | "ItemCorpus" >> BuildItemCorpus(
        cutoffs, heldout_pairs, feature_names
    )
    corpus = corpus_outputs["corpus"]
    _ = (
        corpus
        | "SerializeItems" >> beam.Map(lambda item: fs.item_to_proto(item.item_id, dict(item.features)))
        | "WriteItems" >> beam.io.WriteToTFRecord(
            f"{out}/{fs.ITEMS_PREFIX}", file_name_suffix=fs.TFRECORD_SUFFIX, compression_type=CompressionTypes.GZIP
        )
    )

    # 5. Item train frequencies (every corpus item, 0 if never seen) and vocabularies.
    train_item_counts = (
        train | "TrainItems" >> beam.Map(lambda e: e[2]) | "CountTrainItems" >> beam.combiners.Count.PerElement()
    )
    item_frequencies = (
        {"corpus": corpus | "CorpusIds" >> beam.Map(lambda i: (i.item_id, None)), "train": train_item_counts}
        | "JoinFrequencies" >> beam.CoGroupByKey()
        | "Frequency" >> beam.MapTuple(lambda item_id, g: (item_id, sum(g["train"])) if g["corpus"] else None)
        | "CorpusOnly" >> beam.Filter(lambda kv: kv is not None)
    )
    occurrences = (
        (
            corpus | "FeatureValues" >> beam.FlatMap(
                lambda item: [(name, value) for name, values in item.features for value in values]
            ),
            train | "TrainUsers" >> beam.Map(lambda e: (fs.USER_ID, e[1])),
        )
        | "AllOccurrences" >> beam.Flatten()
    )
    vocab_dir = f"{out}/{fs.VOCAB_DIR}"
    _ = occurrences | "Vocabularies" >> WriteVocabularies(vocab_dir, required=feature_names + (fs.USER_ID,))
    _ = (
        item_frequencies
        | "ItemVocabList" >> beam.combiners.ToList()
        | "ItemVocab" >> beam.Map(lambda pairs: (fs.ITEM_ID, pairs))
        | "WriteItemVocab" >> beam.Map(_write_vocab, vocab_dir)
    )

    # 6. Mutual information between item features over the corpus.
    _ = (
        corpus
        | "MutualInformation" >> ItemFeatureMutualInformation((fs.ITEM_ID,) + feature_names)
        | "WriteMI" >> WriteJson(f"{out}/{fs.MI_FILE}")
    )

    # 7. Dead letters, stats (with reconciliation) and schema.
    all_dead = dead_letters | "AllDeadLetters" >> beam.Flatten()
    _ = (
        all_dead
        | "CountRejected" >> beam.Map(lambda d: _counted(f"{d.source}_rejected")(d))
        | "DeadLetterJson" >> beam.Map(lambda d: d.to_json())
        | "WriteDeadLetters" >> beam.io.WriteToText(
            f"{out}/{fs.DEAD_LETTER_DIR}/rejected", file_name_suffix=".jsonl"
        )
    )
    read_lines = [
        pcoll | f"Read{name.title()}Counter" >> beam.Map(_counted(f"{name}_read")) for name, pcoll in raw.items()
    ]
    stats_inputs = dict(
        read=_count_by(read_lines | "AllRead" >> beam.Flatten(), "Read", lambda line: line.source),
        rejected=_count_by(all_dead, "Rejected", lambda d: (d.source, d.kind)),
        accepted_interactions=_count(validated.interactions, "AcceptedInteractions"),
        accepted_items=_count(validated["items"], "AcceptedItems"),
        accepted_events=_count(validated.events, "AcceptedEvents"),
        positives=_count(positives, "CountPositives"),
        excluded_events=_count_by(corpus_outputs["excluded"], "Excluded", lambda reason_event: reason_event[0]),
        splits=_count_by(examples, "Splits", lambda e: e[0]),
        users=_count_by(examples, "SplitUsers", lambda e: (e[0], e[1])),
        frequencies=beam.pvalue.AsDict(item_frequencies),
        cutoffs=beam.pvalue.AsSingleton(cutoffs),
    )
    _ = (
        pipeline
        | "StatsSeed" >> beam.Create([None])
        | "AssembleStats" >> beam.Map(lambda _, **kw: assemble_stats(options, **kw), **stats_inputs)
        | "WriteStats" >> WriteJson(f"{out}/{fs.STATS_FILE}")
    )
    _ = pipeline | "Schema" >> beam.Create([schema.to_json()]) | "WriteSchema" >> WriteJson(f"{out}/{fs.SCHEMA_FILE}")


def _write_vocab(name_and_pairs, vocab_dir):
    from pipelines.feature_outputs import vocabulary_text, write_text

    name, pairs = name_and_pairs
    write_text(f"{vocab_dir}/{name}.txt", vocabulary_text(pairs))


def assemble_stats(options: FeatureOptions, read, rejected, accepted_interactions, accepted_items,
                   accepted_events, positives, excluded_events, splits, users, frequencies, cutoffs) -> dict:
    """Builds ``stats.json``: per-source counts (read = accepted + rejected), splits, head/tail."""
    sources = {}
    accepted = {SOURCE_INTERACTIONS: accepted_interactions, SOURCE_ITEMS: accepted_items,
                SOURCE_EVENTS: accepted_events}
    for source, read_count in sorted(read.items()):
        reasons = {kind: n for (src, kind), n in rejected.items() if src == source}
        rejected_count = sum(reasons.values())
        sources[source] = {
            "read": read_count,
            "accepted": accepted[source],
            "rejected": rejected_count,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "reconciled": read_count == accepted[source] + rejected_count,
        }
    sources[SOURCE_INTERACTIONS]["below_min_rating"] = accepted_interactions - positives
    sources[SOURCE_INTERACTIONS]["examples"] = positives
    if SOURCE_EVENTS in sources:
        sources[SOURCE_EVENTS]["excluded_from_features"] = dict(sorted(excluded_events.items()))
    split_users = {split: sum(1 for (s, _) in users if s == split) for split in fs.SPLITS}
    return {
        "options": {k: (v.value if isinstance(v, SplitProtocol) else v) for k, v in dataclasses.asdict(options).items()},
        "sources": sources,
        "reconciled": all(s["reconciled"] for s in sources.values()),
        "splits": {split: {"examples": splits.get(split, 0), "users": split_users[split]} for split in fs.SPLITS},
        "time_cutoffs": {"validation_start": cutoffs[0], "eval_start": cutoffs[1]},
        "num_items": len(frequencies),
        "num_items_seen_in_train": sum(1 for c in frequencies.values() if c > 0),
        "head_tail": head_tail(frequencies, options.head_fraction),
        "item_train_frequency": dict(sorted(frequencies.items())),
    }


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.recsys_features",
        description=__doc__.split("\n\n")[0] + " Unknown flags are passed to Beam as pipeline options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input_format", choices=["movielens", "interactions"], default="movielens")
    parser.add_argument("--data_dir", default=None,
                        help="movielens: the ml-latest(-small) directory "
                             f"(default $SSL_DATA_DIR/{DEFAULT_SUBDIR})")
    parser.add_argument("--schema", default=None,
                        help="interactions: the input schema.json (default DATA_DIR/schema.json)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split", choices=[p.value for p in SplitProtocol], default="user_time",
                        help="time: global cutoff (production); user_time: last fraction of each user")
    parser.add_argument("--eval_fraction", type=float, default=0.1)
    parser.add_argument("--validation_fraction", type=float, default=0.1,
                        help="share of the training period held out for validation (same protocol)")
    parser.add_argument("--history_length", type=int, default=20)
    parser.add_argument("--min_rating", type=float, default=None,
                        help="keep interactions with weight >= this as positives (default: all)")
    parser.add_argument("--head_fraction", type=float, default=HEAD_FRACTION)
    return parser.parse_known_args(argv)


def resolve_input_spec(args: argparse.Namespace) -> InputSpec:
    if args.input_format == "movielens":
        data_dir = args.data_dir or (os.path.join(data_root(), DEFAULT_SUBDIR) if data_root() else None)
        if not data_dir:
            raise ValueError("--data_dir is required when $SSL_DATA_DIR is not set")
        return movielens_input_spec(data_dir)
    schema_path = args.schema or (os.path.join(args.data_dir, "schema.json") if args.data_dir else None)
    if not schema_path or not os.path.isfile(schema_path):
        raise ValueError(f"--input_format interactions needs --schema FILE or --data_dir DIR with schema.json "
                         f"(received {schema_path!r})")
    return InputSpec.from_schema_file(schema_path)


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Builds and runs the pipeline; returns the finished PipelineResult."""
    args, beam_args = parse_args(argv)
    spec = resolve_input_spec(args)
    options = FeatureOptions(
        output_dir=args.output_dir, split=SplitProtocol(args.split), eval_fraction=args.eval_fraction,
        validation_fraction=args.validation_fraction, history_length=args.history_length,
        min_rating=args.min_rating, head_fraction=args.head_fraction,
    )
    pipeline_options = PipelineOptions(beam_args)
    if pipeline_options.view_as(StandardOptions).runner is None:
        pipeline_options.view_as(StandardOptions).runner = "DirectRunner"
    logging.info("feature pipeline: %s -> %s (%s split)", args.input_format, options.output_dir, options.split.value)
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(pipeline, spec, options)
    result = pipeline.run()
    result.wait_until_finish()
    _remove_empty_temp_dirs(options.output_dir)
    return result


def _remove_empty_temp_dirs(output_dir: str) -> None:
    """Beam's file sinks leave empty ``beam-temp-*`` directories on local disk; tidy them away."""
    if not os.path.isdir(output_dir):
        return
    for root, dirs, _ in os.walk(output_dir, topdown=False):
        for name in dirs:
            path = os.path.join(root, name)
            if name.startswith("beam-temp-") and not os.listdir(path):
                os.rmdir(path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        result = run(argv)
    except (ValueError, FileNotFoundError, fs.SchemaError) as error:
        logging.error("%s", error)
        return 2
    args, _ = parse_args(argv)
    stats_path = os.path.join(args.output_dir, fs.STATS_FILE)
    for counter in result.metrics().query()["counters"]:
        logging.info("counter %s = %d", counter.key.metric.name, counter.committed or counter.attempted)
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        for source, counts in stats["sources"].items():
            logging.info("%s: read %d = accepted %d + rejected %d %s", source, counts["read"], counts["accepted"],
                         counts["rejected"], counts["rejected_by_reason"] or "")
        logging.info("examples: %s", {s: v["examples"] for s, v in stats["splits"].items()})
        if not stats["reconciled"]:
            logging.error("counts do not reconcile (read != accepted + rejected): see %s", stats_path)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
