"""Fixtures for the server tests: tiny real SavedModels and a real server process on 127.0.0.1.

One session-scoped ``python -m serving`` process serves every model the REST, gRPC and hot-swap
tests need (starting TensorFlow costs seconds, so it is started once):

- ``retrieval``: brute-force retrieval stand-in (200 items, k=5), label ``stable`` -> version 1;
  versions 1 and 2 are both served (``latest { num_versions: 2 }``).
- ``retrieval_scann``: the same contract with a ScaNN index (``Scann`` custom ops).
- ``ood``: the OoD scorer stand-in.
- ``tools``: test-only signatures: ``serving_default(micros: int64 [batch])`` sleeps (for
  timeouts), ``checked(x: float32 [batch])`` fails inside the graph for negative values, and
  ``total(x: float32 [batch])`` returns a scalar (outputs without a batch dimension).
  ``tools_grpc`` serves the same export as a separate servable: TensorFlow serialises calls of
  one sleeping function, so the REST and gRPC timeout tests each get their own.
- ``swap``: an OoD stand-in the hot-swap test drops new versions next to.
- ``text_ops``: a model using tensorflow-text ops (registered by the server only when needed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import serving  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

from serving import standins
from serving.export import atomic_version_dir
from core.net import free_port

OOD_CORPUS_V1 = ["what is my account balance", "transfer money to savings", "how do i reset my pin"]
OOD_CORPUS_V2 = ["zzz qqq xxx", "jjj kkk vvv", "qqq zzz"]
SERVER_TIMEOUT_MS = 3000
MAX_REQUEST_BYTES = 64 * 1024


class _Tools(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="micros")])
    def sleep(self, micros):
        dataset = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).apply(
            tf_data_testing.sleep(tf.reduce_max(micros)))
        ran = dataset.reduce(tf.constant(0, tf.int64), lambda total, _: total + 1)
        return {"slept": tf.cast(micros * ran, tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def checked(self, x):
        with tf.control_dependencies([tf.debugging.assert_non_negative(x, message="x must be >= 0")]):
            return {"sqrt": tf.sqrt(x)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def total(self, x):
        return {"total": tf.reduce_sum(x)}  # No batch dimension: cannot be split per request.


class _TextOps(tf.Module):
    """Uses tensorflow-text ops (``TFText>WhitespaceTokenizeWithOffsetsV2``, ``RegexSplitWithOffsets``)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def count(self, text):
        import tensorflow_text as tf_text

        words = tf_text.WhitespaceTokenizer().tokenize(text)
        pieces = tf_text.regex_split(text, r"[,;]")
        return {"num_words": words.row_lengths(), "num_pieces": pieces.row_lengths()}


def export_text_ops(export_dir: str) -> str:
    module = _TextOps()
    with atomic_version_dir(export_dir) as target:
        tf.saved_model.save(module, target.tmp_path, signatures={"serving_default": module.count})
    return target.path


def export_tools(export_dir: str) -> str:
    module = _Tools()
    with atomic_version_dir(export_dir) as target:
        tf.saved_model.save(module, target.tmp_path,
                            signatures={"serving_default": module.sleep, "checked": module.checked,
                                        "total": module.total})
    return target.path


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> str:
    """Exports every test model once: ``<root>/<model>/<version>/``."""
    root = str(tmp_path_factory.mktemp("models"))
    standins.export_retrieval(os.path.join(root, "retrieval"), num_items=200, k=5, version=1, seed=0)
    standins.export_retrieval(os.path.join(root, "retrieval"), num_items=200, k=5, version=2, seed=1)
    standins.export_retrieval(os.path.join(root, "retrieval_scann"), index="scann", num_items=200, k=5,
                              num_leaves=10, num_leaves_to_search=10, seed=0)
    standins.export_ood(os.path.join(root, "ood"), OOD_CORPUS_V1)
    standins.export_ood(os.path.join(root, "swap"), OOD_CORPUS_V1)
    # Ready-made next version for the hot-swap test, kept outside the served base path.
    standins.export_ood(os.path.join(root, "staging"), OOD_CORPUS_V2)
    export_tools(os.path.join(root, "tools"))
    export_text_ops(os.path.join(root, "text_ops"))
    return root


MODELS_CONFIG = """
model_config_list {{
  config {{
    name: "retrieval"
    base_path: "{root}/retrieval"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
    version_labels {{ key: "future" value: 7 }}
  }}
  config {{ name: "retrieval_scann" base_path: "{root}/retrieval_scann" model_platform: "tensorflow" }}
  config {{ name: "ood" base_path: "{root}/ood" model_platform: "tensorflow" }}
  config {{ name: "tools" base_path: "{root}/tools" model_platform: "tensorflow" }}
  config {{ name: "tools_grpc" base_path: "{root}/tools" model_platform: "tensorflow" }}
  config {{ name: "swap" base_path: "{root}/swap" model_platform: "tensorflow" }}
  config {{ name: "text_ops" base_path: "{root}/text_ops" model_platform: "tensorflow" }}
}}
"""


SHARED_SERVER_FLAGS = (
    "--file_system_poll_wait_seconds=0.2", f"--rest_api_timeout_in_ms={SERVER_TIMEOUT_MS}",
    f"--max_request_bytes={MAX_REQUEST_BYTES}", "--pad_variable_length_inputs",
    "--batch_timeout_micros=2000", "--max_batch_size=32", "--enable_reload_config_rpc",
)


class ServerProcess:
    """A running ``python -m serving`` and how to reach it.

    Args:
      root: the exported models' root (``model_root``).
      log_path: where the server's output goes.
      flags: the server's flags besides the config file and the ports.
      config: a ``ModelServerConfig`` text with ``{root}`` placeholders.
      config_name: the config file's name inside ``root``.
      preexec_fn: run in the server process before it starts (e.g. to lower its open-file limit).
    """

    def __init__(self, root: str, log_path: str, flags=SHARED_SERVER_FLAGS, config: str = MODELS_CONFIG,
                 config_name: str = "models.config", preexec_fn=None):
        self.root = root
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.config_path = os.path.join(root, config_name)
        with open(self.config_path, "w") as f:
            f.write(config.format(root=root))
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "serve", f"--model_config_file={self.config_path}",
             f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *flags],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_until_available(self, models: list[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(models)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {pending} not AVAILABLE after {timeout}s:\n{self.log()[-5000:]}")
            name = pending[0]
            try:
                with urllib.request.urlopen(f"{self.rest_url}/v1/models/{name}", timeout=5) as response:
                    states = [s["state"] for s in json.load(response)["model_version_status"]]
                if "AVAILABLE" in states:
                    pending.pop(0)
                    continue
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def server(model_root, tmp_path_factory):
    """The shared server process; asserts it shuts down cleanly (exit 0 on SIGTERM)."""
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    process = ServerProcess(model_root, log_path)
    try:
        process.wait_until_available(["retrieval", "retrieval_scann", "ood", "tools", "tools_grpc", "swap", "text_ops"])
        yield process
    finally:
        code = process.stop()
    assert code == 0, f"server exited with {code}:\n{process.log()[-3000:]}"
