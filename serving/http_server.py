"""The REST listener's protections: read timeouts, a connection cap, JSON for unparsable requests.

aiohttp parses requests; this module bounds what a client can hold:

- **header read timeout**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening (or of its previous response), else it is closed. This is
  aiohttp's keep-alive timer, which also runs while a request head is incomplete, so the same
  number also closes idle keep-alive connections.
- **body read timeout**: enforced by the request handler (:mod:`serving.rest`), which reads the
  body under a deadline and answers 408.
- **connection cap**: at most ``max_connections`` open REST connections, and at most
  ``max_connections_per_client`` from one client address; further ones get an immediate
  ``503 {"error": ...}`` and are closed, so stalled clients can never exhaust the process's file
  descriptors, nor one client lock the others out (the soft ``RLIMIT_NOFILE`` is raised to fit
  the REST and gRPC caps plus a reserve for model files, or the caps lowered to fit the limit, at
  start: :func:`fit_connection_caps`).
- **write timeout**: a response must be written (read by the client) within ``write_timeout``
  seconds; a client that does not read is disconnected, which frees the buffered response.
- refusals, unparsable requests and accept errors are logged at most once per interval
  (:mod:`serving.log_limits`), never once per event.
- requests aiohttp cannot parse (an unknown method such as ``BREW``, a bad request line) get
  TF Serving's ``{"error": ...}`` JSON body like every other error, and are logged in one line
  at INFO, without a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import resource

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving.log_limits import RateLimitedLog

logger = logging.getLogger(__name__)
events = RateLimitedLog(logger)

FD_RESERVE = 128  # Descriptors kept for model files (the manager's polls and loads), threads and logs.
LINGER_SECONDS = 1.0  # How long an unread request body is drained before closing.


def fit_connection_caps(rest_connections: int, grpc_connections: int) -> tuple[int, int]:
    """Raises the soft open-file limit to fit both connection caps + :data:`FD_RESERVE`, or
    lowers the caps (in proportion) to fit the hard limit, so connections can never take the
    descriptors the model manager needs to poll and load versions.

    Args:
      rest_connections, grpc_connections: the caps asked for (0: that API is off).

    Returns:
      ``(rest cap, grpc cap)`` to use.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = rest_connections + grpc_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, error)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return rest_connections, grpc_connections
    available = max(2, soft - FD_RESERVE)
    total = rest_connections + grpc_connections
    rest = max(1, available * rest_connections // total) if rest_connections else 0
    grpc_cap = max(1, available - rest) if grpc_connections else 0
    logger.warning("connection caps (REST %d, gRPC %d) + %d reserved descriptors do not fit the open-file "
                   "limit %d; using REST %d, gRPC %d", rest_connections, grpc_connections, FD_RESERVE, soft,
                   rest, grpc_cap)
    return rest, grpc_cap


def fit_connection_cap(max_connections: int) -> int:
    """The REST cap alone (see :func:`fit_connection_caps`)."""
    return fit_connection_caps(max_connections, 0)[0]


def _json_error(status: int, message: str, reason: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _Refusal(asyncio.Protocol):
    """Answers a connection over a cap with 503 JSON, then closes it (draining what it sent)."""

    def __init__(self, message: str):
        self._response = _json_error(503, message, "Service Unavailable")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._response)
        transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # Discarded: closing with unread data would reset the connection before the 503 is read.


class _JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering unparsable requests with ``{"error": ...}``.

    ``open_connections`` is the site's set of live handlers: a handler is in it from creation to
    ``connection_lost`` (asyncio calls ``connection_made`` only on a later loop iteration, so the
    server's own list lags behind a burst of accepts).
    """

    def __init__(self, *args, on_lost, write_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost
        self._write_timeout = write_timeout

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None
        super().connection_lost(exc)

    async def finish_response(self, request, resp, start_time):
        """Writes the response within ``write_timeout`` s, else drops the connection (and the
        buffered response with it): a client that never reads cannot hold memory."""
        try:
            async with asyncio.timeout(self._write_timeout):
                return await super().finish_response(request, resp, start_time)
        except TimeoutError:
            events.log("write_timeout", logging.INFO, "client %s did not read its response within %g s "
                       "(--rest_write_timeout_seconds); connection closed", request.remote, self._write_timeout)
            if self.transport is not None:
                self.transport.abort()
            return resp, True

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        text = (message or (str(exc) if exc else "") or f"HTTP {status}").strip().splitlines()[0][:200]
        events.log("unparsable", logging.INFO, "unparsable request from %s answered %d: %s", request.remote,
                   status, text)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        response = web.Response(status=status, text=json.dumps({"error": f"malformed HTTP request: {text}"}),
                                content_type="application/json")
        response.force_close()
        return response


class _Admission(asyncio.Protocol):
    """The first protocol of every accepted connection: hands the transport to aiohttp's handler,
    or to a :class:`_Refusal` when the client address already holds its share of connections.

    It is counted as open from creation (asyncio calls ``connection_made`` only on a later loop
    iteration, so counting there would lag behind a burst of accepts).
    """

    def __init__(self, site: "LimitedSite"):
        self._site = site
        site._open_connections.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        site = self._site
        peer = (transport.get_extra_info("peername") or ("unknown",))[0]
        if site._max_per_client and site._by_client[peer] >= site._max_per_client:
            site._open_connections.discard(self)
            events.log("refused_client", logging.WARNING, "REST connection from %s refused: it has %d open "
                       "(--rest_max_connections_per_client)", peer, site._by_client[peer])
            protocol = _Refusal(f"this client already has {site._max_per_client} open REST connections "
                                "(--rest_max_connections_per_client); reuse them or retry later")
        else:
            site._by_client[peer] += 1
            protocol = site._handler(lambda: site._release(self, peer))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:  # Closed before it was handed over.
        self._site._open_connections.discard(self)


class LimitedSite(web.TCPSite):
    """A TCP site whose connections get :class:`_JsonErrorsHandler`, a connection cap, a
    per-client cap and a response write timeout.

    Args:
      runner: the set-up ``web.AppRunner``.
      host, port: where to listen.
      max_connections: open connections allowed at once.
      header_timeout: seconds a connection may take to send a complete request head.
      max_connections_per_client: open connections allowed from one client address (0: no limit).
      write_timeout: seconds a response may take to be written to the client.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, max_connections: int, header_timeout: float,
                 max_connections_per_client: int = 0, write_timeout: float = 60.0):
        super().__init__(runner, host, port, reuse_address=True)
        self._max_connections = max_connections
        self._max_per_client = max_connections_per_client
        self._header_timeout = header_timeout
        self._write_timeout = write_timeout
        self._open_connections: set = set()
        self._by_client: collections.Counter[str] = collections.Counter()

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._open_connections) >= self._max_connections:
            events.log("refused", logging.WARNING, "REST connection refused: %d connections open "
                       "(--rest_max_connections)", len(self._open_connections))
            return _Refusal(f"this server already has {self._max_connections} open REST connections "
                            "(--rest_max_connections); retry later")
        return _Admission(self)

    def _handler(self, on_lost) -> _JsonErrorsHandler:
        return _JsonErrorsHandler(self._runner.server, loop=asyncio.get_running_loop(), access_log=None,
                                  keepalive_timeout=self._header_timeout, lingering_time=LINGER_SECONDS,
                                  on_lost=on_lost, write_timeout=self._write_timeout)

    def _release(self, admission: _Admission, peer: str) -> None:
        self._open_connections.discard(admission)
        self._by_client[peer] -= 1
        if self._by_client[peer] <= 0:
            del self._by_client[peer]

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, reuse_address=True,
                                                backlog=self._backlog)
