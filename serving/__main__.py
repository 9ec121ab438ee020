"""``python -m serving serve``: a model server speaking TF Serving's REST and gRPC APIs (ScaNN included).

Flags are named like tensorflow_model_server's, so existing launch scripts carry over::

    python -m serving serve --model_name=retrieval --model_base_path=runs/export/retrieval \\
        --port=8500 --rest_api_port=8501
    python -m serving serve --model_config_file=serving/config/models.config \\
        --enable_batching --batching_parameters_file=batching.config

Differences from tensorflow_model_server: both servers bind 127.0.0.1 unless ``--host`` says
otherwise (and warn that the APIs are unauthenticated when it does); ``--max_request_bytes`` bounds
request bodies, ``--max_tensor_elements`` gRPC tensors; REST reads time out and connections are
capped (in total and per client) and must read their responses in time; gRPC connections are
capped and time out when idle; strings are capped (``--max_string_bytes``); the gRPC reload RPC is
off unless ``--enable_reload_config_rpc``; SavedModels with ScaNN ops load.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import sys

import serving  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from core import cli
from serving.batching_config import BatchingOptions, load_batching_parameters_file
from serving.metrics import MonitoringOptions, load_monitoring_config_file
from serving.model_config import ModelConfigError, load_model_config_file, single_model_config
from serving.server import ServerOptions

logger = logging.getLogger("serving")


_SERVER = ServerOptions()
_BATCHING = BatchingOptions()


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """``python -m serving serve``: flags named like tensorflow_model_server's (defaults from ServerOptions)."""

    model_name: str = cli.flag("name to serve a single model under", default="default")
    model_base_path: str | None = cli.flag("directory holding the model's <version>/ SavedModel dirs",
                                           default=None, metavar="DIR")
    model_config_file: str | None = cli.flag(
        "text-format ModelServerConfig (instead of --model_name/--model_base_path)", default=None,
        must_exist="file", metavar="FILE")
    model_config_file_poll_wait_seconds: float = cli.flag(
        "re-read --model_config_file this often (0: read once)", default=_SERVER.model_config_file_poll_wait_seconds)
    file_system_poll_wait_seconds: float = cli.flag(
        "poll base paths for new versions this often (0: once at start)",
        default=_SERVER.file_system_poll_wait_seconds)
    max_num_load_retries: int = cli.flag("retries (on later polls) of a version that failed to load",
                                         default=_SERVER.max_num_load_retries)
    version_settle_seconds: float = cli.flag(
        "load a new version dir only once its newest file is this old (guards against non-atomic copies; "
        "0 disables)", default=_SERVER.version_settle_seconds)
    enable_model_warmup: bool = cli.flag("replay assets.extra/tf_serving_warmup_requests when loading",
                                         default=_SERVER.enable_model_warmup)
    host: str = cli.flag("interface to bind (0.0.0.0 for all)", default=_SERVER.host)
    port: int = cli.flag("gRPC port (0 disables gRPC)", default=_SERVER.port)
    rest_api_port: int = cli.flag("REST port (0 disables REST)", default=_SERVER.rest_api_port)
    rest_api_timeout_in_ms: int = cli.flag(
        "per-request timeout (queue + model call); also caps gRPC deadlines; 0 = none",
        default=_SERVER.rest_api_timeout_in_ms)
    max_request_bytes: int = cli.flag(
        "largest REST body / gRPC message accepted (413 / RESOURCE_EXHAUSTED beyond)",
        default=_SERVER.max_request_bytes)
    max_tensor_elements: int = cli.flag(
        "largest element count of one gRPC request tensor (its declared shape must also match the values it "
        "carries)", default=_SERVER.max_tensor_elements)
    rest_header_read_timeout_seconds: float = cli.flag(
        "close a REST connection that has not sent a complete request head this long after opening or after "
        "its previous response (also the keep-alive idle timeout)", default=_SERVER.rest_header_read_timeout_seconds)
    rest_body_read_timeout_seconds: float = cli.flag(
        "answer 408 when a request body has not arrived this long after its head",
        default=_SERVER.rest_body_read_timeout_seconds)
    rest_max_connections: int = cli.flag("open REST connections at once; more are answered 503 and closed",
                                         default=_SERVER.rest_max_connections)
    rest_max_connections_per_client: int = cli.flag(
        "open REST connections from one client address; more are answered 503 (0: no limit)",
        default=_SERVER.rest_max_connections_per_client)
    rest_write_timeout_seconds: float = cli.flag(
        "disconnect a client that has not read its whole response this long after it was ready",
        default=_SERVER.rest_write_timeout_seconds)
    grpc_max_connections: int = cli.flag("open gRPC connections at once; more are closed when accepted",
                                         default=_SERVER.grpc_max_connections)
    grpc_channel_arguments: str = cli.flag(
        "comma-separated grpc.<name>=<value> server arguments, overriding the defaults (idle timeout "
        "grpc.max_connection_idle_ms=60000, grpc.server_handshake_timeout_ms=10000, grpc.max_concurrent_streams=100, "
        "keepalive 60 s / 20 s)", default="")
    max_string_bytes: int = cli.flag(
        "longest string element of a request, e.g. one text (400 beyond; an export's "
        "assets.extra/serving_limits.json may lower it for its model; 0: no limit)", default=_SERVER.max_string_bytes)
    enable_reload_config_rpc: bool = cli.flag(
        "allow gRPC ModelService.HandleReloadConfigRequest (unauthenticated: anyone who can reach the gRPC port "
        "can then replace the served models)", default=_SERVER.enable_reload_config_rpc)
    monitoring_config_file: str | None = cli.flag(
        "text-format MonitoringConfig; prometheus_config { enable: true } serves Prometheus metrics on the REST "
        "port (path default /monitoring/prometheus/metrics)", default=None, must_exist="file", metavar="FILE")
    enable_batching: bool = cli.flag("merge concurrent predict requests into one model call",
                                     default=_BATCHING.enabled)
    batching_parameters_file: str | None = cli.flag(
        "text-format BatchingParameters (tensorflow_model_server's format)", default=None, must_exist="file",
        metavar="FILE")
    max_batch_size: int = cli.flag("most rows one merged model call may hold", default=_BATCHING.max_batch_size)
    batch_timeout_micros: int = cli.flag("how long the oldest queued request may wait for others to join",
                                         default=_BATCHING.batch_timeout_micros)
    num_batch_threads: int = cli.flag("concurrent model calls per model version and signature",
                                      default=_BATCHING.num_batch_threads)
    max_enqueued_batches: int = cli.flag("queue bound in batches of --max_batch_size rows (UNAVAILABLE beyond)",
                                         default=_BATCHING.max_enqueued_batches)
    pad_variable_length_inputs: bool = cli.flag("pad differing non-batch dims (with '' / 0) to merge requests",
                                                default=_BATCHING.pad_variable_length_inputs)
    tensorflow_intra_op_parallelism: int = cli.flag("TensorFlow intra-op threads (0: TF's default)", default=0)
    tensorflow_inter_op_parallelism: int = cli.flag("TensorFlow inter-op threads (0: TF's default)", default=0)


