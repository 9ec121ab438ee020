"""One loaded model version: a SavedModel, its signatures, and the call that runs one of them.

A :class:`Servable` is what the version manager loads and swaps, and what a request holds while
it runs (holding the Python reference keeps the version alive even if the manager unloads it in
the meantime, so in-flight requests never fail during a version swap).

Custom ops: SavedModels exported with ``tfrs.layers.factorized_top_k.ScaNN`` contain ScaNN's ops
(``Scann>TensorsToScann``, ``Scann>ScannSearchBatched``), and in-graph tokenisation with
tensorflow-text adds its ops (``SentencepieceOp``, ``TFText>...``). Their kernels live in those
packages' op libraries, which TensorFlow alone does not load. :func:`load_servable` lists the ops
the graph uses that are not registered yet and imports the op providers (:data:`OP_PROVIDERS`)
only then, so other models load without them and a missing provider gives a clear error.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from google.protobuf import text_format
from tensorflow.python.framework import op_def_registry

from serving.errors import ServingError, invalid_argument
from serving.signature import SignatureSpec

logger = logging.getLogger(__name__)

SERVE_TAG = "serve"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit.

_provider_lock = threading.Lock()


class ServableLoadError(RuntimeError):
    """A version directory that does not hold a loadable SavedModel (the message says why)."""


def is_complete_version_dir(path: str) -> bool:
    """True if ``path`` holds a SavedModel file (directories still being written do not yet)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def read_meta_graph(path: str, tag: str = SERVE_TAG) -> meta_graph_pb2.MetaGraphDef:
    """Reads the MetaGraphDef tagged ``tag`` from ``path/saved_model.pb`` (or ``.pbtxt``).

    Raises:
      ServableLoadError: no SavedModel file, an unparsable one, or no meta graph with the tag.
    """
    saved_model = saved_model_pb2.SavedModel()
    pb_path, pbtxt_path = (os.path.join(path, name) for name in SAVED_MODEL_FILES)
    try:
        if os.path.isfile(pb_path):
            with open(pb_path, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif os.path.isfile(pbtxt_path):
            with open(pbtxt_path) as f:
                text_format.Parse(f.read(), saved_model)
        else:
            raise ServableLoadError(f"{path} holds no saved_model.pb or saved_model.pbtxt")
    except ServableLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - protobuf raises several unrelated types.
        raise ServableLoadError(f"cannot parse the SavedModel in {path}: {error}") from error
    for meta_graph in saved_model.meta_graphs:
        if tag in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServableLoadError(f"the SavedModel in {path} has no meta graph tagged {tag!r}; it has {tags}")


# (op name prefix, module whose import registers such ops); "" matches any remaining op.
OP_PROVIDERS = (("Scann>", "scann.scann_ops.py.scann_ops"), ("", "tensorflow_text"))


def unregistered_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """Returns the op types the graph uses that this process has not registered (yet)."""
    functions = {f.signature.name for f in meta_graph.graph_def.library.function}
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return {op for op in ops - functions if op_def_registry.get(op) is None}


def register_custom_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> list[str]:
    """Imports op providers until every op of the graph is registered.

    Returns:
      The provider modules imported for this graph.

    Raises:
      ServableLoadError: ops remain unregistered (the message lists them and the providers tried,
        with their import errors).
    """
    missing = unregistered_ops(meta_graph)
    imported, errors = [], []
    with _provider_lock:
        for prefix, module in OP_PROVIDERS:
            if not any(op.startswith(prefix) for op in missing):
                continue
            try:
                importlib.import_module(module)
            except Exception as error:  # noqa: BLE001 - ImportError or tf NotFoundError from a .so.
                errors.append(f"{module}: {error}")
                continue
            imported.append(module)
            missing = unregistered_ops(meta_graph)
    if missing:
        raise ServableLoadError(
            f"the SavedModel uses ops this server cannot register: {sorted(missing)}. ScaNN ops need "
            f"scann built for TensorFlow {tf.__version__} (the project pins scann==1.4.2), TFText ops "
            f"need tensorflow-text. Import errors: {errors or 'none'}"
        )
    return imported


class Servable:
    """A loaded SavedModel version.

    Attributes:
      name: the model name it is served under.
      version: its integer version.
      path: the version directory.
      signatures: the callable signatures' specs, by signature name.
      signature_defs: every SignatureDef of the meta graph (what metadata requests return).
      batchers: per-signature request batchers, created and owned by the request path.
    """

    def __init__(self, name: str, version: int, path: str, loaded: object,
                 meta_graph: meta_graph_pb2.MetaGraphDef):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = loaded  # Keeps the SavedModel's variables and resources alive.
        self._functions = dict(loaded.signatures)
        self.signature_defs = dict(meta_graph.signature_def)
        self.signatures = {
            key: SignatureSpec.from_signature_def(key, self.signature_defs[key])
            for key in self._functions
            if key in self.signature_defs
        }
        self.batchers: dict[str, object] = {}
        self.max_string_bytes = read_serving_limits(path).get("max_string_bytes")

    def signature(self, name: str) -> SignatureSpec:
        """Returns the named signature's spec.

        Raises:
          ServingError: INVALID_ARGUMENT if the model has no such signature (TF Serving's code).
        """
        spec = self.signatures.get(name)
        if spec is None:
            raise invalid_argument(
                f'Serving signature name: "{name}" not found in signature def; model '
                f"{self.name!r} version {self.version} has {sorted(self.signatures)}"
            )
        return spec

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls one signature.

        Args:
          signature_name: a key of :attr:`signatures`.
          inputs: validated arrays, one per signature input, with the signature's dtypes.

        Returns:
          ``{output name: numpy array}``; ``DT_STRING`` outputs are ``object`` arrays of ``bytes``.

        Raises:
          ServingError: INVALID_ARGUMENT when the model rejects the values (e.g. a failed check
            inside the graph); INTERNAL for any other failure of the model call.
        """
        function = self._functions[signature_name]
        try:
            result = function(**{key: tf.constant(value) for key, value in inputs.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise invalid_argument(f"the model rejected the input: {error.message}") from None
        except tf.errors.OpError as error:
            raise ServingError(error_code(error), f"model call failed: {error.message}") from None
        return {key: value.numpy() for key, value in result.items()}

    def warm_up(self) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecords), if present.

        Returns:
          The number of warm-up requests run (0 when the file is absent).

        Raises:
          ServableLoadError: a record that is not a predict log or that fails (TF Serving fails
            the load in that case too).
        """
        from tensorflow_serving.apis import prediction_log_pb2

        warmup_path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.isfile(warmup_path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(warmup_path).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ServableLoadError(f"{warmup_path}: only predict_log warm-up records are supported")
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            try:
                spec = self.signature(name)
                arrays = spec.validate({k: tf.make_ndarray(v) for k, v in request.inputs.items()})
                self.run(name, arrays)
            except ServingError as error:
                raise ServableLoadError(f"warm-up request {count} failed: {error}") from None
            count += 1
        return count


def read_serving_limits(path: str) -> dict:
    """The export's ``assets.extra/serving_limits.json`` (:func:`serving.export.write_serving_limits`),
    ``{}`` when absent.

    Raises:
      ServableLoadError: the file exists but is not a JSON object of positive integers.
    """
    import json

    from serving.export import SERVING_LIMITS_FILE

    limits_path = os.path.join(path, SERVING_LIMITS_FILE)
    if not os.path.isfile(limits_path):
        return {}
    try:
        with open(limits_path) as f:
            limits = json.load(f)
    except (OSError, ValueError) as error:
        raise ServableLoadError(f"cannot read {limits_path}: {error}") from None
    if not isinstance(limits, dict) or not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise ServableLoadError(f"{limits_path} must be a JSON object of positive integers, received {limits!r}")
    return limits


def error_code(error: tf.errors.OpError):
    """Maps a TensorFlow error to the gRPC status code with the same canonical number."""
    import grpc

    by_value = {code.value[0]: code for code in grpc.StatusCode}
    return by_value.get(error.error_code, grpc.StatusCode.INTERNAL)


def load_servable(name: str, version: int, path: str, warm_up: bool = True) -> Servable:
    """Loads one version directory as a :class:`Servable` (custom ops registered when needed).

    Raises:
      ServableLoadError: the directory is not a complete SavedModel, needs ops that cannot be
        registered, fails to load, or fails its warm-up requests.
    """
    started = time.monotonic()
    meta_graph = read_meta_graph(path)
    providers = register_custom_ops(meta_graph)
    try:
        loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
    except Exception as error:  # noqa: BLE001 - TF raises many types while loading.
        raise ServableLoadError(f"cannot load the SavedModel in {path}: {error}") from error
    servable = Servable(name, version, path, loaded, meta_graph)
    warmed = servable.warm_up() if warm_up else 0
    logger.info(
        "loaded model %r version %d from %s in %.2fs (signatures %s%s%s)",
        name, version, path, time.monotonic() - started, sorted(servable.signatures),
        f", custom ops from {providers}" if providers else "",
        f", {warmed} warm-up requests" if warmed else "",
    )
    return servable
