"""Batch OoD scoring: score texts with an exported detector on Beam (RunInference).

Usage (locally)::

  python -m pipelines batch_score --export_dir runs/export/ood --input 'texts/*.jsonl' \\
      --output_dir runs/scored --runner=DirectRunner

``--export_dir`` is an export base directory (the newest version is used) or one version directory;
the SavedModel's ``serving_default(text: string [batch]) -> {ood_score, ...}`` is the contract
(``text_ood export``). Inputs by extension: ``.jsonl`` / ``.json`` (one object per line, the text
in ``--text_field``), ``.csv`` (header row), ``.txt`` (one text per line, any bytes) and
``.tfrecord`` / ``.tfrecord.gz`` (tf.Example with a bytes feature ``--text_field``). Outputs in
``--output_dir``: ``scores-*.jsonl`` with ``id`` (``--id_field`` if the record has it, else the record's position),
``ood_score``, ``perplexity`` (when the model returns it), ``is_ood`` (``ood_score > threshold``)
and every other input field passed through (renamed ``input_<name>`` on a clash);
``dead_letter-*.jsonl`` (records that could not be read or scored, with the reason) and
``summary.json`` (read = scored + rejected, per reason; flagged OoD; threshold; model).

The model is loaded once per worker process (Beam's shared model manager); a batch that fails is
retried element by element so that one bad record only rejects itself. Standard Beam options
pass through (``--runner=DataflowRunner ...``, ``FlinkRunner``, ``SparkRunner``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core import cli
from pipelines.beam_args import DEFAULT_MAX_REJECT_FRACTION, check_reject_fraction, rejection_problem, unknown_arguments
from pipelines.io.readers import ReadTFRecordsWithPositions
from pipelines.io.writers import WriteJson
from pipelines.io.records import (
    COUNTS_TAG, DEAD_LETTER_TAG, DeadLetter, RawLine, ReadSourceLines, RowError, bundle_count, guarded, parse_row,
    raw_text,
)
from serving.export import list_versions
from text_ood.contract import DETECTOR_JSON, MAX_TEXT_BYTES_FIELD, SCORE_OUTPUT, SIGNATURE

SOURCE = "texts"
OUTPUT_FIELDS = ("id", "ood_score", "perplexity", "is_ood")


class ScoringRecord(NamedTuple):
    """One text to score. ``text`` is bytes (scored as is: the model replaces invalid UTF-8)."""

    id: str
    text: bytes
    fields: dict
    position: str


def resolve_model_dir(model: str) -> str:
    """A version directory: ``model`` itself if it holds a SavedModel, else its newest version."""
    if os.path.isfile(os.path.join(model, "saved_model.pb")):
        return model
    versions = list_versions(model)
    if not versions:
        raise FileNotFoundError(f"{model!r} is neither a SavedModel directory nor an export base with versions")
    return os.path.join(model, str(versions[-1]))


def read_detector_info(model_dir: str) -> dict:
    """The export's ``assets.extra/detector.json`` (``{}`` when the export has none)."""
    path = os.path.join(model_dir, "assets.extra", DETECTOR_JSON)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_threshold(model_dir: str) -> float | None:
    info = read_detector_info(model_dir)
    return float(info["threshold"]) if "threshold" in info else None


def check_text_length(text: bytes, max_bytes: int | None, field: str) -> bytes:
    """``text``, or RowError ``text_too_long`` when it exceeds the export's ``max_text_bytes``
    (the served model answers such a text with 400 too: one rule for both paths)."""
    if max_bytes is not None and len(text) > max_bytes:
        raise RowError("text_too_long", f"field {field!r} holds {len(text)} bytes, more than the model's "
                       f"max_text_bytes {max_bytes} (assets.extra/{DETECTOR_JSON})")
    return text


def _text_of(value: Any, field: str) -> bytes:
    """The text to score as bytes; raises RowError for a non-string or an empty / blank text."""
    if isinstance(value, str):
        try:
            value = value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RowError("invalid_unicode", f"field {field!r} holds a lone surrogate "
                           f"({ascii(error.object[error.start:error.end])}), which is not valid Unicode") from None
    if not isinstance(value, bytes):
        raise RowError("missing_text" if value is None else "invalid_text",
                       f"field {field!r} must be a string, received {type(value).__name__}")
    if not value.strip():
        raise RowError("empty_text", f"field {field!r} is empty or only whitespace: there is no text to score")
    return value