def serve_command(args: ServeOptions) -> int:
    """Builds the server's options from the flags and runs it until interrupted."""
    _warn_if_exposed(args.host, args.enable_reload_config_rpc)
    try:
        monitoring = load_monitoring_config_file(args.monitoring_config_file) if args.monitoring_config_file \
            else MonitoringOptions()
        if args.model_config_file:
            configs = load_model_config_file(args.model_config_file)
        elif args.model_base_path:
            configs = [single_model_config(args.model_name, args.model_base_path)]
        else:
            raise cli.UsageError("give --model_base_path (with --model_name) or --model_config_file")
        batching = BatchingOptions(
            enabled=args.enable_batching, max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros, num_batch_threads=args.num_batch_threads,
            max_enqueued_batches=args.max_enqueued_batches,
            pad_variable_length_inputs=args.pad_variable_length_inputs,
        )
        if args.batching_parameters_file:
            batching = load_batching_parameters_file(args.batching_parameters_file, batching)
        from serving.server import parse_grpc_channel_arguments, run_server

        server_fields = {f.name for f in dataclasses.fields(ServerOptions)}
        values = {k: v for k, v in dataclasses.asdict(args).items() if k in server_fields}
        values["grpc_channel_arguments"] = parse_grpc_channel_arguments(args.grpc_channel_arguments)
        options = ServerOptions(batching=batching, monitoring=monitoring, **values)
    except (ModelConfigError, ValueError) as error:
        raise cli.UsageError(str(error)) from None
    _configure_tensorflow(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism)
    logger.info("batching: %s", dataclasses.asdict(batching))
    try:
        run_server(configs, options, args.model_config_file)
    except OSError as error:
        raise cli.JobError(f"cannot start the server: {error}") from None
    return 0


COMMANDS = (cli.Command("serve", ServeOptions, serve_command, description=__doc__,
                        help="serve SavedModels (ScaNN retrieval exports included) over TF Serving's REST and gRPC "
                             "APIs"),)


def main(argv: list[str] | None = None) -> int:
    return cli.run_commands("python -m serving", __doc__, COMMANDS, argv)


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
