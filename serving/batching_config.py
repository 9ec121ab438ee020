"""Batching options, and TF Serving's ``--batching_parameters_file`` format.

The file is a text-format ``tensorflow.serving.BatchingParameters`` proto, e.g.::

    max_batch_size { value: 128 }
    batch_timeout_micros { value: 0 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 2 }
    pad_variable_length_inputs: true

tensorflow-serving-api does not ship that proto's Python module, so the message is declared here
with the same field names and numbers (``session_bundle_config.proto``) and parsed with
protobuf's ``text_format``: files written for tensorflow_model_server work unchanged.
"""

from __future__ import annotations

import dataclasses
import logging

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """How concurrent predict requests for one model version and signature are merged.

    Attributes:
      enabled: merge concurrent requests into one model call (``--enable_batching``). When off,
        every request is its own model call (still run off the event loop).
      max_batch_size: the most rows (first-dimension entries) one merged call may hold. A single
        request larger than this runs alone, unsplit.
      batch_timeout_micros: how long the oldest queued request may wait for others to join; 0
        merges only what queued up while the previous call ran (no added latency at low load).
      num_batch_threads: model calls in flight at once per model version and signature (and the
        size of the server's model-call thread pool).
      max_enqueued_batches: queue bound, in batches of ``max_batch_size`` rows; past it requests
        are rejected with UNAVAILABLE instead of queueing without bound.
      pad_variable_length_inputs: merge requests whose inputs differ in non-batch dimensions by
        padding them to the largest (with ``""``, 0 or false). Only correct for models that
        treat those values as padding, like the retrieval contract's ``history`` padded with "".
    """

    enabled: bool = True
    max_batch_size: int = 128
    batch_timeout_micros: int = 0
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching {name} must be >= 1, received {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batching batch_timeout_micros must be >= 0, received {self.batch_timeout_micros}")


def _batching_parameters_class():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="serving_batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, None),
        ("pad_variable_length_inputs", 7, None),
        ("enable_large_batch_splitting", 8, None),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in fields:
        field = message.field.add(name=name, number=number)
        if type_name:
            field.type, field.type_name, field.label = F.TYPE_MESSAGE, type_name, F.LABEL_OPTIONAL
        elif name == "allowed_batch_sizes":
            field.type, field.label = F.TYPE_INT64, F.LABEL_REPEATED
        else:
            field.type, field.label = F.TYPE_BOOL, F.LABEL_OPTIONAL
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    descriptor = pool.Add(file_proto).message_types_by_name["BatchingParameters"]
    return message_factory.GetMessageClass(descriptor)


BatchingParameters = _batching_parameters_class()


def parse_batching_parameters(text: str, base: BatchingOptions, source: str = "<string>") -> BatchingOptions:
    """Applies a text-format ``BatchingParameters`` proto on top of ``base``.

    Fields that only matter for TF Serving's C++ scheduler (``thread_pool_name``,
    ``allowed_batch_sizes``, ``enable_large_batch_splitting``, ``max_execution_batch_size``) are
    accepted and logged as not applied.

    Raises:
      ValueError: a syntax error or an unknown field (with line and column), or invalid values.
    """
    params = BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: not a text-format BatchingParameters proto: {error}") from None
    updates = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if params.HasField(name):
            updates[name] = int(getattr(params, name).value)
    if params.pad_variable_length_inputs:
        updates["pad_variable_length_inputs"] = True
    ignored = [n for n in ("thread_pool_name", "max_execution_batch_size") if params.HasField(n)]
    ignored += [n for n in ("allowed_batch_sizes", "enable_large_batch_splitting") if getattr(params, n)]
    if ignored:
        logger.warning("%s: batching fields %s are accepted for compatibility but not applied", source, ignored)
    return dataclasses.replace(base, **updates)


def load_batching_parameters_file(path: str, base: BatchingOptions) -> BatchingOptions:
    """Reads ``--batching_parameters_file`` (see :func:`parse_batching_parameters`)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ValueError(f"cannot read batching parameters file {path!r}: {error}") from None
    return parse_batching_parameters(text, base, source=path)
