"""A server process with tight network limits: read timeouts, a connection cap, big bodies parsed
off the event loop, an unknown HTTP method, the reload RPC (off by default) and Prometheus metrics.

Its own ``python -m serving`` process (the shared one keeps TF Serving's defaults), serving the
``ood`` and ``tools`` stand-ins.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.serving.conftest import ServerProcess
from tests.serving.helpers import get_json, post_json

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MAX_CONNECTIONS, MAX_TENSOR_ELEMENTS = 1.0, 1.0, 16, 1000
LIMITED_CONFIG = """
model_config_list {{
  config {{ name: "ood" base_path: "{root}/ood" model_platform: "tensorflow" }}
  config {{ name: "tools" base_path: "{root}/tools" model_platform: "tensorflow" }}
}}
"""
MONITORING_CONFIG = "prometheus_config { enable: true path: \"/monitoring/prometheus/metrics\" }\n"


@pytest.fixture(scope="module")
def limited(model_root, tmp_path_factory):
    directory = tmp_path_factory.mktemp("limited")
    monitoring = directory / "monitoring.config"
    monitoring.write_text(MONITORING_CONFIG)
    flags = (f"--rest_header_read_timeout_seconds={HEADER_TIMEOUT_S}",
             f"--rest_body_read_timeout_seconds={BODY_TIMEOUT_S}", f"--rest_max_connections={MAX_CONNECTIONS}",
             f"--max_request_bytes={32 * 2**20}", "--max_batch_size=32", f"--monitoring_config_file={monitoring}",
             "--file_system_poll_wait_seconds=0", f"--max_tensor_elements={MAX_TENSOR_ELEMENTS}")
    process = ServerProcess(model_root, str(directory / "server.log"), flags=flags, config=LIMITED_CONFIG,
                            config_name="limited.config")
    try:
        process.wait_until_available(["ood", "tools"])
        yield process
    finally:
        code = process.stop()
    assert code == 0, f"server exited with {code}:\n{process.log()[-3000:]}"


def _good(server) -> None:
    status, document, _ = post_json(f"{server.rest_url}/v1/models/ood:predict", {"instances": ["hello"]}, timeout=10)
    assert status == 200 and len(document["predictions"]) == 1, document


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


def test_stalled_headers_are_closed_and_the_connection_cap_answers_503_json(limited):
    stalled = [_connect(limited) for _ in range(MAX_CONNECTIONS + 4)]
    for sock in stalled:
        sock.sendall(b"POST /v1/models/ood:predict HTTP/1.1\r\nHost: x\r\n")  # Never finishes its headers.
    started = time.monotonic()
    answers = [_read_all(sock, HEADER_TIMEOUT_S + 10) for sock in stalled]
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 10
    refused = [a for a in answers if a]
    # Connections over the cap are answered at once; the others are closed when their head times out.
    assert len(refused) >= 3, (answers, limited.log()[-3000:])
    for answer in refused:
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"application/json" in answer and b'"error"' in answer
    for sock in stalled:
        sock.close()
    _good(limited)
    assert "Traceback" not in limited.log()


def test_stalled_body_gets_408_json(limited):
    sock = _connect(limited)
    sock.sendall(b"POST /v1/models/ood:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"instances\": ")
    started = time.monotonic()
    answer = _read_all(sock, BODY_TIMEOUT_S + 10)
    sock.close()
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("the request body")
    _good(limited)


def test_client_disconnect_mid_body_is_not_an_error(limited):
    sock = _connect(limited)
    sock.sendall(b"POST /v1/models/ood:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inst")
    time.sleep(0.2)
    sock.close()
    time.sleep(0.5)
    _good(limited)
    log = limited.log()
    assert "Traceback" not in log, log[-3000:]
    assert not re.search(r",\d{3} ERROR ", log), log[-3000:]


@pytest.mark.parametrize("request_line", [b"BREW /v1/models/ood HTTP/1.1", b"DELETE /v1/models/ood HTTP/1.1"])
def test_unknown_http_method_gets_a_json_error(limited, request_line):
    sock = _connect(limited)
    sock.sendall(request_line + b"\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    answer = _read_all(sock, 10)
    sock.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.split()[1] in (b"400", b"405", b"501"), head
    assert b"application/json" in head.lower(), head
    assert list(json.loads(body)) == ["error"]


def test_a_large_valid_body_is_parsed_off_the_event_loop(limited):
    """A 15.7 MiB body (500k strings) used to block every other request for ~2 s."""
    body = json.dumps({"instances": ["abcdefghijklmnopqrstuvwxyz"] * 550_000}).encode()
    assert len(body) > 15 * 2**20
    latencies, done = [], threading.Event()

    def probe():
        while not done.is_set():
            started = time.perf_counter()
            status, _ = get_json(f"{limited.rest_url}/v1/models/tools", timeout=30)
            latencies.append(time.perf_counter() - started)
            assert status == 200
            time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    try:
        status, document, _ = post_json(f"{limited.rest_url}/v1/models/ood:predict", body, timeout=60)
    finally:
        done.set()
        prober.join()
    assert status == 400 and "more than 3200 rows" in document["error"], document  # Over the queue's 3,200 rows.
    assert len(latencies) > 5 and max(latencies) < 1.0, sorted(latencies)[-5:]


def test_reload_config_rpc_is_off_unless_enabled(limited):
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name="ood", base_path=f"{limited.root}/ood", model_platform="tensorflow")
        with pytest.raises(grpc.RpcError) as raised:
            stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--enable_reload_config_rpc" in raised.value.details()
    assert get_json(f"{limited.rest_url}/v1/models/tools")[0] == 200


def test_grpc_tensors_over_the_element_limit_are_refused(limited):
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ood"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"a"] * (MAX_TENSOR_ELEMENTS + 1), dtype=object)))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than this server's limit of 1000 per tensor" in raised.value.details()
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"a"] * MAX_TENSOR_ELEMENTS, dtype=object)))
        assert stub.Predict(request, timeout=30).outputs["ood_score"].tensor_shape.dim[0].size == MAX_TENSOR_ELEMENTS


def test_prometheus_metrics(limited):
    for _ in range(3):
        _good(limited)
    post_json(f"{limited.rest_url}/v1/models/ood:predict", {"instances": [1]})  # A 400.
    with urllib.request.urlopen(f"{limited.rest_url}/monitoring/prometheus/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    ok = [v for k, v in samples.items() if k.startswith(":tensorflow:serving:request_count_total{")
          and 'model_name="ood"' in k and 'status="OK"' in k and 'api="rest"' in k]
    bad = [v for k, v in samples.items() if k.startswith(":tensorflow:serving:request_count_total{")
           and 'model_name="ood"' in k and 'status="INVALID_ARGUMENT"' in k]
    assert ok and ok[0] >= 3 and bad and bad[0] >= 1, text
    assert any(k.startswith(":tensorflow:serving:request_latency_seconds_bucket{") and 'model_name="ood"' in k
               for k in samples)
    assert any(k.startswith(":tensorflow:serving:batch_size_bucket{") for k in samples)
    loaded = [v for k, v in samples.items() if k.startswith(":tensorflow:serving:model_state{")
              and 'model_name="tools"' in k and 'state="AVAILABLE"' in k]
    assert loaded == [1.0], text


def test_prometheus_endpoint_is_off_without_a_monitoring_config(server):
    status, document = get_json(f"{server.rest_url}/monitoring/prometheus/metrics")
    assert status == 404 and "--monitoring_config_file" in document["error"]
