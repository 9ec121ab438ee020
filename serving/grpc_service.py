"""TF Serving's gRPC API (grpc.aio), with the servicer bases from tensorflow-serving-api.

- ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata`` (``Classify``,
  ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED, without a logged traceback).
- ``tensorflow.serving.ModelService``: ``GetModelStatus``, and ``HandleReloadConfigRequest``
  (replaces the served models with the request's ``ModelServerConfig``, as TF Serving does;
  opt-in with ``--enable_reload_config_rpc``, PERMISSION_DENIED otherwise; an empty model list
  is refused, as the config-file loader refuses it).

Request tensors are decoded in a thread pool with their declared sizes checked first
(:mod:`serving.tensor_proto`): a request declaring more rows than the batch queue holds is
refused before any value is decoded, and requests declaring many elements decode in a lane of
their own (:class:`serving.pools.DecodeLanes`). Every failed Predict is counted, also one that
fails before the model.

Existing clients (``prediction_service_pb2_grpc.PredictionServiceStub`` etc.) work unchanged.
Errors abort the call with TF Serving's status codes and a message naming the problem.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow.core.framework import types_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import tensor_proto
from serving.errors import ServingError, invalid_argument, too_many_rows
from serving.manager import ModelManager
from serving.model_config import ModelConfigError, server_config_models
from serving.pools import LARGE_ELEMENTS, DecodeLanes
from serving.predictor import Predictor, select_outputs
from serving.responses import model_metadata, model_spec, model_status
from serving.rest import UNKNOWN, known_model
from serving.signature import DEFAULT_SIGNATURE
from serving.tensor_proto import DEFAULT_MAX_TENSOR_ELEMENTS

logger = logging.getLogger(__name__)


def _model_ref(spec) -> tuple[str, int | None, str | None]:
    if not spec.name:
        raise invalid_argument("model_spec.name is required")
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


async def _abort(context: grpc.aio.ServicerContext, error: ServingError):
    await context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` and ``GetModelMetadata`` over the shared manager and predictor."""

    def __init__(self, manager: ModelManager, predictor: Predictor, decode_lanes: DecodeLanes,
                 max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS):
        self._manager = manager
        self._predictor = predictor
        self._decode_lanes = decode_lanes
        self._max_tensor_elements = max_tensor_elements

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        spec = request.model_spec
        key = ["grpc", known_model(self._manager, spec.name), spec.version.value if spec.HasField("version") else "",
               UNKNOWN]
        try:
            servable = self._manager.resolve(*_model_ref(spec))
            key[1:3] = servable.name, servable.version
            signature_name = spec.signature_name or DEFAULT_SIGNATURE
            if signature_name in servable.signatures:
                key[3] = signature_name
            signature = servable.signature(signature_name)
            elements = check_declared_sizes(request, signature, self._predictor.max_rows, self._max_tensor_elements)
            async with self._decode_lanes.admit(elements >= LARGE_ELEMENTS) as lane:
                inputs = await lane.run(_decode_inputs, request, self._max_tensor_elements)
                await lane.run(self._predictor.check_strings, servable, inputs)
                remaining = context.time_remaining()
                result = await self._predictor.predict(servable, signature_name, inputs, remaining)
                del inputs
                outputs = select_outputs(result.outputs, list(request.output_filter))
                response = await lane.run(_encode_response, outputs, model_spec(servable, signature_name))
        except ServingError as error:
            self._predictor.stats.record_error(tuple(key), error.code.name)
            await _abort(context, error)
        timing = result.timing
        total = time.perf_counter() - started
        self._predictor.stats.record(tuple(key), total, timing.model_seconds, timing.queue_seconds, timing.batch_rows)
        context.set_trailing_metadata((
            ("server-timing", f"model;dur={timing.model_seconds * 1e3:.3f}, total;dur={total * 1e3:.3f}"),
        ))
        return response

    async def _unimplemented(self, method: str, context: grpc.aio.ServicerContext):
        await _abort(context, ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                           f"{method} is not implemented by this server; use Predict"))

    async def Classify(self, request, context: grpc.aio.ServicerContext):
        await self._unimplemented("Classify", context)

    async def Regress(self, request, context: grpc.aio.ServicerContext):
        await self._unimplemented("Regress", context)

    async def MultiInference(self, request, context: grpc.aio.ServicerContext):
        await self._unimplemented("MultiInference", context)

    async def GetModelMetadata(self, request, context: grpc.aio.ServicerContext):
        try:
            servable = self._manager.resolve(*_model_ref(request.model_spec))
            return model_metadata(servable, list(request.metadata_field))
        except ServingError as error:
            await _abort(context, error)


