"""TF Serving's REST API on aiohttp.

Endpoints (paths matched case-insensitively with TF Serving's own regular expressions):

- ``GET /v1/models/NAME[/versions/N|/labels/L]``: model version status.
- ``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``: the signature defs.
- ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``: row (``instances``) or columnar
  (``inputs``) predict; see :mod:`serving.json_codec`.
- ``GET /monitoring/stats``: this server's request statistics (not part of TF Serving's API).
- ``GET /monitoring/prometheus/metrics`` (or the configured path): Prometheus metrics, when
  ``--monitoring_config_file`` enables them (see :mod:`serving.metrics`).

Every error is ``{"error": "<message>"}`` with TF Serving's HTTP status for its code (400 invalid
argument, 404 unknown model / version / label, 504 timeout, ...); an oversize body is 413, a body
that does not arrive within ``--rest_body_read_timeout_seconds`` is 408. JSON parsing, conversion
to arrays and response rendering run in a thread pool, never on the event loop; bodies of 1 MiB
or more in a lane of their own (:class:`serving.pools.DecodeLanes`), so they never delay ordinary
requests. A row-format body with more instances than the batch queue holds is refused before its
values are converted. Every failed predict, also one that fails before the model (bad JSON, an
unknown model), is counted in the statistics and Prometheus (model ``(unknown)`` when the name is
not served, so clients cannot grow the label set).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from urllib.parse import unquote

import grpc
from aiohttp import web

from serving import json_codec, metrics
from serving.errors import ServingError, invalid_argument
from serving.manager import ModelManager
from serving.pools import LARGE_BYTES, DecodeLanes
from serving.predictor import Predictor
from serving.responses import metadata_json, model_metadata, model_status, status_json

logger = logging.getLogger(__name__)

# tensorflow_serving/model_servers/http_rest_api_util.cc.
PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
STATS_PATH = "/monitoring/stats"
JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class RestOptions:
    """What the REST handlers need besides the manager and the predictor.

    Attributes:
      max_body_bytes: largest request body (413 beyond).
      body_timeout: seconds to receive a request body once its head arrived (408 beyond).
      decode_lanes: threads that parse JSON and render responses (never the event loop).
      metrics: the Prometheus metrics (``None``: the endpoint answers 404).
      metrics_path: where they are served.
    """

    max_body_bytes: int
    body_timeout: float
    decode_lanes: DecodeLanes
    metrics: object | None = None
    metrics_path: str = ""


def create_app(manager: ModelManager, predictor: Predictor, options: RestOptions) -> web.Application:
    """Builds the aiohttp application (serve it with ``web.AppRunner`` and a
    :class:`serving.http_server.LimitedSite`)."""
    handler = _RestHandler(manager, predictor, options)
    app = web.Application(client_max_size=options.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", handler.dispatch)
    return app


def _error_response(error: ServingError) -> web.Response:
    response = web.Response(status=error.http_status, text=json.dumps({"error": error.message}),
                            content_type=JSON_TYPE)
    if error.http_status == 408:
        response.force_close()
    return response


class _RestHandler:
    def __init__(self, manager: ModelManager, predictor: Predictor, options: RestOptions):
        self._manager = manager
        self._predictor = predictor
        self._options = options

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ServingError as error:
            if error.http_status >= 500:
                logger.warning("%s %s -> %d: %s", request.method, request.path, error.http_status, error)
            return _error_response(error)
        except ConnectionError as error:  # The client went away mid-request: nothing to answer.
            logger.info("client %s disconnected during %s %s (%s)", request.remote, request.method, request.path,
                        type(error).__name__)
            return _error_response(ServingError(grpc.StatusCode.CANCELLED, "client disconnected"))
        except Exception as error:  # noqa: BLE001 - never let a request take the server down.
            logger.exception("unexpected error serving %s %s", request.method, request.path)
            return _error_response(ServingError(grpc.StatusCode.INTERNAL, f"internal error: {error}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if request.method == "GET" and path.rstrip("/") == STATS_PATH:
            return web.Response(text=json.dumps(self._predictor.stats.summary()), content_type=JSON_TYPE)
        if request.method == "GET" and path.rstrip("/") in (self._options.metrics_path, metrics.DEFAULT_PATH):
            if self._options.metrics is None or path.rstrip("/") != self._options.metrics_path:
                raise ServingError(grpc.StatusCode.NOT_FOUND, "Prometheus metrics are off; enable them with "
                                   "--monitoring_config_file (prometheus_config { enable: true })")
            return web.Response(body=self._options.metrics.render(),
                                headers={"Content-Type": self._options.metrics.content_type})
        if request.method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, method = match.groups()
                return await self._predict(request, *_model_ref(name, version, label), method.lower())
        elif request.method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if match and match.group(1):
                name, version, label, subresource = match.groups()
                ref = _model_ref(name, version, label)
                if subresource:
                    servable = self._manager.resolve(*ref)
                    return web.Response(text=metadata_json(model_metadata(servable)), content_type=JSON_TYPE)
                return web.Response(text=status_json(model_status(self._manager, *ref)), content_type=JSON_TYPE)
            if match:
                raise invalid_argument("Missing model name in request.")
        if not path.lower().startswith("/v1/"):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {request.method} {path}")
        raise invalid_argument(f"Malformed request: {request.method} {path}")

    async def _predict(self, request: web.Request, name: str, version: int | None, label: str | None,
                       method: str) -> web.Response:
        started = time.perf_counter()
        key = ["rest", known_model(self._manager, name), "" if version is None else version, UNKNOWN]
        try:
            if method != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"':{method}' is not implemented by this server; use ':predict'")
            body = await self._read_body(request)
            servable = self._manager.resolve(name, version, label)
            key[1:3] = servable.name, servable.version
            async with self._options.decode_lanes.admit(len(body) >= LARGE_BYTES) as lane:
                parsed = await lane.run(json_codec.parse_predict_body, body, self._predictor.max_rows)
                del body
                if parsed.signature_name in servable.signatures:
                    key[3] = parsed.signature_name
                signature = servable.signature(parsed.signature_name)
                arrays = await lane.run(json_codec.request_arrays, parsed, signature, self._predictor.max_rows)
                await lane.run(self._predictor.check_strings, servable, arrays)
                result = await self._predictor.predict(servable, parsed.signature_name, arrays)
                del arrays
                text = await lane.run(json_codec.render_response, result.outputs, parsed.format)
        except ServingError as error:
            self._predictor.stats.record_error(tuple(key), error.code.name)
            raise
        total = time.perf_counter() - started
        timing = result.timing
        self._predictor.stats.record(tuple(key), total, timing.model_seconds, timing.queue_seconds, timing.batch_rows)
        headers = {"Server-Timing": (
            f"model;dur={timing.model_seconds * 1e3:.3f}, queue;dur={timing.queue_seconds * 1e3:.3f}, "
            f"total;dur={total * 1e3:.3f}, batch;desc=\"{timing.batch_rows} rows\""
        )}
        return web.Response(text=text, content_type=JSON_TYPE, headers=headers)

    async def _read_body(self, request: web.Request) -> bytes:
        limit, timeout = self._options.max_body_bytes, self._options.body_timeout
        too_large = ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body exceeds the limit of {limit} bytes "
            f"(received Content-Length {request.content_length}); raise --max_request_bytes or send "
            "smaller batches",
            http_status=413,
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            async with asyncio.timeout(timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except TimeoutError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request body did not arrive within {timeout:g} s (--rest_body_read_timeout_seconds)",
                http_status=408,
            ) from None


UNKNOWN = "(unknown)"


def known_model(manager: ModelManager, name: str) -> str:
    """``name`` if the server serves it, else ``(unknown)`` (statistics keys and metric labels
    must not grow with whatever names clients send)."""
    return name if name in manager.model_names() else UNKNOWN


def _model_ref(name: str, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
    if version is not None and label is not None:
        raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    try:
        parsed_version = int(version) if version else None
    except ValueError:
        raise invalid_argument(f"Failed to convert version: {version} to numeric.") from None
    return unquote(name), parsed_version, unquote(label) if label else None
