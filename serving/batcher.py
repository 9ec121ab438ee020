"""A request batcher: merges concurrent predict requests into one model call, like TF Serving's.

One :class:`Batcher` exists per loaded model version and signature. Requests are queued on the
event loop; up to ``num_batch_threads`` drain tasks each take the queued requests that fit in
``max_batch_size`` rows, concatenate them along the first axis, run ONE model call in the thread
pool, and split the outputs back. While a call runs, new requests queue up and form the next
batch, so under load the batch size grows by itself and the per-row cost of the model call
(dominated on CPU by fixed per-call overhead) is shared; at low load a request runs alone at once
(``batch_timeout_micros=0``).

A request only ever fails for its own reasons: requests are validated before queueing; if a
merged call fails, each request of the batch is re-run alone; if a model's outputs cannot be
split by rows (no batch dimension), the requests are re-run alone too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections import deque

import grpc
import numpy as np

from serving.batching_config import BatchingOptions
from serving.errors import ServingError, too_many_rows
from serving.servable import Servable


@dataclasses.dataclass(frozen=True)
class Timing:
    """Where one request's time went inside the batcher (seconds).

    Attributes:
      queue_seconds: from enqueue until its batch's model call started.
      model_seconds: the duration of the model call it was part of.
      batch_rows: rows in that model call (this request's and the others merged with it).
    """

    queue_seconds: float
    model_seconds: float
    batch_rows: int


@dataclasses.dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int  # 0 = not mergeable (no common first dimension); runs alone.
    key: tuple
    future: asyncio.Future
    enqueued_at: float


class Batcher:
    """Queues requests for one servable signature and runs them in merged model calls.

    Args:
      servable: the loaded model version.
      signature_name: the signature every request of this batcher calls.
      options: batch size, timeout, parallelism, queue bound, padding.
      executor: the thread pool model calls run in (never the event loop).
      on_batch: optional callback ``(rows)`` after each successful model call.
    """

    def __init__(self, servable: Servable, signature_name: str, options: BatchingOptions,
                 executor: concurrent.futures.Executor, on_batch=None):
        self._on_batch = on_batch
        self._servable = servable
        self._signature_name = signature_name
        self._options = options
        self._executor = executor
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._active = 0
        self._full = asyncio.Event()
        self._drainers: set[asyncio.Task] = set()

    def submit(self, inputs: dict[str, np.ndarray]) -> asyncio.Future:
        """Queues validated inputs; returns a future of ``(outputs, Timing)``.

        Cancelling the future (e.g. on a request timeout) drops the request if its batch has not
        started yet.

        Raises:
          ServingError: INVALID_ARGUMENT when the request alone has more rows than the queue holds
            (it could never run: retrying cannot help); UNAVAILABLE when the queue is full
            (``max_enqueued_batches``) with other requests.
        """
        loop = asyncio.get_running_loop()
        rows = _mergeable_rows(inputs) if self._options.enabled else 0
        limit = self._options.max_enqueued_batches * self._options.max_batch_size
        if rows > limit:
            raise too_many_rows(rows, limit)
        if self._queued_rows + max(rows, 1) > limit:
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"The batch scheduling queue to which this task was submitted is full ({limit} rows "
                f"queued for {self._servable.name!r} version {self._servable.version}); retry later",
            )
        task = _Task(inputs, rows, self._shape_key(inputs), loop.create_future(), time.perf_counter())
        self._queue.append(task)
        self._queued_rows += max(rows, 1)
        if self._queued_rows >= self._options.max_batch_size:
            self._full.set()
        if self._active < self._options.num_batch_threads:
            self._active += 1
            drainer = loop.create_task(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        return task.future

    def _shape_key(self, inputs: dict[str, np.ndarray]) -> tuple:
        if self._options.pad_variable_length_inputs:
            return tuple(sorted((name, array.ndim) for name, array in inputs.items()))
        return tuple(sorted((name, array.shape[1:]) for name, array in inputs.items()))

    async def _drain(self) -> None:
        timeout = self._options.batch_timeout_micros / 1e6
        try:
            while self._queue:
                if timeout > 0 and self._queued_rows < self._options.max_batch_size:
                    wait = self._queue[0].enqueued_at + timeout - time.perf_counter()
                    if wait > 0:
                        try:
                            await asyncio.wait_for(self._full.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
        finally:
            self._active -= 1

    def _take_batch(self) -> list[_Task]:
        """Removes and returns the oldest live request plus later compatible ones that fit."""
        batch: list[_Task] = []
        rows = 0
        kept: deque[_Task] = deque()
        while self._queue:
            task = self._queue.popleft()
            if task.future.done():  # Cancelled while queued (timed out): drop it.
                self._queued_rows -= max(task.rows, 1)
                continue
            fits = (
                not batch
                or (task.rows and batch[0].rows and task.key == batch[0].key
                    and rows + task.rows <= self._options.max_batch_size)
            )
            if fits:
                batch.append(task)
                rows += task.rows
                self._queued_rows -= max(task.rows, 1)
                if not task.rows or rows >= self._options.max_batch_size:
                    break
            else:
                kept.append(task)
        kept.extend(self._queue)
        self._queue = kept
        if self._queued_rows < self._options.max_batch_size:
            self._full.clear()
        return batch

    async def _run(self, batch: list[_Task]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        inputs = batch[0].inputs if len(batch) == 1 else self._merge([t.inputs for t in batch])
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._servable.run, self._signature_name, inputs
            )
        except Exception as error:  # noqa: BLE001 - delivered to the request(s) below.
            if len(batch) > 1:
                for task in batch:  # Re-run alone so only the request at fault fails.
                    await self._run([task])
                return
            _deliver_error(batch[0], error)
            return
        model_seconds = time.perf_counter() - started
        parts = [outputs] if len(batch) == 1 else _split(outputs, [t.rows for t in batch])
        if parts is None:
            for task in batch:
                await self._run([task])
            return
        total_rows = sum(max(t.rows, 1) for t in batch)
        if self._on_batch is not None:
            self._on_batch(total_rows)
        for task, part in zip(batch, parts):
            if not task.future.done():
                task.future.set_result((part, Timing(started - task.enqueued_at, model_seconds, total_rows)))

    def _merge(self, inputs_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        merged = {}
        for name in inputs_list[0]:
            arrays = [inputs[name] for inputs in inputs_list]
            trailing = np.max([a.shape[1:] for a in arrays], axis=0) if arrays[0].ndim > 1 else ()
            if all(a.shape[1:] == tuple(trailing) for a in arrays):
                merged[name] = np.concatenate(arrays, axis=0)
                continue
            total = sum(a.shape[0] for a in arrays)
            out = np.full((total, *trailing), _padding_value(arrays[0].dtype), dtype=arrays[0].dtype)
            offset = 0
            for a in arrays:
                out[(slice(offset, offset + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))] = a
                offset += a.shape[0]
            merged[name] = out
        return merged


def _mergeable_rows(inputs: dict[str, np.ndarray]) -> int:
    sizes = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(sizes) != 1:
        return 0
    size = sizes.pop()
    return size if size > 0 else 0


def _padding_value(dtype: np.dtype):
    if dtype == object:
        return b""
    return False if dtype.kind == "b" else 0


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]] | None:
    total = sum(rows)
    if any(value.ndim == 0 or value.shape[0] != total for value in outputs.values()):
        return None
    offsets = np.cumsum(rows)[:-1]
    pieces = {name: np.split(value, offsets) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(rows))]


def _deliver_error(task: _Task, error: BaseException) -> None:
    if task.future.done():
        return
    if not isinstance(error, ServingError):
        error = ServingError(grpc.StatusCode.INTERNAL, f"model call failed: {type(error).__name__}: {error}")
    task.future.set_exception(error)
