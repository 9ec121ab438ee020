"""The REST listener's protections: read timeouts, a connection cap, JSON for unparsable requests.

aiohttp parses requests; this module bounds what a client can hold:

- **header read timeout**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening (or of its previous response), else it is closed. This is
  aiohttp's keep-alive timer, which also runs while a request head is incomplete, so the same
  number also closes idle keep-alive connections.
- **body read timeout**: enforced by the request handler (:mod:`serving.rest`), which reads the
  body under a deadline and answers 408.
- **connection cap**: at most ``max_connections`` open REST connections; further ones get an
  immediate ``503 {"error": ...}`` and are closed, so stalled clients can never exhaust the
  process's file descriptors (the soft ``RLIMIT_NOFILE`` is raised to fit the cap, or the cap
  lowered to fit the limit, at start).
- requests aiohttp cannot parse (an unknown method such as ``BREW``, a bad request line) get
  TF Serving's ``{"error": ...}`` JSON body like every other error, and are logged in one line
  at INFO, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

FD_RESERVE = 128  # Descriptors kept for model files, gRPC connections and logs.
LINGER_SECONDS = 1.0  # How long an unread request body is drained before closing.


def fit_connection_cap(max_connections: int) -> int:
    """Raises the soft open-file limit to fit ``max_connections`` + a reserve, or lowers the cap.

    Returns:
      The connection cap to use (``max_connections`` unless the hard limit is too low).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, error)
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = max(1, soft - FD_RESERVE)
        logger.warning("--rest_max_connections %d does not fit the open-file limit %d; using %d",
                       max_connections, soft, cap)
        return cap
    return max_connections


def _json_error(status: int, message: str, reason: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _Refusal(asyncio.Protocol):
    """Answers a connection over the cap with 503 JSON, then closes it (draining what it sent)."""

    def __init__(self, max_connections: int):
        self._response = _json_error(
            503, f"this server already has {max_connections} open REST connections (--rest_max_connections); "
                 "retry later", "Service Unavailable")

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

    def __init__(self, *args, open_connections: set, **kwargs):
        super().__init__(*args, **kwargs)
        self._open_connections = open_connections
        open_connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._open_connections.discard(self)
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        text = (message or (str(exc) if exc else "") or f"HTTP {status}").strip().splitlines()[0]
        logger.info("unparsable request from %s answered %d: %s", request.remote, status, text)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        response = web.Response(status=status, text=json.dumps({"error": f"malformed HTTP request: {text}"}),
                                content_type="application/json")
        response.force_close()
        return response


class LimitedSite(web.TCPSite):
    """A TCP site whose connections get :class:`_JsonErrorsHandler` and a connection cap.

    Args:
      runner: the set-up ``web.AppRunner``.
      host, port: where to listen.
      max_connections: open connections allowed at once.
      header_timeout: seconds a connection may take to send a complete request head.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, max_connections: int, header_timeout: float):
        super().__init__(runner, host, port, reuse_address=True)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._open_connections: set = set()

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._open_connections) >= self._max_connections:
            logger.warning("REST connection refused: %d connections open (--rest_max_connections)",
                           len(self._open_connections))
            return _Refusal(self._max_connections)
        return _JsonErrorsHandler(self._runner.server, loop=asyncio.get_running_loop(), access_log=None,
                                  keepalive_timeout=self._header_timeout, lingering_time=LINGER_SECONDS,
                                  open_connections=self._open_connections)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, reuse_address=True,
                                                backlog=self._backlog)