def line_to_record(line: RawLine, text_field: str, id_field: str) -> ScoringRecord:
    """Turns one input line into a record (raises RowError with the reason).

    Plain-text lines are scored as they are (any bytes); JSONL and CSV lines are parsed with the
    feature pipeline's own row parser.
    """
    if line.path.lower().endswith(".txt"):
        return ScoringRecord(line.position, _text_of(line.data, "line"), {}, line.position)
    row = parse_row(line)
    if text_field not in row:
        raise RowError("missing_text", f"no field {text_field!r} (fields: {sorted(row)[:10]})")
    body = _text_of(row.pop(text_field), text_field)
    record_id = row.get(id_field)
    return ScoringRecord(str(record_id) if record_id not in (None, "") else line.position, body, row, line.position)


def example_to_record(path: str, offset: int, serialized: bytes, text_field: str, id_field: str) -> ScoringRecord:
    """Turns one tf.Example into a record: the text feature, other features passed through.

    Its position is ``path@offset``, the record's byte offset in the (uncompressed) file.
    """
    from tensorflow.core.example import example_pb2

    position = f"{path}@{offset}"
    try:
        example = example_pb2.Example.FromString(serialized)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise RowError("invalid_example", f"not a tf.Example: {error}") from None
    fields = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        if kind == "bytes_list":
            values = [v.decode("utf-8", errors="replace") if name != text_field else v for v in values]
        fields[name] = values[0] if len(values) == 1 else values
    if text_field not in fields or not isinstance(fields[text_field], bytes):
        raise RowError("missing_text", f"no single bytes feature {text_field!r}")
    text = _text_of(fields.pop(text_field), text_field)
    record_id = fields.get(id_field)
    return ScoringRecord(str(record_id) if record_id not in (None, "", []) else position, text, fields, position)


class _ToRecords(beam.DoFn):
    """Input (line or tf.Example) -> record, or a dead letter; counts what it reads per bundle."""

    def __init__(self, text_field: str, id_field: str, max_text_bytes: int | None = None):
        self._text_field, self._id_field, self._max_text_bytes = text_field, id_field, max_text_bytes

    def start_bundle(self):
        self._read = 0

    def _record(self, element) -> ScoringRecord:
        if isinstance(element, RawLine):
            record = line_to_record(element, self._text_field, self._id_field)
        else:
            path, offset, serialized, unreadable = element
            if unreadable is not None:
                raise RowError("unreadable_record", unreadable)
            record = example_to_record(path, offset, serialized, self._text_field, self._id_field)
        check_text_length(record.text, self._max_text_bytes, self._text_field)
        return record

    def process(self, element):
        self._read += 1
        try:
            yield guarded(lambda: self._record(element))
        except RowError as error:
            if isinstance(element, RawLine):
                position, raw = element.position, raw_text(element)
            else:
                position, raw = f"{element[0]}@{element[1]}", ""
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(SOURCE, position, error.kind, str(error), raw))

    def finish_bundle(self):
        if self._read:
            yield bundle_count("read", self._read)


class OODScoringModelHandler(ModelHandler[ScoringRecord, PredictionResult, Any]):
    """RunInference handler for the project's exported OoD SavedModels.

    ``load_model`` registers the custom ops the graph needs (tensorflow-text, ScaNN), loads the
    SavedModel once per worker and returns its ``serving_default``. ``run_inference`` scores a
    batch in one call; if that call fails, each record is scored alone so a bad record only
    rejects itself (its result carries ``{"error": reason}``).
    """

    def __init__(self, model_dir: str, threshold: float | None, max_batch_size: int = 256):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._model_dir = model_dir
        self._threshold = threshold

    def load_model(self):
        import tensorflow as tf

        from serving.servable import read_meta_graph, register_custom_ops

        register_custom_ops(read_meta_graph(self._model_dir))
        return tf.saved_model.load(self._model_dir).signatures[SIGNATURE]

    def _score(self, model, texts: Sequence[bytes]) -> list[dict]:
        import tensorflow as tf

        outputs = model(text=tf.constant(list(texts), tf.string))
        scores = outputs[SCORE_OUTPUT].numpy()
        perplexity = outputs["perplexity"].numpy() if "perplexity" in outputs else None
        results = []
        for index, score in enumerate(scores):
            result = {"ood_score": float(score)}
            if perplexity is not None:
                result["perplexity"] = float(perplexity[index])
            result["is_ood"] = bool(score > self._threshold) if self._threshold is not None else None
            results.append(result)
        return results

    def run_inference(self, batch: Sequence[ScoringRecord], model, inference_args=None) -> Iterable[PredictionResult]:
        try:
            results = self._score(model, [record.text for record in batch])
        except Exception:  # noqa: BLE001 - isolate the record(s) that fail
            results = []
            for record in batch:
                try:
                    results.extend(self._score(model, [record.text]))
                except Exception as error:  # noqa: BLE001
                    results.append({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"})
        return [PredictionResult(record, result) for record, result in zip(batch, results)]

    def get_metrics_namespace(self) -> str:
        return "batch_ood_scoring"


def to_output(prediction: PredictionResult):
    """PredictionResult -> an output JSON line, or a dead letter when scoring failed."""
    record, result = prediction.example, prediction.inference
    if "error" in result:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            SOURCE, record.position, "scoring_failed", result["error"], record.text.decode("utf-8", errors="replace")))
        return
    output = {f"input_{k}" if k in OUTPUT_FIELDS else k: v for k, v in record.fields.items()}
    output.update({"id": record.id, **result})
    try:
        line = guarded(lambda: json.dumps(strict_json_values(output), ensure_ascii=False, default=str,
                                          allow_nan=False))
    except RowError as error:  # E.g. a pass-through field nested too deeply to write.
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
            SOURCE, record.position, error.kind, str(error), record.text.decode("utf-8", errors="replace")))
        return
    yield ScoredLine(line, result.get("is_ood"))