def check_declared_sizes(request: predict_pb2.PredictRequest, signature, max_rows: int | None,
                         max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> int:
    """Checks the request's tensors before any value is decoded (constant time per tensor).

    Each tensor's dtype against the signature's, its declared shape and value count
    (:func:`tensor_proto.checked_shape`);
    then, when every input declares the same first dimension (as the batcher counts rows), it
    must not exceed ``max_rows``.

    Returns:
      The total number of elements declared (picks the decode lane).

    Raises:
      ServingError: INVALID_ARGUMENT for too many rows or a tensor that fails its checks.
    """
    for name, proto in request.inputs.items():
        if name in signature.inputs and proto.dtype != signature.inputs[name].dtype:
            expected = signature.inputs[name]
            received = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype
            raise invalid_argument(f"input {name!r} expects {expected.dtype_name}, received a tensor of {received}")
    shapes = [tensor_proto.checked_shape(name, proto, max_elements) for name, proto in request.inputs.items()]
    first = {shape[0] if shape else -1 for shape in shapes}
    if max_rows and len(first) == 1 and first.pop() > max_rows:
        raise too_many_rows(shapes[0][0], max_rows)
    return sum(math.prod(shape) for shape in shapes)


def _decode_inputs(request: predict_pb2.PredictRequest, max_elements: int) -> dict[str, np.ndarray]:
    """The request's tensors as arrays (after :func:`check_declared_sizes`)."""
    return {name: tensor_proto.to_ndarray(name, proto, max_elements) for name, proto in request.inputs.items()}


def _encode_response(outputs: dict[str, np.ndarray], spec) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``GetModelStatus``, and ``HandleReloadConfigRequest`` when ``allow_reload`` (off by default:
    the call is unauthenticated and replaces every served model)."""

    def __init__(self, manager: ModelManager, allow_reload: bool = False):
        self._manager = manager
        self._allow_reload = allow_reload

    async def GetModelStatus(self, request, context: grpc.aio.ServicerContext):
        try:
            return model_status(self._manager, *_model_ref(request.model_spec))
        except ServingError as error:
            await _abort(context, error)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        context: grpc.aio.ServicerContext):
        if not self._allow_reload:
            await _abort(context, ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                "HandleReloadConfigRequest is disabled on this server: it is unauthenticated and replaces "
                "every served model; start the server with --enable_reload_config_rpc to allow it"))
        config: model_server_config_pb2.ModelServerConfig = request.config
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = server_config_models(config, source="ReloadConfigRequest")
        except ModelConfigError as error:
            await _abort(context, invalid_argument(str(error)))
        await asyncio.to_thread(self._manager.reconfigure, configs)
        response.status.error_code = grpc.StatusCode.OK.value[0]
        return response


def add_services(server: grpc.aio.Server, manager: ModelManager, predictor: Predictor,
                 decode_lanes: DecodeLanes, max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
                 allow_reload: bool = False) -> None:
    """Registers both TF Serving services on ``server``.

    Args:
      server: the grpc.aio server.
      manager, predictor: shared with the REST API.
      decode_lanes: threads that turn request tensors into arrays (off the event loop).
      max_tensor_elements: the largest element count accepted per request tensor.
      allow_reload: whether ``HandleReloadConfigRequest`` may replace the served models.
    """
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, predictor, decode_lanes, max_tensor_elements), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager, allow_reload), server)
