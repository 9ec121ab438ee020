"""``python -m serving``: a model server speaking TF Serving's REST and gRPC APIs (ScaNN included).

Flags are named like tensorflow_model_server's, so existing launch scripts carry over::

    python -m serving --model_name=retrieval --model_base_path=runs/export/retrieval \\
        --port=8500 --rest_api_port=8501
    python -m serving --model_config_file=serving/config/models.config \\
        --enable_batching --batching_parameters_file=batching.config

Differences from tensorflow_model_server: both servers bind 127.0.0.1 unless ``--host`` says
otherwise (and warn that the APIs are unauthenticated when it does); ``--max_request_bytes`` bounds
request bodies, ``--max_tensor_elements`` gRPC tensors; REST reads time out and connections are
capped (in total and per client) and must read their responses in time; gRPC connections are
capped and time out when idle; strings are capped (``--max_string_bytes``); the gRPC reload RPC is
off unless ``--enable_reload_config_rpc``; SavedModels with ScaNN ops load.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys

import serving  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from serving.batching_config import BatchingOptions, load_batching_parameters_file
from serving.metrics import MonitoringOptions, load_monitoring_config_file
from serving.model_config import ModelConfigError, load_model_config_file, single_model_config
from serving.tensor_proto import DEFAULT_MAX_TENSOR_ELEMENTS

logger = logging.getLogger("serving")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def build_parser() -> argparse.ArgumentParser:
    defaults = BatchingOptions()
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve SavedModels (including ScaNN retrieval exports) over TF Serving's REST "
        "and gRPC APIs. Give either --model_name/--model_base_path or --model_config_file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    models = parser.add_argument_group("models")
    models.add_argument("--model_name", default="default", help="name to serve a single model under")
    models.add_argument("--model_base_path", help="directory holding the model's <version>/ SavedModel dirs")
    models.add_argument("--model_config_file", help="text-format ModelServerConfig (overrides --model_name/--model_base_path)")
    models.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                        help="re-read --model_config_file this often (0: read once)")
    models.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="poll base paths for new versions this often (0: once at start)")
    models.add_argument("--max_num_load_retries", type=int, default=2,
                        help="retries (on later polls) of a version that failed to load")
    models.add_argument("--version_settle_seconds", type=float, default=1.0,
                        help="load a new version dir only once its newest file is this old "
                        "(guards against non-atomic copies; 0 disables)")
    models.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                        help="replay assets.extra/tf_serving_warmup_requests when loading")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for all)")
    net.add_argument("--port", type=int, default=8500, help="gRPC port (0 disables gRPC)")
    net.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 disables REST)")
    net.add_argument("--rest_api_timeout_in_ms", type=int, default=30_000,
                     help="per-request timeout (queue + model call); also caps gRPC deadlines; 0 = none")
    net.add_argument("--max_request_bytes", type=int, default=16 * 1024 * 1024,
                     help="largest REST body / gRPC message accepted (413 / RESOURCE_EXHAUSTED beyond)")
    net.add_argument("--max_tensor_elements", type=int, default=DEFAULT_MAX_TENSOR_ELEMENTS,
                     help="largest element count of one gRPC request tensor (its declared shape must also "
                     "match the values it carries)")
    net.add_argument("--rest_header_read_timeout_seconds", type=float, default=30.0,
                     help="close a REST connection that has not sent a complete request head this long after "
                     "opening or after its previous response (also the keep-alive idle timeout)")
    net.add_argument("--rest_body_read_timeout_seconds", type=float, default=60.0,
                     help="answer 408 when a request body has not arrived this long after its head")
    net.add_argument("--rest_max_connections", type=int, default=1000,
                     help="open REST connections at once; more are answered 503 and closed")
    net.add_argument("--rest_max_connections_per_client", type=int, default=250,
                     help="open REST connections from one client address; more are answered 503 (0: no limit)")
    net.add_argument("--rest_write_timeout_seconds", type=float, default=60.0,
                     help="disconnect a client that has not read its whole response this long after it was ready")
    net.add_argument("--grpc_max_connections", type=int, default=1000,
                     help="open gRPC connections at once; more are closed when accepted")
    net.add_argument("--grpc_channel_arguments", default="",
                     help="comma-separated grpc.<name>=<value> server arguments, overriding the defaults "
                     "(idle timeout grpc.max_connection_idle_ms=60000, grpc.server_handshake_timeout_ms=10000, "
                     "grpc.max_concurrent_streams=100, keepalive 60 s / 20 s)")
    net.add_argument("--max_string_bytes", type=int, default=1 << 20,
                     help="longest string element of a request, e.g. one text (400 beyond; an export's "
                     "assets.extra/serving_limits.json may lower it for its model; 0: no limit)")
    net.add_argument("--enable_reload_config_rpc", action="store_true",
                     help="allow gRPC ModelService.HandleReloadConfigRequest (unauthenticated: anyone who can "
                     "reach the gRPC port can then replace the served models)")
    net.add_argument("--monitoring_config_file",
                     help="text-format MonitoringConfig; prometheus_config { enable: true } serves Prometheus "
                     "metrics on the REST port (path default /monitoring/prometheus/metrics)")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=True,
                          help="merge concurrent predict requests into one model call")
    batching.add_argument("--batching_parameters_file",
                          help="text-format BatchingParameters (tensorflow_model_server's format)")
    batching.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size)
    batching.add_argument("--batch_timeout_micros", type=int, default=defaults.batch_timeout_micros)
    batching.add_argument("--num_batch_threads", type=int, default=defaults.num_batch_threads,
                          help="concurrent model calls per model version and signature")
    batching.add_argument("--max_enqueued_batches", type=int, default=defaults.max_enqueued_batches)
    batching.add_argument("--pad_variable_length_inputs", type=_bool, nargs="?", const=True,
                          default=defaults.pad_variable_length_inputs,
                          help="pad differing non-batch dims (with '' / 0) to merge requests")
    tf_group = parser.add_argument_group("tensorflow")
    tf_group.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0: TF's default")
    tf_group.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0: TF's default")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _warn_if_exposed(args.host, args.enable_reload_config_rpc)
    try:
        monitoring = load_monitoring_config_file(args.monitoring_config_file) if args.monitoring_config_file \
            else MonitoringOptions()
        if args.model_config_file:
            configs = load_model_config_file(args.model_config_file)
        elif args.model_base_path:
            configs = [single_model_config(args.model_name, args.model_base_path)]
        else:
            parser.error("give --model_base_path (with --model_name) or --model_config_file")
        batching = BatchingOptions(
            enabled=args.enable_batching, max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros, num_batch_threads=args.num_batch_threads,
            max_enqueued_batches=args.max_enqueued_batches,
            pad_variable_length_inputs=args.pad_variable_length_inputs,
        )
        if args.batching_parameters_file:
            batching = load_batching_parameters_file(args.batching_parameters_file, batching)
        from serving.server import ServerOptions, parse_grpc_channel_arguments, run_server  # Imports TensorFlow.

        options = ServerOptions(
            host=args.host, port=args.port, rest_api_port=args.rest_api_port,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
            rest_api_timeout_in_ms=args.rest_api_timeout_in_ms, max_request_bytes=args.max_request_bytes,
            max_load_attempts=args.max_num_load_retries + 1, version_settle_seconds=args.version_settle_seconds,
            enable_model_warmup=args.enable_model_warmup,
            batching=batching, max_tensor_elements=args.max_tensor_elements,
            rest_header_read_timeout_seconds=args.rest_header_read_timeout_seconds,
            rest_body_read_timeout_seconds=args.rest_body_read_timeout_seconds,
            rest_max_connections=args.rest_max_connections, enable_reload_config_rpc=args.enable_reload_config_rpc,
            monitoring=monitoring, rest_max_connections_per_client=args.rest_max_connections_per_client,
            rest_write_timeout_seconds=args.rest_write_timeout_seconds, grpc_max_connections=args.grpc_max_connections,
            grpc_channel_arguments=parse_grpc_channel_arguments(args.grpc_channel_arguments),
            max_string_bytes=args.max_string_bytes,
        )
    except (ModelConfigError, ValueError) as error:
        logger.error("%s", error)
        return 2
    _configure_tensorflow(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)
    logger.info("batching: %s", dataclasses.asdict(batching))
    try:
        run_server(configs, options, args.model_config_file)
    except OSError as error:
        logger.error("cannot start the server: %s", error)
        return 1
    return 0


def _warn_if_exposed(host: str, reload: bool) -> None:
    """Warns when the server listens beyond loopback: its APIs have no authentication or TLS."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger.warning(
            "--host %s: the REST and gRPC APIs are unauthenticated and unencrypted; anyone who can reach "
            "these ports can call predict, read model metadata%s. Put the server behind an authenticating "
            "proxy or a firewall.", host, ", replace the served models (--enable_reload_config_rpc)" if reload else "")


def _configure_tensorflow(intra: int, inter: int) -> None:
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


if __name__ == "__main__":
    sys.exit(main())