class ScoredLine(NamedTuple):
    """One scored record: its output JSON line, and whether it was flagged OoD (None: no threshold)."""

    line: str
    is_ood: bool | None


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def strict_json_values(value: Any) -> Any:
    """Replaces NaN and infinities (which JSON cannot hold; ``json.loads`` accepts them from input
    lines) with the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, as protobuf's JSON mapping
    does, so every output line parses with strict JSON parsers."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    if isinstance(value, dict):
        return {key: strict_json_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strict_json_values(item) for item in value]
    return value


def _input_kind(pattern: str) -> str:
    lowered = pattern.lower()
    if lowered.endswith((".tfrecord", ".tfrecord.gz", ".tfrecords")):
        return "tfrecord"
    if lowered.endswith((".jsonl", ".json", ".csv", ".txt")):
        return "text"
    raise ValueError(f"--input {pattern!r}: expected a .jsonl, .json, .csv, .txt or .tfrecord(.gz) pattern")


SCORES_PREFIX, DEAD_LETTER_PREFIX, SUMMARY_FILE = "scores", "dead_letter", "summary.json"


def build_pipeline(pipeline: beam.Pipeline, options: "ScoringOptions", model_dir: str, threshold: float | None,
                   max_text_bytes: int | None = None) -> None:
    """Adds every step of the scoring job to ``pipeline`` (see the module docstring)."""
    out = options.output_dir.rstrip("/")
    if _input_kind(options.input) == "tfrecord":
        raw = pipeline | "ReadTFRecords" >> ReadTFRecordsWithPositions(options.input)
    else:
        raw = pipeline | "ReadLines" >> ReadSourceLines(SOURCE, options.input)
    records = raw | "ToRecords" >> beam.ParDo(
        _ToRecords(options.text_field, options.id_field, max_text_bytes)).with_outputs(
        DEAD_LETTER_TAG, COUNTS_TAG, main="records")
    handler = OODScoringModelHandler(model_dir, threshold, options.batch_size)
    outputs = (
        records.records
        | "Score" >> RunInference(handler)
        | "ToOutput" >> beam.FlatMap(to_output).with_outputs(DEAD_LETTER_TAG, main="scored")
    )
    _ = (outputs.scored | "Lines" >> beam.Map(lambda scored: scored.line)
         | "WriteScores" >> beam.io.WriteToText(f"{out}/{SCORES_PREFIX}", file_name_suffix=".jsonl"))
    dead = (records[DEAD_LETTER_TAG], outputs[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
    _ = (dead | "DeadLetterJson" >> beam.Map(lambda d: d.to_json())
         | "WriteDeadLetters" >> beam.io.WriteToText(f"{out}/{DEAD_LETTER_PREFIX}", file_name_suffix=".jsonl"))
    counts = (
        (records[COUNTS_TAG],
         outputs.scored | "ScoredCount" >> beam.Map(lambda output: ("scored", 1)),
         outputs.scored | "OodCount" >> beam.Map(lambda scored: ("is_ood", int(scored.is_ood is True))),
         dead | "RejectedCount" >> beam.Map(lambda d: (f"rejected:{d.kind}", 1)))
        | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    )
    _ = (
        pipeline | "SummarySeed" >> beam.Create([None])
        | "Summary" >> beam.Map(lambda _, totals: summarize(totals, model_dir, threshold),
                                totals=beam.pvalue.AsDict(counts))
        | "WriteSummary" >> WriteJson(f"{out}/{SUMMARY_FILE}")
    )


def summarize(totals: dict, model_dir: str, threshold: float | None) -> dict:
    rejected = {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("rejected:")}
    read, scored = totals.get("read", 0), totals.get("scored", 0)
    return {"read": read, "scored": scored, "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items())), "reconciled": read == scored + sum(rejected.values()),
            "flagged_ood": totals.get("is_ood", 0), "threshold": threshold, "model": os.path.abspath(model_dir)}


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
    """``python -m pipelines batch_score``: the job's own flags (Beam's pipeline options pass through)."""

    export_dir: str = cli.export_dir_flag(
        "the detector export: a base directory (its newest version is used) or one version directory",
        must_exist=True)
    input: str = cli.flag("file pattern of the texts: .jsonl/.json/.csv/.txt/.tfrecord(.gz)", metavar="PATTERN")
    output_dir: str = cli.output_dir_flag("where scores-*.jsonl, dead_letter-*.jsonl and summary.json go")
    text_field: str = cli.flag("the record field holding the text (JSONL, CSV, tf.Example)", default="text")
    id_field: str = cli.flag("the record field used as id (default id; else the record's position)", default="id")
    threshold: float | None = cli.flag(
        "is_ood threshold (default: the one calibrated at export, assets.extra/detector.json)", default=None)
    batch_size: int = cli.flag("maximum texts per model call", default=256)
    max_reject_fraction: float = cli.flag(
        "fail (exit 1) when more than this fraction of the records read is rejected",
        default=DEFAULT_MAX_REJECT_FRACTION)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, received {self.batch_size}")
        check_reject_fraction(self.max_reject_fraction)
        _input_kind(self.input)


def run_job(options: ScoringOptions, beam_args: list[str]) -> beam.runners.runner.PipelineResult:
    """Builds and runs the scoring pipeline; returns the finished PipelineResult."""
    try:
        model_dir = resolve_model_dir(options.export_dir)
    except FileNotFoundError as error:
        raise cli.UsageError(f"--export_dir: {error}") from None
    threshold = options.threshold if options.threshold is not None else read_threshold(model_dir)
    max_text_bytes = read_detector_info(model_dir).get(MAX_TEXT_BYTES_FIELD)
    pipeline_options = PipelineOptions(beam_args)
    if pipeline_options.view_as(StandardOptions).runner is None:
        pipeline_options.view_as(StandardOptions).runner = "DirectRunner"
    logging.info("scoring %s with %s (threshold %s)", options.input, model_dir, threshold)
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(pipeline, options, model_dir, threshold, max_text_bytes)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Beam's convention: parses ``argv`` (this job's flags and Beam options) and runs the job."""
    options, beam_args, _ = cli.parse_command("python -m pipelines", COMMAND, argv or [])
    return run_job(options, beam_args)


