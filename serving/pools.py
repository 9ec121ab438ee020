"""Thread pools that keep one model, or one large request, from starving the others.

- :class:`ModelPools`: one model-call pool per model name (``num_batch_threads`` threads each).
  With one shared pool, two 7 MB texts sent to the OoD model held both threads for 7 s and every
  retrieval request waited behind them; now a model can only queue behind its own calls.
- :class:`DecodeLanes`: request decoding (JSON parsing, tensor conversion, response encoding)
  runs in a *small* lane for ordinary requests and a separate *large* lane (one thread) for
  requests above ``large_bytes`` / ``large_elements``, at most ``max_large`` of them in flight
  (more are answered UNAVAILABLE at once). Two 15.7 MiB REST bodies used to occupy both decode
  threads for 5-6 s; now ordinary requests never wait behind them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

import grpc

from serving.errors import ServingError

LARGE_BYTES = 1 << 20  # A REST body of 1 MiB or more decodes in the large lane.
LARGE_ELEMENTS = 100_000  # A gRPC request declaring this many elements or more, too.
MAX_LARGE_IN_FLIGHT = 4  # Large requests decoding or waiting to decode at once.


class ModelPools:
    """Model-call thread pools, one per model name, created on first use.

    Args:
      threads_per_model: threads of each model's pool (``--num_batch_threads``).
    """

    def __init__(self, threads_per_model: int):
        self._threads = threads_per_model
        self._pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def pool(self, model_name: str) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            pool = self._pools.get(model_name)
            if pool is None:
                pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix=f"model-{model_name[:20]}")
                self._pools[model_name] = pool
            return pool

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=wait)


class DecodeLanes:
    """Runs decode work off the event loop, large requests in their own bounded lane.

    Args:
      small_threads: threads for ordinary requests.
      max_large: large requests admitted at once (decoding or queued for the one large thread).
    """

    def __init__(self, small_threads: int = 2, max_large: int = MAX_LARGE_IN_FLIGHT):
        self.small = concurrent.futures.ThreadPoolExecutor(max_workers=small_threads, thread_name_prefix="decode")
        self.large = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-large")
        self._max_large = max_large
        self._large_in_flight = 0

    def admit(self, large: bool) -> "_Lane":
        """Returns the lane for a request (use as ``async with``; its ``run`` runs a function).

        Raises:
          ServingError: UNAVAILABLE when ``max_large`` large requests are already in flight.
        """
        if large and self._large_in_flight >= self._max_large:
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._large_in_flight} large requests (over {LARGE_BYTES} bytes or {LARGE_ELEMENTS} elements) "
                "are already being decoded; retry later or send smaller requests")
        return _Lane(self, large)

    def shutdown(self, wait: bool = True) -> None:
        self.small.shutdown(wait=wait)
        self.large.shutdown(wait=wait)


class _Lane:
    def __init__(self, lanes: DecodeLanes, large: bool):
        self._lanes, self._large = lanes, large
        self.executor = lanes.large if large else lanes.small

    async def __aenter__(self) -> "_Lane":
        if self._large:
            self._lanes._large_in_flight += 1  # Only touched on the event loop.
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._large:
            self._lanes._large_in_flight -= 1

    async def run(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
