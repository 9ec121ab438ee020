"""The model server: one process, one event loop, REST (aiohttp) and gRPC (grpc.aio) sharing one
model manager, one batcher per model version and signature, one model-call thread pool per model
and decode lanes that keep large requests apart (:mod:`serving.pools`).

Connections are bounded on both ports: REST by :mod:`serving.http_server`; gRPC by channel
arguments (:data:`DEFAULT_GRPC_ARGUMENTS`: a connection cap, an idle timeout, a handshake timeout,
keepalive and a stream cap per connection; ``--grpc_channel_arguments`` overrides them). Both
caps plus a descriptor reserve for the model manager fit the open-file limit.

Use :func:`run_server` for a blocking server (what ``python -m serving`` does), or
:class:`ModelServer` inside an existing event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import signal
import socket

import grpc
from aiohttp import web

from serving.batching_config import BatchingOptions
from serving.grpc_service import add_services
from serving.http_server import LimitedSite, events, fit_connection_caps
from serving.log_limits import install_accept_error_handler
from serving.manager import ModelManager
from serving.metrics import MonitoringOptions, PrometheusMetrics
from serving.model_config import ModelConfig, ModelConfigError, load_model_config_file
from serving.pools import DecodeLanes, ModelPools
from serving.predictor import Predictor
from serving.rest import RestOptions, create_app
from serving.servable import load_servable
from serving.stats import RequestStats
from serving.tensor_proto import DEFAULT_MAX_TENSOR_ELEMENTS

logger = logging.getLogger(__name__)

# gRPC server channel arguments (``--grpc_channel_arguments`` overrides any of them).
DEFAULT_GRPC_ARGUMENTS = {
    "grpc.max_connection_idle_ms": 60_000,  # Close connections without calls for 60 s (GOAWAY).
    "grpc.server_handshake_timeout_ms": 10_000,  # A TCP connection must speak HTTP/2 within 10 s.
    "grpc.max_concurrent_streams": 100,  # Calls in flight per connection.
    "grpc.keepalive_time_ms": 60_000,  # Ping idle peers every 60 s ...
    "grpc.keepalive_timeout_ms": 20_000,  # ... and drop those that do not answer in 20 s.
    # Reconnect every 30 min; calls still running 60 s after the GOAWAY are cut, which bounds how
    # long a client that never reads its response can hold it (grpc.aio has no write timeout).
    "grpc.max_connection_age_ms": 1_800_000,
    "grpc.max_connection_age_grace_ms": 60_000,
}


def parse_grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """Parses TF Serving's ``--grpc_channel_arguments`` (``key=value,key=value``; integer values
    become ints).

    Raises:
      ValueError: an entry without ``=`` or a key that does not start with ``grpc.``.
    """
    parsed = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.startswith("grpc."):
            raise ValueError(f"--grpc_channel_arguments: expected grpc.<name>=<value> entries separated by commas, "
                             f"received {entry!r}")
        parsed.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return tuple(parsed)


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Everything about the server except which models it serves.

    Attributes:
      host: interface both servers bind (127.0.0.1 unless told otherwise).
      port: gRPC port (0 disables gRPC).
      rest_api_port: REST port (0 disables REST).
      file_system_poll_wait_seconds: seconds between polls of the base paths for new versions;
        0 polls once at start.
      model_config_file_poll_wait_seconds: seconds between re-reads of ``--model_config_file``;
        0 reads it once.
      rest_api_timeout_in_ms: per-request timeout (queue wait + model call) for REST, and the
        upper bound for gRPC (a shorter client deadline wins); 0 disables it.
      max_request_bytes: largest REST body and gRPC message accepted.
      max_num_load_retries: retries (on later polls) of a version that failed to load before giving
        up on it (tensorflow_model_server's flag; attempts = retries + 1).
      version_settle_seconds: a new version directory is loaded only once its newest file is
        this old (protects against non-atomic copies; 0 disables).
      enable_model_warmup: replay ``assets.extra/tf_serving_warmup_requests`` when loading.
      grpc_shutdown_grace_seconds: how long in-flight calls may finish on shutdown.
      batching: request batching options.
      max_tensor_elements: the largest element count of one gRPC request tensor (checked against
        the declared shape before anything is allocated).
      rest_header_read_timeout_seconds: a REST connection must send a complete request head within
        this long of opening or of its previous response (also the keep-alive idle timeout).
      rest_body_read_timeout_seconds: a request body must arrive within this long (408 beyond).
      rest_max_connections: open REST connections at once; more get 503 and are closed.
      enable_reload_config_rpc: allow gRPC ``HandleReloadConfigRequest`` (unauthenticated).
      monitoring: Prometheus endpoint options (``--monitoring_config_file``).
      rest_max_connections_per_client: open REST connections from one client address (0: no
        limit, e.g. behind a proxy that is the only client).
      rest_write_timeout_seconds: a response must be written within this long; a client that
        does not read is disconnected (which frees its buffered response).
      grpc_max_connections: open gRPC connections at once (more are closed at accept).
      grpc_channel_arguments: ``(key, value)`` gRPC server arguments overriding
        :data:`DEFAULT_GRPC_ARGUMENTS`.
      max_string_bytes: the longest string element of a request (400 beyond); an export's
        ``assets.extra/serving_limits.json`` may lower it for its model; 0: no limit.
    """

    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    file_system_poll_wait_seconds: float = 1.0
    model_config_file_poll_wait_seconds: float = 0.0
    rest_api_timeout_in_ms: int = 30_000
    max_request_bytes: int = 16 * 1024 * 1024
    max_num_load_retries: int = 2
    version_settle_seconds: float = 1.0
    enable_model_warmup: bool = True
    grpc_shutdown_grace_seconds: float = 5.0
    batching: BatchingOptions = dataclasses.field(default_factory=BatchingOptions)
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
    rest_header_read_timeout_seconds: float = 30.0
    rest_body_read_timeout_seconds: float = 60.0
    rest_max_connections: int = 1000
    enable_reload_config_rpc: bool = False
    monitoring: MonitoringOptions = dataclasses.field(default_factory=MonitoringOptions)
    rest_max_connections_per_client: int = 250
    rest_write_timeout_seconds: float = 60.0
    grpc_max_connections: int = 1000
    grpc_channel_arguments: tuple = ()
    max_string_bytes: int = 1 << 20

    def __post_init__(self):
        for name in ("rest_header_read_timeout_seconds", "rest_body_read_timeout_seconds",
                     "rest_write_timeout_seconds"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"--{name} must be a finite number > 0, received {getattr(self, name)}")
        for name in ("file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds", "version_settle_seconds"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name} must be a finite number, received {getattr(self, name)}")
        for name in ("rest_max_connections", "max_tensor_elements", "grpc_max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, received {getattr(self, name)}")
        for name in ("rest_max_connections_per_client", "max_string_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0: no limit), received {getattr(self, name)}")
        if self.port == 0 and self.rest_api_port == 0:
            raise ValueError("both --port and --rest_api_port are 0: enable gRPC, REST or both")
        for name in ("port", "rest_api_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name} must be in [0, 65535], received {getattr(self, name)}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"--max_request_bytes must be >= 1024, received {self.max_request_bytes}")
        if self.rest_api_timeout_in_ms < 0:
            raise ValueError(f"--rest_api_timeout_in_ms must be >= 0, received {self.rest_api_timeout_in_ms}")


class ModelServer:
    """Serves ``configs`` over REST and gRPC until :meth:`stop`.

    Args:
      configs: the models to serve.
      options: ports, polling, limits, batching.
      model_config_file: the file ``configs`` came from, re-read every
        ``options.model_config_file_poll_wait_seconds`` if that is > 0.
    """

    def __init__(self, configs: list[ModelConfig], options: ServerOptions, model_config_file: str | None = None):
        self.options = options
        self._model_config_file = model_config_file
        loader = functools.partial(load_servable, warm_up=options.enable_model_warmup)
        self.manager = ModelManager(configs, options.file_system_poll_wait_seconds,
                                    options.max_num_load_retries + 1, loader, options.version_settle_seconds)
        self.metrics = PrometheusMetrics(self.manager) if options.monitoring.prometheus_enabled else None
        self.stats = RequestStats(self.metrics)
        self._pools = ModelPools(options.batching.num_batch_threads)
        self._decode_lanes = DecodeLanes()
        timeout = options.rest_api_timeout_in_ms / 1e3 if options.rest_api_timeout_in_ms else None
        self.predictor = Predictor(options.batching, self._pools, self.stats, timeout, options.max_string_bytes or None)
        self._grpc_server: grpc.aio.Server | None = None
        self._rest_runner: web.AppRunner | None = None
        self._config_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Binds the gRPC port and checks the REST port, loads the initial versions (blocking this
        coroutine, not the loop), then starts serving both APIs.

        Raises:
          OSError: a port cannot be bound (e.g. already in use), before any model is loaded.
        """
        opts = self.options
        install_accept_error_handler(asyncio.get_running_loop(), events)
        rest_cap, grpc_cap = fit_connection_caps(opts.rest_max_connections if opts.rest_api_port else 0,
                                                 opts.grpc_max_connections if opts.port else 0)
        if opts.port:
            arguments = {**DEFAULT_GRPC_ARGUMENTS, "grpc.max_allowed_incoming_connections": grpc_cap,
                         **dict(opts.grpc_channel_arguments)}
            arguments.update({"grpc.max_receive_message_length": opts.max_request_bytes,
                              "grpc.max_send_message_length": -1, "grpc.so_reuseport": 0})
            logger.info("gRPC server arguments: %s", arguments)
            self._grpc_server = grpc.aio.server(options=list(arguments.items()))
            add_services(self._grpc_server, self.manager, self.predictor, self._decode_lanes,
                         opts.max_tensor_elements, opts.enable_reload_config_rpc)
            address = f"{opts.host}:{opts.port}"
            try:
                bound = self._grpc_server.add_insecure_port(address)
            except RuntimeError:  # Newer grpcio raises instead of returning 0.
                bound = 0
            if bound == 0:
                raise OSError(f"cannot bind gRPC to {address}: the port is in use or the address is not available")
        if opts.rest_api_port:
            _check_bindable(opts.host, opts.rest_api_port)
        await asyncio.to_thread(self.manager.start)
        if self._grpc_server is not None:
            await self._grpc_server.start()
            logger.info("Running gRPC ModelServer at %s:%d ...", opts.host, opts.port)
        if opts.rest_api_port:
            rest_options = RestOptions(opts.max_request_bytes, opts.rest_body_read_timeout_seconds,
                                       self._decode_lanes, self.metrics, opts.monitoring.prometheus_path)
            app = create_app(self.manager, self.predictor, rest_options)
            self._rest_runner = web.AppRunner(app, access_log=None)
            await self._rest_runner.setup()
            site = LimitedSite(self._rest_runner, opts.host, opts.rest_api_port, rest_cap,
                               opts.rest_header_read_timeout_seconds,
                               min(opts.rest_max_connections_per_client, rest_cap),
                               opts.rest_write_timeout_seconds)
            await site.start()
            logger.info("Exporting HTTP/REST API at:%s:%d ...", opts.host, opts.rest_api_port)
            if self.metrics is not None:
                logger.info("Prometheus metrics at %s", opts.monitoring.prometheus_path)
        if self._model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._config_task = asyncio.get_running_loop().create_task(self._watch_config_file())

    async def stop(self) -> None:
        """Stops accepting requests, lets in-flight ones finish (gRPC grace period), unloads."""
        if self._config_task is not None:
            self._config_task.cancel()
        if self._grpc_server is not None:
            await self._grpc_server.stop(self.options.grpc_shutdown_grace_seconds)
        if self._rest_runner is not None:
            await self._rest_runner.cleanup()
        await asyncio.to_thread(self.manager.stop)
        self._pools.shutdown(wait=True)
        self._decode_lanes.shutdown(wait=True)

    async def _watch_config_file(self) -> None:
        path = self._model_config_file
        last_mtime = os.path.getmtime(path)
        while True:
            await asyncio.sleep(self.options.model_config_file_poll_wait_seconds)
            try:
                mtime = os.path.getmtime(path)
                if mtime == last_mtime:
                    continue
                last_mtime = mtime
                configs = load_model_config_file(path)
            except (OSError, ModelConfigError) as error:
                logger.error("ignoring the changed model config file (keeping the current models): %s", error)
                continue
            logger.info("model config file %s changed; applying it", path)
            await asyncio.to_thread(self.manager.reconfigure, configs)


def _check_bindable(host: str, port: int) -> None:
    """Raises OSError naming the address if ``host:port`` cannot be bound (checked before loading)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot bind REST to {host}:{port}: {error.strerror or error}") from None


def run_server(configs: list[ModelConfig], options: ServerOptions, model_config_file: str | None = None) -> None:
    """Runs the server until SIGINT or SIGTERM, then shuts it down gracefully."""

    async def serve() -> None:
        server = ModelServer(configs, options, model_config_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
            await stop.wait()
            logger.info("shutting down")
        finally:
            await server.stop()

    asyncio.run(serve())
