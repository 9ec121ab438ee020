"""The gRPC API of the real server process, called with tensorflow-serving-api's official stubs."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import serving  # noqa: F401
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2
from google.protobuf import text_format

from tests.serving.conftest import MAX_REQUEST_BYTES, MODELS_CONFIG
from tests.serving.helpers import get_json, post_json

QUERY = {"user_id": np.array([b"u1", b"u2"], dtype=object),
         "history": np.array([[b"item1", b""], [b"item3", b"item4"]], dtype=object)}


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


def _predict_request(model, inputs, version=None, label=None, signature="", output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


@pytest.mark.parametrize("model", ["retrieval", "retrieval_scann"])
def test_predict_matches_rest(server, channel, model):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_predict_request(model, QUERY), timeout=30)
    item_ids = tf.make_ndarray(response.outputs["item_ids"])
    scores = tf.make_ndarray(response.outputs["scores"])
    assert item_ids.shape == scores.shape == (2, 5) and scores.dtype == np.float32
    assert response.model_spec.name == model
    assert response.model_spec.version.value == (2 if model == "retrieval" else 1)
    assert response.model_spec.signature_name == "serving_default"
    rest = {"user_id": [s.decode() for s in QUERY["user_id"]],
            "history": [[s.decode() for s in row] for row in QUERY["history"]]}
    status, document, _ = post_json(f"{server.rest_url}/v1/models/{model}:predict", {"inputs": rest})
    assert status == 200
    assert document["outputs"]["item_ids"] == [[s.decode() for s in row] for row in item_ids]
    np.testing.assert_allclose(document["outputs"]["scores"], scores, rtol=1e-6)


def test_predict_versions_labels_and_output_filter(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    v1 = stub.Predict(_predict_request("retrieval", QUERY, version=1), timeout=30)
    stable = stub.Predict(_predict_request("retrieval", QUERY, label="stable", output_filter=["item_ids"]), timeout=30)
    assert stable.model_spec.version.value == 1
    assert list(stable.outputs) == ["item_ids"]
    np.testing.assert_array_equal(tf.make_ndarray(stable.outputs["item_ids"]), tf.make_ndarray(v1.outputs["item_ids"]))
    ood = stub.Predict(_predict_request("ood", {"text": np.array([b"hello there"], dtype=object)}), timeout=30)
    assert sorted(ood.outputs) == ["ood_score", "perplexity"]
    assert tf.make_ndarray(ood.outputs["perplexity"]).shape == (1,)


def test_metadata_and_status(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "retrieval_scann"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert sorted(signature.inputs) == ["history", "user_id"]
    assert signature.outputs["scores"].dtype == tf.float32.as_datatype_enum
    assert response.model_spec.version.value == 1

    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "retrieval"
    statuses = model_stub.GetModelStatus(status_request, timeout=30).model_version_status
    assert [(s.version, s.state) for s in statuses] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    status_request.model_spec.version_label = "canary"
    assert [s.version for s in model_stub.GetModelStatus(status_request, timeout=30).model_version_status] == [2]


def _metadata_request(model, fields):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    return request


GRPC_ERRORS = [
    ("unknown_model", lambda: _predict_request("nope", QUERY), grpc.StatusCode.NOT_FOUND, "Servable not found"),
    ("unknown_version", lambda: _predict_request("retrieval", QUERY, version=9), grpc.StatusCode.NOT_FOUND, "Specific"),
    ("unknown_label", lambda: _predict_request("retrieval", QUERY, label="nope"), grpc.StatusCode.NOT_FOUND, "label"),
    ("wrong_dtype", lambda: _predict_request("ood", {"text": np.array([1.0, 2.0], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "expects DT_STRING"),
    ("wrong_rank", lambda: _predict_request("retrieval", {"user_id": QUERY["user_id"], "history": QUERY["user_id"]}),
     grpc.StatusCode.INVALID_ARGUMENT, "expects rank 2"),
    ("missing_input", lambda: _predict_request("retrieval", {"user_id": QUERY["user_id"]}),
     grpc.StatusCode.INVALID_ARGUMENT, "missing input(s) ['history']"),
    ("unknown_signature", lambda: _predict_request("ood", {"text": np.array([b"a"], dtype=object)}, signature="nope"),
     grpc.StatusCode.INVALID_ARGUMENT, "not found"),
    ("bad_output_filter", lambda: _predict_request("ood", {"text": np.array([b"a"], dtype=object)}, output_filter=["x"]),
     grpc.StatusCode.INVALID_ARGUMENT, "output_filter"),
    ("in_graph_check", lambda: _predict_request("tools", {"x": np.array([-1.0], np.float32)}, signature="checked"),
     grpc.StatusCode.INVALID_ARGUMENT, "x must be >= 0"),
    ("oversize", lambda: _predict_request("ood", {"text": np.array([b"x" * MAX_REQUEST_BYTES], dtype=object)}),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    # Issue 14: the declared shape is checked against the values carried before anything is allocated.
    ("declared_2_27_strings_one_value", lambda: _declared_request("ood", "text", tf.string, [2**27], [b"a"]),
     grpc.StatusCode.INVALID_ARGUMENT, "declares shape [134217728] = 134217728 elements but carries 1 value"),
    ("declared_2_40_strings", lambda: _declared_request("ood", "text", tf.string, [2**20, 2**20], [b"a"]),
     grpc.StatusCode.INVALID_ARGUMENT, "= 1099511627776 elements but carries 1 value"),
    ("fewer_floats_than_declared", lambda: _declared_request("tools", "x", tf.float32, [3], [1.0, 2.0],
                                                              signature="checked"),
     grpc.StatusCode.INVALID_ARGUMENT, "carries 2 value(s)"),
    ("more_values_than_declared", lambda: _declared_request("ood", "text", tf.string, [1], [b"a", b"b"]),
     grpc.StatusCode.INVALID_ARGUMENT, "carries 2 value(s)"),
    ("negative_dimension", lambda: _declared_request("ood", "text", tf.string, [-1], [b"a"]),
     grpc.StatusCode.INVALID_ARGUMENT, "dimensions must be >= 0"),
    ("wrong_dtype_declared", lambda: _declared_request("ood", "text", tf.complex64, [1], []),
     grpc.StatusCode.INVALID_ARGUMENT, "expects DT_STRING, received a tensor of DT_COMPLEX64"),
    ("unsupported_dtype", lambda: _declared_request("ood", "extra", tf.complex64, [1], []),
     grpc.StatusCode.INVALID_ARGUMENT, "DT_COMPLEX64, which this server does not support"),
]


def _declared_request(model, name, dtype, shape, values, signature=""):
    """A PredictRequest whose TensorProto declares ``shape`` but carries only ``values``."""
    request = _predict_request(model, {}, signature=signature)
    proto = request.inputs[name]
    proto.dtype = dtype.as_datatype_enum
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    field = {tf.string: "string_val", tf.float32: "float_val"}.get(dtype)
    if field:
        getattr(proto, field).extend(values)
    return request


@pytest.mark.parametrize("case", GRPC_ERRORS, ids=[c[0] for c in GRPC_ERRORS])
def test_predict_errors_have_tf_serving_codes(channel, case):
    _, make_request, code, text = case
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(make_request(), timeout=30)
    assert raised.value.code() == code, raised.value.details()
    assert text in (raised.value.details() or "")
    ok = stub.Predict(_predict_request("retrieval_scann", QUERY), timeout=30)
    assert tf.make_ndarray(ok.outputs["item_ids"]).shape == (2, 5)


def test_declared_shape_bomb_is_refused_fast_without_memory(server, channel):
    """31 bytes declaring 2**27 strings used to freeze the server for ~10 s and take ~2 GB."""
    def rss_bytes():
        with open(f"/proc/{server.process.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _declared_request("ood", "text", tf.string, [2**27], [b"a"])
    assert request.ByteSize() < 64
    before = rss_bytes()
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)
    elapsed = time.perf_counter() - started
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert elapsed < 2.0, f"refusing took {elapsed:.1f}s"
    assert rss_bytes() - before < 100 * 2**20
    ok = stub.Predict(_predict_request("ood", {"text": np.array([b"hello"], dtype=object)}), timeout=30)
    assert tf.make_ndarray(ok.outputs["ood_score"]).shape == (1,)


def test_metadata_errors(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for fields, code in (([], grpc.StatusCode.INVALID_ARGUMENT), (["foo"], grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetModelMetadata(_metadata_request("ood", fields), timeout=30)
        assert raised.value.code() == code
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModelMetadata(_metadata_request("nope", ["signature_def"]), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_timeout_caps_grpc_deadline(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request("tools_grpc", {"micros": np.array([3_100_000], np.int64)})
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)  # The client allows 30 s; the server's 3 s timeout wins.
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "request timeout" in raised.value.details()


def test_reload_config_adds_and_removes_a_model(server, channel):
    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(MODELS_CONFIG.format(root=server.root), config)
    extra = config.model_config_list.config.add(name="ood_copy", base_path=f"{server.root}/ood",
                                                model_platform="tensorflow")
    response = model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
    assert response.status.error_code == 0
    status, document = get_json(f"{server.rest_url}/v1/models/ood_copy")
    assert status == 200 and document["model_version_status"][0]["state"] == "AVAILABLE"
    config.model_config_list.config.remove(extra)
    model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
    status, document = get_json(f"{server.rest_url}/v1/models/ood_copy")
    assert status == 404
    status, document = get_json(f"{server.rest_url}/v1/models/retrieval")  # The others are untouched.
    assert [s["state"] for s in document["model_version_status"]] == ["AVAILABLE", "AVAILABLE"]


def test_reload_config_with_an_empty_model_list_is_refused(server, channel):
    """An empty list used to unload every model (the config-file loader already refused it)."""
    model_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()
    with pytest.raises(grpc.RpcError) as raised:
        model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no config entries" in raised.value.details()
    for model in ("retrieval", "ood", "tools"):
        status, document = get_json(f"{server.rest_url}/v1/models/{model}")
        assert status == 200 and "AVAILABLE" in [s["state"] for s in document["model_version_status"]]
