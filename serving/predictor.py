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
from serving.errors import ServingError
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
      executor: the thread pool model calls run in.
      stats: where request statistics are recorded.
      timeout_seconds: default per-request timeout for the queue wait plus the model call
        (``None`` or <= 0: no timeout).
    """

    def __init__(self, batching: BatchingOptions, executor: concurrent.futures.Executor,
                 stats: RequestStats, timeout_seconds: float | None):
        self.batching = batching
        self.executor = executor
        self.stats = stats
        self.timeout_seconds = timeout_seconds if timeout_seconds and timeout_seconds > 0 else None

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
            batcher = Batcher(servable, signature_name, self.batching, self.executor, on_batch)
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
