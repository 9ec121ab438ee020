"""The REST API of a real ``python -m serving`` process, against real SavedModels on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import serving  # noqa: F401
from serving.servable import load_servable
from tests.serving.conftest import MAX_REQUEST_BYTES, OOD_CORPUS_V1
from tests.serving.helpers import get_json, post_json

QUERIES = {"user_id": ["u1", "u2", "u3"],
           "history": [["item1", "item2", ""], ["item7", "", ""], ["", "", ""]]}


def _direct(model_root: str, model: str, version: int, inputs: dict, signature="serving_default") -> dict:
    """Runs the SavedModel in this process (the reference the server must reproduce)."""
    servable = load_servable(model, version, os.path.join(model_root, model, str(version)), warm_up=False)
    arrays = {k: np.array([[s.encode() for s in row] for row in v] if isinstance(v[0], list)
                          else [s.encode() for s in v], dtype=object) for k, v in inputs.items()}
    return servable.run(signature, arrays)


def _rows(server, model, body, suffix=""):
    status, document, headers = post_json(f"{server.rest_url}/v1/models/{model}{suffix}:predict", body)
    assert status == 200, document
    return document, headers


@pytest.mark.parametrize("model", ["retrieval", "retrieval_scann"])
def test_predict_row_and_columnar_match_the_savedmodel(server, model_root, model):
    version = 2 if model == "retrieval" else 1
    expected = _direct(model_root, model, version, QUERIES)
    instances = [{"user_id": u, "history": h} for u, h in zip(QUERIES["user_id"], QUERIES["history"])]
    rows, headers = _rows(server, model, {"instances": instances})
    columns, _ = _rows(server, model, {"inputs": QUERIES})
    assert len(rows["predictions"]) == 3
    for i, row in enumerate(rows["predictions"]):
        assert sorted(row) == ["item_ids", "scores"]
        assert row["item_ids"] == [s.decode() for s in expected["item_ids"][i]]
        np.testing.assert_allclose(row["scores"], expected["scores"][i], rtol=1e-5, atol=1e-6)
        assert row["scores"] == sorted(row["scores"], reverse=True)
    assert columns["outputs"]["item_ids"] == [r["item_ids"] for r in rows["predictions"]]
    np.testing.assert_allclose(columns["outputs"]["scores"], [r["scores"] for r in rows["predictions"]], rtol=1e-6)
    assert "model;dur=" in headers["Server-Timing"]


def test_versions_and_labels_pick_the_right_servable(server, model_root):
    body = {"inputs": QUERIES}
    by_version = {v: _rows(server, "retrieval", body, f"/versions/{v}")[0]["outputs"] for v in (1, 2)}
    assert by_version[1]["item_ids"] != by_version[2]["item_ids"]  # Different seeds, different models.
    assert _rows(server, "retrieval", body, "/labels/stable")[0]["outputs"] == by_version[1]
    assert _rows(server, "retrieval", body, "/labels/canary")[0]["outputs"] == by_version[2]
    assert _rows(server, "retrieval", body)[0]["outputs"] == by_version[2]  # Latest.
    expected_v1 = _direct(model_root, "retrieval", 1, QUERIES)
    assert by_version[1]["item_ids"][0] == [s.decode() for s in expected_v1["item_ids"][0]]


def test_ood_single_input_formats_and_b64(server, model_root):
    texts = ["what is my account balance", "qxzv jjjj kkk", "héllo ☃"]
    expected = _direct(model_root, "ood", 1, {"text": texts})
    rows, _ = _rows(server, "ood", {"instances": texts})
    b64 = [{"b64": base64.b64encode(t.encode()).decode()} for t in texts]
    rows_b64, _ = _rows(server, "ood", {"instances": b64})
    named, _ = _rows(server, "ood", {"instances": [{"text": t} for t in texts]})
    columnar, _ = _rows(server, "ood", {"signature_name": "serving_default", "inputs": {"text": b64}})
    assert rows == rows_b64 == named
    np.testing.assert_allclose([r["ood_score"] for r in rows["predictions"]], expected["ood_score"], rtol=1e-6)
    np.testing.assert_allclose(columnar["outputs"]["perplexity"], expected["perplexity"], rtol=1e-6)
    scores = [r["ood_score"] for r in rows["predictions"]]
    assert scores[1] > scores[0]  # Out-of-distribution gibberish scores higher than a banking query.


def test_status_and_metadata(server):
    status, document = get_json(f"{server.rest_url}/v1/models/retrieval")
    assert status == 200
    assert [(s["version"], s["state"]) for s in document["model_version_status"]] == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
    assert document["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}
    status, document = get_json(f"{server.rest_url}/v1/models/retrieval/labels/stable")
    assert [s["version"] for s in document["model_version_status"]] == ["1"]
    status, document = get_json(f"{server.rest_url}/v1/models/retrieval/versions/2/metadata")
    assert status == 200
    assert document["model_spec"] == {"name": "retrieval", "version": "2", "signature_name": ""}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["history"]["dtype"] == "DT_STRING"
    assert len(signature["inputs"]["history"]["tensor_shape"]["dim"]) == 2
    assert sorted(signature["outputs"]) == ["item_ids", "scores"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    status, document = get_json(f"{server.rest_url}/v1/models/ood/metadata")
    outputs = document["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    assert {k: v["dtype"] for k, v in outputs.items()} == {"ood_score": "DT_FLOAT", "perplexity": "DT_FLOAT"}


GOOD_QUERY = {"instances": [{"user_id": "u1", "history": ["item1", ""]}]}

ERROR_CASES = [
    # (id, method, path, body, expected status, text the error must contain)
    ("malformed_json", "POST", "/v1/models/retrieval:predict", b'{"instances": [', 400, "JSON Parse error"),
    ("not_an_object", "POST", "/v1/models/retrieval:predict", b"[1, 2]", 400, "must be a JSON object"),
    ("neither_key", "POST", "/v1/models/retrieval:predict", {"rows": []}, 400, "exactly one of 'instances'"),
    ("both_keys", "POST", "/v1/models/ood:predict", {"instances": ["a"], "inputs": ["a"]}, 400, "exactly one of"),
    ("empty_instances", "POST", "/v1/models/ood:predict", {"instances": []}, 400, "empty"),
    ("number_for_string", "POST", "/v1/models/ood:predict", {"instances": [1.5]}, 400, "expects DT_STRING"),
    ("string_for_float", "POST", "/v1/models/tools:predict",
     {"signature_name": "checked", "instances": ["abc"]}, 400, "expects DT_FLOAT"),
    ("float_for_int", "POST", "/v1/models/tools:predict", {"instances": [1.5]}, 400, "expects integers"),
    ("b64_for_float", "POST", "/v1/models/tools:predict",
     {"signature_name": "checked", "instances": [{"b64": "AAAA"}]}, 400, "only for DT_STRING"),
    ("wrong_rank", "POST", "/v1/models/retrieval:predict",
     {"inputs": {"user_id": ["u1"], "history": ["item1"]}}, 400, "expects rank 2"),
    ("ragged", "POST", "/v1/models/retrieval:predict",
     {"inputs": {"user_id": ["u1", "u2"], "history": [["item1"], ["item1", "item2"]]}}, 400, "ragged"),
    ("missing_input", "POST", "/v1/models/retrieval:predict", {"instances": [{"user_id": "u1"}]}, 400,
     "missing input(s) ['history']"),
    ("unknown_input", "POST", "/v1/models/retrieval:predict",
     {"inputs": {"user_id": ["u1"], "history": [["a"]], "age": [3]}}, 400, "unknown input"),
    ("bad_base64", "POST", "/v1/models/ood:predict", {"instances": [{"b64": "not base64!"}]}, 400, "invalid base64"),
    ("unknown_signature", "POST", "/v1/models/ood:predict",
     {"signature_name": "nope", "instances": ["a"]}, 400, 'signature name: "nope" not found'),
    ("in_graph_check", "POST", "/v1/models/tools:predict",
     {"signature_name": "checked", "instances": [4.0, -1.0]}, 400, "x must be >= 0"),
    ("unknown_model", "POST", "/v1/models/nope:predict", GOOD_QUERY, 404, "Servable not found"),
    ("unknown_version", "POST", "/v1/models/retrieval/versions/9:predict", GOOD_QUERY, 404, "Specific(retrieval, 9)"),
    ("unknown_label", "POST", "/v1/models/retrieval/labels/nope:predict", GOOD_QUERY, 404, "label"),
    ("label_of_absent_version", "POST", "/v1/models/retrieval/labels/future:predict", GOOD_QUERY, 404,
     "Specific(retrieval, 7)"),
    ("status_unknown_model", "GET", "/v1/models/nope", None, 404, "Servable not found"),
    ("status_unknown_version", "GET", "/v1/models/retrieval/versions/9", None, 404, "version 9"),
    ("status_unknown_label", "GET", "/v1/models/retrieval/labels/nope", None, 404, "label"),
    ("metadata_unknown_version", "GET", "/v1/models/ood/versions/3/metadata", None, 404, "Specific(ood, 3)"),
    ("classify", "POST", "/v1/models/ood:classify", {"examples": []}, 501, "not implemented"),
    ("malformed_path", "GET", "/v1/modelz", None, 400, "Malformed request"),
    ("oversize_body", "POST", "/v1/models/ood:predict",
     {"instances": ["x" * 1000] * (MAX_REQUEST_BYTES // 1000 + 10)}, 413, "exceeds the limit"),
    # Issue 14: client mistakes are 400, never 500 or a retryable 503.
    ("more_rows_than_the_queue_holds", "POST", "/v1/models/ood:predict", {"instances": ["a"] * 3201}, 400,
     "3201 rows"),
    ("deep_nesting", "POST", "/v1/models/ood:predict", b'{"instances": ' + b"[" * 30000 + b"]" * 30000 + b"}",
     400, "nested"),
    ("nesting_deeper_than_a_tensor", "POST", "/v1/models/ood:predict",
     b'{"instances": ' + b"[" * 70 + b'"a"' + b"]" * 70 + b"}", 400, "nested"),
    ("lone_surrogate", "POST", "/v1/models/ood:predict", {"instances": ["\ud800"]}, 400, "surrogate"),
    ("lone_surrogate_input_name", "POST", "/v1/models/ood:predict", b'{"instances": [{"\\ud800": "a"}]}', 400,
     "unknown input"),
    ("integer_over_4300_digits", "POST", "/v1/models/tools:predict",
     b'{"instances": [' + b"9" * 5000 + b"]}", 400, "digits"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, case):
    _, method, path, body, want_status, want_text = case
    if method == "POST":
        status, document, headers = post_json(server.rest_url + path, body)
        assert headers["Content-Type"].startswith("application/json")
    else:
        status, document = get_json(server.rest_url + path)
    assert status == want_status, document
    assert list(document) == ["error"] and want_text in document["error"], document
    status, document, _ = post_json(f"{server.rest_url}/v1/models/retrieval:predict", GOOD_QUERY)
    assert status == 200 and len(document["predictions"][0]["item_ids"]) == 5


def test_request_timeout_is_504_and_the_server_keeps_serving(server):
    # The model sleeps (no CPU) well past the server's 3 s timeout; TF serialises calls of that
    # sleeping function, so the follow-up request uses another signature of the same model.
    status, document, _ = post_json(f"{server.rest_url}/v1/models/tools:predict", {"instances": [3_100_000]})
    assert status == 504, document
    assert "timeout" in document["error"]
    status, document, _ = post_json(f"{server.rest_url}/v1/models/tools:predict",
                                    {"signature_name": "checked", "instances": [4.0, 9.0]})
    assert status == 200 and document["predictions"] == [2.0, 3.0]


def test_stats_endpoint_reports_model_time_and_overhead(server):
    started = time.time()
    for _ in range(3):
        _rows(server, "ood", {"instances": OOD_CORPUS_V1})
    status, _, _ = post_json(f"{server.rest_url}/v1/models/ood:predict", {"instances": [1, 2]})  # an error to count
    assert status == 400
    status, document = get_json(f"{server.rest_url}/monitoring/stats")
    assert status == 200
    series = [s for s in document["series"] if s["model"] == "ood" and s["api"] == "rest"
              and s["signature"] == "serving_default"]
    assert series and series[0]["requests"] >= 3
    entry = series[0]
    assert entry["total_ms"]["p50"] >= entry["model_ms"]["p50"] > 0
    assert entry["overhead_ms"]["p50"] >= 0
    # The documented shape: percentiles of each latency part, error counts by status code.
    for part in ("total_ms", "model_ms", "queue_ms", "overhead_ms"):
        stats = entry[part]
        assert stats["p50"] <= stats["p90"] <= stats["p99"], (part, stats)
    assert entry["errors"] and all(isinstance(v, int) and v > 0 for v in entry["errors"].values())
    assert entry["errors"].get("INVALID_ARGUMENT", 0) >= 1, entry["errors"]
    assert entry["window"] >= 3 and entry["mean_batch_rows"] >= 1
    assert server.started_at <= document["since"] <= started


def test_concurrent_requests_are_merged_and_answered_correctly(server, model_root):
    """Different-length histories from concurrent clients merge (padded) and each gets its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    histories = [["item%d" % j for j in range(i % 4)] or [""] for i in range(24)]
    bodies = [{"instances": [{"user_id": f"u{i}", "history": h}]} for i, h in enumerate(histories)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: post_json(f"{server.rest_url}/v1/models/retrieval_scann:predict", b), bodies))
    for (status, document, headers), body in zip(answers, bodies):
        assert status == 200, document
        expected = _direct(model_root, "retrieval_scann", 1,
                           {"user_id": [body["instances"][0]["user_id"]], "history": [body["instances"][0]["history"]]})
        assert document["predictions"][0]["item_ids"] == [s.decode() for s in expected["item_ids"][0]]
    rows = [int(h["Server-Timing"].split('batch;desc="')[1].split()[0]) for _, _, h in answers]
    assert max(rows) > 1, f"no request was merged with another: batch rows {rows}"


def test_models_with_custom_ops_load(server):
    """ScaNN and tensorflow-text ops are registered by the server process on demand."""
    document, _ = _rows(server, "text_ops", {"instances": ["a b c", "one,two;three four"]})
    assert document["predictions"] == [{"num_pieces": 1, "num_words": 3}, {"num_pieces": 3, "num_words": 2}]
    log = server.log()
    assert "custom ops from ['scann.scann_ops.py.scann_ops']" in log
    assert "'tensorflow_text']" in log


def test_unregistered_ops_are_found_in_a_fresh_process(model_root):
    code = (
        "import serving, sys\n"
        "from serving.servable import read_meta_graph, unregistered_ops, register_custom_ops\n"
        f"graph = read_meta_graph({os.path.join(model_root, 'retrieval_scann', '1')!r})\n"
        "print(sorted(unregistered_ops(graph)))\n"
        "print(register_custom_ops(graph), sorted(unregistered_ops(graph)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = result.stdout.strip().splitlines()[-2:]
    assert before == "['Scann>ScannSearchBatched', 'Scann>TensorsToScann']"
    assert after == "['scann.scann_ops.py.scann_ops'] []"
