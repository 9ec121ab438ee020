"""Prometheus metrics, opt-in with TF Serving's ``--monitoring_config_file``.

The file is a text-format ``tensorflow.serving.MonitoringConfig`` (``monitoring_config.proto``;
tensorflow-serving-api does not ship its Python module, so it is declared here with the same
field names and numbers)::

    prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }

When enabled, ``GET <path>`` on the REST port returns the Prometheus text format
(``prometheus_client``, a registry of this server's own):

- ``:tensorflow:serving:request_count_total{model_name, model_version, api, signature, status}``:
  predict requests by outcome (``OK`` or the canonical error code);
- ``:tensorflow:serving:request_latency_seconds{model_name, model_version, api, signature}``:
  histogram of successful requests' time inside the server;
- ``:tensorflow:serving:batch_size{model_name, model_version, signature}``: histogram of rows
  per model call (merged requests count once per call);
- ``:tensorflow:serving:model_state{model_name, model_version, state}``: 1 for each version's
  current state (``LOADING``, ``AVAILABLE``, ``END``, ...), read from the manager at scrape time.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from tensorflow_serving.apis import get_model_status_pb2

DEFAULT_PATH = "/monitoring/prometheus/metrics"
PREFIX = ":tensorflow:serving:"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_STATES = get_model_status_pb2.ModelVersionStatus.State


def _monitoring_config_class():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="serving_monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    F = descriptor_pb2.FieldDescriptorProto
    prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    descriptor = pool.Add(file_proto).message_types_by_name["MonitoringConfig"]
    return message_factory.GetMessageClass(descriptor)


MonitoringConfig = _monitoring_config_class()


@dataclasses.dataclass(frozen=True)
class MonitoringOptions:
    """Whether and where the Prometheus endpoint is served."""

    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_PATH


def load_monitoring_config_file(path: str) -> MonitoringOptions:
    """Reads ``--monitoring_config_file``.

    Raises:
      ValueError: an unreadable file, a syntax error or unknown field (with line and column), or a
        path that does not start with ``/``.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ValueError(f"cannot read monitoring config file {path!r}: {error}") from None
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a text-format MonitoringConfig proto: {error}") from None
    prometheus_path = config.prometheus_config.path or DEFAULT_PATH
    if not prometheus_path.startswith("/"):
        raise ValueError(f"{path}: prometheus_config.path must start with '/', received {prometheus_path!r}")
    return MonitoringOptions(config.prometheus_config.enable, prometheus_path)


class _ModelStateCollector:
    def __init__(self, manager):
        self._manager = manager

    def collect(self):
        family = GaugeMetricFamily(PREFIX + "model_state", "1 for the current state of each model version",
                                   labels=["model_name", "model_version", "state"])
        for name in self._manager.model_names():
            try:
                statuses = self._manager.statuses(name)
            except Exception:  # noqa: BLE001 - a model without versions yet (NOT_FOUND) has no samples.
                continue
            for status in statuses:
                family.add_metric([name, str(status.version), _STATES.Name(status.state)], 1.0)
        yield family


class PrometheusMetrics:
    """The server's metrics in a registry of its own.

    Args:
      manager: the model manager (read at scrape time for ``model_state``).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, manager):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name", "model_version", "api", "signature"]
        self._requests = Counter(PREFIX + "request_count", "Predict requests by outcome",
                                 labels + ["status"], registry=self.registry)
        self._latency = Histogram(PREFIX + "request_latency_seconds", "Successful predict requests' time in the server",
                                  labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self._batch_size = Histogram(PREFIX + "batch_size", "Rows per model call", ["model_name", "model_version",
                                     "signature"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_ModelStateCollector(manager))

    def record(self, key: tuple, total_seconds: float) -> None:
        """One successful request; ``key`` is ``(api, model, version, signature)``."""
        api, model, version, signature = key
        self._requests.labels(model, str(version), api, signature, "OK").inc()
        self._latency.labels(model, str(version), api, signature).observe(total_seconds)

    def record_error(self, key: tuple, code_name: str) -> None:
        api, model, version, signature = key
        self._requests.labels(model, str(version), api, signature, code_name).inc()

    def record_batch(self, model: str, version: int, signature: str, rows: int) -> None:
        """One model call of ``rows`` rows."""
        self._batch_size.labels(model, str(version), signature).observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
