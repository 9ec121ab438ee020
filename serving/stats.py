"""Request statistics: counts, errors and latency percentiles, split into model time and overhead.

For every predict request the server records its end-to-end time inside the server (from the
first byte handled to the response being ready), the time it waited in the batcher queue, and the
duration of the model call it was part of. ``overhead = total - model`` is what the server itself
costs (parsing, validation, queueing, serialisation). ``GET /monitoring/stats`` returns the
summary as JSON; each REST response also carries the per-request numbers in a standard
``Server-Timing`` header (``model;dur=...``, ``queue;dur=...``, ``total;dur=...`` in ms).
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

WINDOW = 20_000  # Most recent requests kept per key for percentiles.


class _Series:
    def __init__(self):
        self.requests = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.total_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.model_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.queue_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self.batch_rows: collections.deque[int] = collections.deque(maxlen=WINDOW)


class RequestStats:
    """Thread-safe recorder keyed by ``(api, model, version, signature)``.

    Args:
      metrics: optional :class:`serving.metrics.PrometheusMetrics` that every record is also
        forwarded to (``--monitoring_config_file``).
    """

    def __init__(self, metrics=None):
        self.metrics = metrics
        self._lock = threading.Lock()
        self._series: dict[tuple, _Series] = collections.defaultdict(_Series)
        self._started = time.time()

    def record(self, key: tuple, total_seconds: float, model_seconds: float, queue_seconds: float,
               batch_rows: int) -> None:
        with self._lock:
            series = self._series[key]
            series.requests += 1
            series.total_ms.append(total_seconds * 1e3)
            series.model_ms.append(model_seconds * 1e3)
            series.queue_ms.append(queue_seconds * 1e3)
            series.batch_rows.append(batch_rows)
        if self.metrics is not None:
            self.metrics.record(key, total_seconds)

    def record_error(self, key: tuple, code_name: str) -> None:
        with self._lock:
            series = self._series[key]
            series.requests += 1
            series.errors[code_name] += 1
        if self.metrics is not None:
            self.metrics.record_error(key, code_name)

    def record_batch(self, model: str, version: int, signature: str, rows: int) -> None:
        """One model call of ``rows`` rows (only the Prometheus metrics keep these)."""
        if self.metrics is not None:
            self.metrics.record_batch(model, version, signature, rows)

    def summary(self) -> dict:
        """Returns ``{"since": unix time, "series": [{api, model, version, signature, ...}]}``.

        Each series has ``requests``, ``errors`` (by status code), and for the successful requests
        in the window mean/p50/p90/p99 of ``total_ms``, ``model_ms``, ``queue_ms`` and
        ``overhead_ms`` (total minus model), plus the mean ``batch_rows``.
        """
        with self._lock:
            items = [(key, series) for key, series in self._series.items()]
            out = []
            for (api, model, version, signature), series in sorted(items, key=lambda kv: str(kv[0])):
                entry = {
                    "api": api, "model": model, "version": version, "signature": signature,
                    "requests": series.requests, "errors": dict(series.errors),
                }
                if series.total_ms:
                    total = np.asarray(series.total_ms)
                    model_ms = np.asarray(series.model_ms)
                    entry["window"] = len(total)
                    entry["total_ms"] = _percentiles(total)
                    entry["model_ms"] = _percentiles(model_ms)
                    entry["queue_ms"] = _percentiles(np.asarray(series.queue_ms))
                    entry["overhead_ms"] = _percentiles(total - model_ms)
                    entry["mean_batch_rows"] = round(float(np.mean(series.batch_rows)), 3)
                out.append(entry)
            return {"since": self._started, "series": out}


def _percentiles(values: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": round(float(values.mean()), 3), "p50": round(float(p50), 3),
            "p90": round(float(p90), 3), "p99": round(float(p99), 3)}
