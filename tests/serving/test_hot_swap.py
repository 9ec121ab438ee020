"""New versions dropped into a served base path under concurrent load: zero failed requests.

Uses the shared server's ``swap`` model (latest-1 policy, polled every 0.2 s, 1 s settle time).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serving.conftest import OOD_CORPUS_V1
from tests.serving.helpers import get_json, move_into_place, post_json


class _Load:
    """Client threads hammering the ``swap`` model over REST and gRPC, recording every outcome."""

    def __init__(self, server, rest_threads: int = 6, grpc_threads: int = 2):
        self._server = server
        self._stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.scores: list[float] = []  # REST: ood_score of the first text, in arrival order.
        self.versions: list[int] = []  # gRPC: the version that answered, in arrival order.
        self._threads = [threading.Thread(target=self._rest) for _ in range(rest_threads)]
        self._threads += [threading.Thread(target=self._grpc) for _ in range(grpc_threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _rest(self):
        url = f"{self._server.rest_url}/v1/models/swap:predict"
        while not self._stop.is_set():
            try:
                status, document, _ = post_json(url, {"instances": OOD_CORPUS_V1}, timeout=30)
                outcome = document["predictions"][0]["ood_score"] if status == 200 else f"{status}: {document}"
            except Exception as error:  # noqa: BLE001 - any client-side failure counts.
                outcome = f"{type(error).__name__}: {error}"
            with self.lock:
                (self.scores if isinstance(outcome, float) else self.failures).append(outcome)

    def _grpc(self):
        with grpc.insecure_channel(self._server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "swap"
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"hello"], dtype=object)))
            while not self._stop.is_set():
                try:
                    version = stub.Predict(request, timeout=30).model_spec.version.value
                except grpc.RpcError as error:
                    with self.lock:
                        self.failures.append(f"grpc {error.code()}: {error.details()}")
                    continue
                with self.lock:
                    self.versions.append(version)


def _statuses(server) -> dict[str, tuple[str, str]]:
    status, document = get_json(f"{server.rest_url}/v1/models/swap")
    assert status == 200, document
    return {s["version"]: (s["state"], s["status"]["error_message"]) for s in document["model_version_status"]}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_versions_swap_under_load_without_failures(server):
    base = os.path.join(server.root, "swap")
    with _Load(server) as load:
        time.sleep(1.0)
        # A hidden temporary export (what serving.export writes before its rename): never loaded.
        hidden = os.path.join(base, ".tmp-export-inprogress")
        os.makedirs(hidden)
        shutil.copy(os.path.join(server.root, "staging", "1", "saved_model.pb"), hidden)
        # Atomic drop-in of version 2.
        move_into_place(os.path.join(server.root, "staging", "1"), base, 2)
        _wait_for(lambda: _statuses(server).get("1", ("",))[0] == "END", 30, "version 1 to be unloaded")
        assert _statuses(server)["2"] == ("AVAILABLE", "")

        # Version 3 copied in place non-atomically and slowly (each file half-written, then a
        # pause, then the rest): it must not be picked up before the copy is complete.
        source, target = os.path.join(base, "2"), os.path.join(base, "3")
        files = sorted(os.path.relpath(os.path.join(r, f), source) for r, _, fs in os.walk(source) for f in fs)
        files.remove("saved_model.pb")
        files.insert(0, "saved_model.pb")  # Worst case: the graph file appears first.
        for relative in files:
            os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
            with open(os.path.join(source, relative), "rb") as f:
                data = f.read()
            with open(os.path.join(target, relative), "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.3)
                f.write(data[len(data) // 2 :])
        assert "3" not in _statuses(server), "a version directory was picked up within its settle time"
        _wait_for(lambda: _statuses(server).get("3", ("",))[0] == "AVAILABLE", 30, "version 3 to load")
        time.sleep(0.5)
    statuses = _statuses(server)
    assert statuses == {"1": ("END", ""), "2": ("END", ""), "3": ("AVAILABLE", "")}, statuses
    assert not load.failures, load.failures[:5]
    assert "version 3 failed" not in server.log(), "a half-written version 3 was loaded"
    assert len(load.scores) > 50 and len(load.versions) > 20
    # Version 1 answered first, then version 2 (different in-distribution corpus), then 3.
    assert load.versions[0] == 1 and load.versions[-1] == 3 and 2 in load.versions
    assert len({round(s, 4) for s in load.scores}) == 2  # v1's score, then v2/v3's (same model).
