"""The predict path both APIs share: validate, batch, time out, and record statistics.

The REST and gRPC front ends only translate their wire formats to ``{input: numpy array}`` and
back; everything between (signature checks, the batcher, the per-request timeout, the
statistics) lives here once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging

import grpc
import numpy as np

from serving.batcher import Batcher, Timing
from serving.batching_config import BatchingOptions
from serving.errors import ServingError, invalid_argument
from serving.pools import ModelPools
from serving.servable import Servable
from serving.stats import RequestStats

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PredictResult:
    """A successful predict: the outputs and where the time went."""

    outputs: dict[str, np.ndarray]
    timing: Timing


class Predictor:
    """Runs validated predict requests through per-signature batchers.

    Args:
      batching: batching options for every model (see :class:`BatchingOptions`).
      executor: where model calls run: :class:`ModelPools` (one pool per model, so one model
        cannot starve another) or one executor shared by every model.
      stats: where request statistics are recorded.
      timeout_seconds: default per-request timeout for the queue wait plus the model call
        (``None`` or <= 0: no timeout).
      max_string_bytes: the longest ``DT_STRING`` element accepted (``--max_string_bytes``); a
        model's own ``serving_limits.json`` may lower it. ``None``: no limit.
    """

    def __init__(self, batching: BatchingOptions, executor: concurrent.futures.Executor | ModelPools,
                 stats: RequestStats, timeout_seconds: float | None, max_string_bytes: int | None = None):
        self.batching = batching
        self.executor = executor
        self.stats = stats
        self.timeout_seconds = timeout_seconds if timeout_seconds and timeout_seconds > 0 else None
        self.max_string_bytes = max_string_bytes

    @property
    def max_rows(self) -> int | None:
        """The most rows one request may have (what the batch queue holds), None without batching."""
        if not self.batching.enabled:
            return None
        return self.batching.max_enqueued_batches * self.batching.max_batch_size

    def string_limit(self, servable: Servable) -> int | None:
        """The longest string element ``servable`` accepts: the smaller of the flag and its export's."""
        limits = [v for v in (self.max_string_bytes, servable.max_string_bytes) if v]
        return min(limits) if limits else None

    def check_strings(self, servable: Servable, arrays: dict[str, np.ndarray]) -> None:
        """:func:`check_string_lengths` with ``servable``'s limit. Linear in the request size: the
        front ends call it in their decode lane, before :meth:`predict`."""
        check_string_lengths(arrays, self.string_limit(servable), servable)

    async def predict(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
                      timeout_seconds: float | None = None) -> PredictResult:
        """Validates ``inputs`` against the signature and runs them (merged with concurrent requests).

        Args:
          servable: the resolved model version (the caller holds it for the whole request).
          signature_name: which signature to call.
          inputs: one array per input, with the signature's dtypes.
          timeout_seconds: overrides the default timeout (e.g. a shorter gRPC deadline).

        Raises:
          ServingError: INVALID_ARGUMENT for inputs that do not fit the signature or that the model
            rejects; DEADLINE_EXCEEDED when the timeout passes first; UNAVAILABLE when the
            batch queue is full; INTERNAL when the model call fails otherwise.
        """
        spec = servable.signature(signature_name)
        arrays = spec.validate(inputs)
        batcher = servable.batchers.get(signature_name)
        if batcher is None:
            on_batch = functools.partial(self.stats.record_batch, servable.name, servable.version, signature_name)
            executor = self.executor.pool(servable.name) if isinstance(self.executor, ModelPools) else self.executor
            batcher = Batcher(servable, signature_name, self.batching, executor, on_batch)
            servable.batchers[signature_name] = batcher
        timeout = self._effective_timeout(timeout_seconds)
        future = batcher.submit(arrays)
        try:
            async with asyncio.timeout(timeout):  # On expiry the queued request is cancelled too.
                outputs, timing = await future
        except TimeoutError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"predict on model {servable.name!r} version {servable.version} did not finish "
                f"within the request timeout of {format_ms(timeout)} ms",
            ) from None
        return PredictResult(outputs, timing)

    def _effective_timeout(self, requested: float | None) -> float | None:
        candidates = [t for t in (self.timeout_seconds, requested) if t is not None and t > 0]
        return min(candidates) if candidates else None


def check_string_lengths(arrays: dict[str, np.ndarray], limit: int | None, servable: Servable) -> None:
    """Raises INVALID_ARGUMENT (HTTP 400) naming the input and element when a string element is
    longer than ``limit`` bytes (checked before the model runs: a 15 MB text took the OoD model
    9-21 s and 2 GB to tokenise)."""
    if not limit:
        return
    for name, array in arrays.items():
        if array.dtype != object or not array.size:
            continue
        lengths = np.fromiter((len(value) for value in array.flat), np.int64, array.size)
        worst = int(lengths.argmax())
        if lengths[worst] > limit:
            raise invalid_argument(
                f"input {name!r}: element {worst} holds {int(lengths[worst])} bytes, more than the {limit} bytes "
                f"model {servable.name!r} accepts (--max_string_bytes, or the export's "
                "assets.extra/serving_limits.json); send shorter texts")


def format_ms(seconds: float) -> str:
    """Milliseconds for messages: ``3000``, ``12``, ``1``, ``0.4`` (never ``0`` for a positive time)."""
    milliseconds = seconds * 1e3
    return f"{milliseconds:.0f}" if milliseconds >= 10 else f"{milliseconds:.2g}"


def select_outputs(outputs: dict[str, np.ndarray], output_filter: list[str]) -> dict[str, np.ndarray]:
    """Keeps the outputs named in ``output_filter`` (all when empty), as gRPC Predict does.

    Raises:
      ServingError: INVALID_ARGUMENT naming an output the signature does not have.
    """
    if not output_filter:
        return outputs
    unknown = [name for name in output_filter if name not in outputs]
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_filter names unknown output(s) {unknown}; the signature's outputs are {sorted(outputs)}",
        )
    return {name: outputs[name] for name in output_filter}
