"""TF Serving's REST JSON formats: parsing into arrays, validation errors, and rendering outputs."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving import json_codec
from serving.errors import ServingError
from serving.signature import SignatureSpec, TensorSpec

RETRIEVAL = SignatureSpec("serving_default", {
    "user_id": TensorSpec("user_id", types_pb2.DT_STRING, (None,)),
    "history": TensorSpec("history", types_pb2.DT_STRING, (None, None)),
}, {})
SCALAR_INPUT = SignatureSpec("s", {"x": TensorSpec("x", types_pb2.DT_FLOAT, (None, 2))}, {})
INTS = SignatureSpec("s", {"n": TensorSpec("n", types_pb2.DT_INT8, None)}, {})


def _parse(body: dict, signature: SignatureSpec) -> dict[str, np.ndarray]:
    arrays = json_codec.request_arrays(json_codec.parse_predict_body(json.dumps(body).encode()), signature)
    return signature.validate(arrays)


def _error(body, signature: SignatureSpec) -> str:
    with pytest.raises(ServingError) as raised:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        signature.validate(json_codec.request_arrays(json_codec.parse_predict_body(raw), signature))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and raised.value.http_status == 400
    return raised.value.message


def test_row_and_columnar_give_the_same_arrays():
    rows = _parse({"instances": [{"user_id": "a", "history": ["x", ""]},
                                 {"user_id": "b", "history": [{"b64": base64.b64encode(b"\xff\x00").decode()}, "y"]}]},
                  RETRIEVAL)
    columns = _parse({"inputs": {"user_id": ["a", "b"], "history": [["x", ""], [{"b64": "/wA="}, "y"]]}}, RETRIEVAL)
    for arrays in (rows, columns):
        assert arrays["user_id"].dtype == object and arrays["user_id"].tolist() == [b"a", b"b"]
        assert arrays["history"].shape == (2, 2)
        assert arrays["history"][1, 0] == b"\xff\x00"


def test_single_input_shorthands_and_numeric_dtypes():
    bare_rows = _parse({"instances": [[1, 2], [3.5, 4]]}, SCALAR_INPUT)["x"]
    bare_columns = _parse({"inputs": [[1, 2], [3.5, 4]]}, SCALAR_INPUT)["x"]
    assert bare_rows.dtype == np.float32 and bare_rows.tolist() == bare_columns.tolist() == [[1, 2], [3.5, 4]]
    assert _parse({"inputs": 7}, INTS)["n"].shape == ()  # Columnar scalars are fine.


@pytest.mark.parametrize("body, signature, expected", [
    (b"{oops", RETRIEVAL, "JSON Parse error"),
    ({"instances": [{"user_id": "a", "history": ["x"]}], "signature_name": 3}, RETRIEVAL, "signature_name"),
    ({"instances": {"user_id": "a"}}, RETRIEVAL, "must be a list"),
    ({"instances": ["a", "b"]}, RETRIEVAL, "each instance must be an object"),
    ({"inputs": ["a"]}, RETRIEVAL, "'inputs' must be an object"),
    ({"instances": [{"user_id": "a", "history": ["x"]}, {"user_id": "b"}]}, RETRIEVAL, "same inputs"),
    ({"instances": [{"user_id": "a", "history": ["x"]}, {"user_id": "b", "history": ["x", "y"]}]},
     RETRIEVAL, "ragged"),
    ({"inputs": {"user_id": [None], "history": [["x"]]}}, RETRIEVAL, "expects DT_STRING"),
    ({"inputs": {"user_id": [{"b64": 5}], "history": [["x"]]}}, RETRIEVAL, "must be a string"),
    ({"inputs": {"user_id": [{"b64": "abc"}], "history": [["x"]]}}, RETRIEVAL, "invalid base64"),
    ({"instances": [[1, 2], [3]]}, SCALAR_INPUT, "not a rectangular array"),
    ({"instances": [[1, 2, 3]]}, SCALAR_INPUT, "expects shape [-1, 2]"),
    ({"instances": [[True, False]]}, SCALAR_INPUT, "received booleans"),
    ({"instances": [["1", "2"]]}, SCALAR_INPUT, "expects DT_FLOAT numbers"),
    ({"inputs": [1000]}, INTS, "outside the range of DT_INT8"),
    ({"inputs": [1.5]}, INTS, "expects integers"),
])
def test_bad_bodies_name_the_problem(body, signature, expected):
    assert expected in _error(body, signature)


def test_render_row_and_columnar_like_tf_serving():
    outputs = {"scores": np.array([[0.1, np.nan], [1.5, -np.inf]], np.float32),
               "item_ids": np.array([[b"a", "é".encode()], [b"\xff", b"c"]], dtype=object),
               "raw_bytes": np.array([b"x", b"y"], dtype=object)}
    rows = json.loads(json_codec.render_response(outputs, "row"))
    assert rows["predictions"][0]["scores"][0] == pytest.approx(0.1)  # float32 shortest repr parses back.
    assert np.isnan(rows["predictions"][0]["scores"][1]) and rows["predictions"][1]["scores"][1] == -np.inf
    assert rows["predictions"][0]["item_ids"] == ["a", "é"]
    assert rows["predictions"][1]["item_ids"][0] == {"b64": base64.b64encode(b"\xff").decode()}
    assert rows["predictions"][0]["raw_bytes"] == {"b64": "eA=="}  # *_bytes outputs are always b64.
    columnar = json.loads(json_codec.render_response({"y": np.array([1, 2], np.int64)}, "columnar"))
    assert columnar == {"outputs": [1, 2]}
    single_row = json.loads(json_codec.render_response({"y": np.array([True, False])}, "row"))
    assert single_row == {"predictions": [True, False]}


def test_render_row_rejects_mismatched_batch_sizes():
    with pytest.raises(ServingError, match="batch size"):
        json_codec.render_response({"a": np.zeros(2), "b": np.zeros(3)}, "row")
    with pytest.raises(ServingError, match="scalar"):
        json_codec.render_response({"a": np.float32(1.0).reshape(())}, "row")
