"""Log lines that clients can trigger, at most once per interval (a flood must not fill the disk).

A client can make the server log on every connection (refusals over a connection cap, accept
errors when descriptors run out, unparsable requests, clients that disconnect or never read).
Logging each one let a probe write 214,760 tracebacks (95 MB) in 58 s. :class:`RateLimitedLog`
writes the first event of each kind at once and then at most one line per ``interval_seconds``,
saying how many similar events it left out::

    REST connection refused: 1000 connections open (--rest_max_connections) (+3,410 similar in the last 10 s)

:func:`install_accept_error_handler` routes asyncio's "socket.accept() out of system resource"
errors (``EMFILE``: no descriptors left; asyncio logs each with a traceback, many times per
second) through one such limiter, without the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

DEFAULT_INTERVAL_SECONDS = 10.0
_ACCEPT_ERROR = "socket.accept() out of system resource"


class RateLimitedLog:
    """Logs each kind of event at most once per ``interval_seconds`` (thread-safe).

    Args:
      logger: where lines go.
      interval_seconds: the shortest gap between two lines of one kind.
      clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(self, logger: logging.Logger, interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 clock=time.monotonic):
        self._logger = logger
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, kind: str, level: int, message: str, *args) -> bool:
        """Logs ``message % args`` unless a ``kind`` line was written less than an interval ago.

        Returns:
          True if the line was written.
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            suppressed = self._suppressed.pop(kind, 0)
            self._last[kind] = now
        if suppressed:
            message += f" (+{suppressed:,} similar in the last {self._interval:g} s)"
        self._logger.log(level, message, *args)
        return True


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, log: RateLimitedLog) -> None:
    """Logs the loop's accept errors (EMFILE ...) through ``log``, once per interval, no traceback;
    every other loop error goes to the previous (or default) handler unchanged."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == _ACCEPT_ERROR:
            error = context.get("exception")
            log.log("accept", logging.ERROR, "cannot accept connections: %s; new connections wait until "
                    "descriptors are free (the connection caps keep a reserve for the models)", error)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