def read_summary(output_dir: str) -> dict:
    """The job's ``summary.json`` in ``output_dir``."""
    with open(os.path.join(output_dir, SUMMARY_FILE)) as f:
        return json.load(f)


def command(options: ScoringOptions, beam_args: list[str]) -> int:
    """Runs the job and checks its counts: exit 1 when they do not reconcile or too much was rejected."""
    run_job(options, beam_args)
    summary = read_summary(options.output_dir)
    logging.info("read %d = scored %d + rejected %d %s; flagged OoD: %d", summary["read"], summary["scored"],
                 summary["rejected"], summary["rejected_by_reason"] or "", summary["flagged_ood"])
    if not summary["reconciled"]:
        raise cli.JobError(f"counts do not reconcile (read != scored + rejected): see "
                           f"{os.path.join(options.output_dir, SUMMARY_FILE)}")
    problem = rejection_problem(SOURCE, summary["read"], summary["rejected"], options.max_reject_fraction)
    if problem:
        raise cli.JobError(f"{problem}; dead letters: {options.output_dir}/{DEAD_LETTER_PREFIX}-*.jsonl")
    return 0


COMMAND = cli.Command(
    "batch_score", ScoringOptions, command,
    help="score texts with an exported OoD detector (Beam RunInference) -> scores, dead letters, summary",
    description=__doc__, pass_through=unknown_arguments,
    renamed={"--model": "--export_dir", "--output": "--output_dir (a directory: scores-*.jsonl, summary.json)"})
