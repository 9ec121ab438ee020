"""Loading one version: warm-up requests (TF Serving's assets.extra format) and load errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.servable import WARMUP_FILE, ServableLoadError, load_servable


def _write_warmup(version_dir: str, texts_per_request: list[list[bytes]], signature: str = "") -> None:
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for texts in texts_per_request:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "ood"
            request.model_spec.signature_name = signature
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array(texts, dtype=object)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


@pytest.fixture
def version_dir(model_root, tmp_path):
    target = tmp_path / "ood" / "1"
    shutil.copytree(os.path.join(model_root, "ood", "1"), target)
    return str(target)


def test_warmup_requests_are_replayed(version_dir):
    _write_warmup(version_dir, [[b"hello"], [b"a", b"b", b"c"]])
    servable = load_servable("ood", 1, version_dir)
    assert servable.warm_up() == 2
    assert load_servable("ood", 1, version_dir, warm_up=False).signatures.keys() == {"serving_default"}


def test_a_failing_warmup_request_fails_the_load(version_dir):
    _write_warmup(version_dir, [[b"hello"]], signature="missing_signature")
    with pytest.raises(ServableLoadError, match="warm-up request 0 failed"):
        load_servable("ood", 1, version_dir)


def test_unloadable_directories_say_why(tmp_path, version_dir):
    with pytest.raises(ServableLoadError, match="no saved_model.pb"):
        load_servable("m", 1, str(tmp_path))
    os.remove(os.path.join(version_dir, "variables", "variables.index"))
    with pytest.raises(ServableLoadError, match="cannot load the SavedModel"):
        load_servable("m", 1, version_dir)
