"""export -> SavedModel reloaded in a fresh process: same scores, bad inputs, threshold, versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from text_ood.__main__ import main
from text_ood.data import load_dataset
from text_ood.detectors import create_detector
from text_ood.workdir import load_context

TEXTS = ["book a flight to paris on monday", "how long should i bake bread at 350 degrees",
         "", "   \n\t", "word " * 3000]
RAW_BYTES = [b"caf\xe9 \xff\xfe", b"\xc3"]

RELOAD = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the SentencePiece ops used in the graph
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
texts = json.loads(sys.argv[2])
raw = [bytes.fromhex(h) for h in json.loads(sys.argv[3])]
out = serve(text=tf.constant([t.encode() for t in texts] + raw))
empty = serve(text=tf.constant([], tf.string))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()} |
                 {"empty_shape": list(empty["ood_score"].shape),
                  "threshold": float(model.threshold.numpy())}))
"""


@pytest.fixture(scope="module")
def exported(exported_mlkd):
    return exported_mlkd  # the session's export of the trained workdir (tests/fixtures/trained.py)


def test_fresh_process_reload_gives_the_same_scores(exported, trained_workdir, ood_data_dir):
    assert sorted(os.listdir(exported)) == ["1"]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", RELOAD, os.path.join(exported, "1"),
                             json.dumps(TEXTS), json.dumps([b.hex() for b in RAW_BYTES])],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])

    ctx = load_context(trained_workdir, load_dataset("files", ood_data_dir))
    detector = create_detector("mlkd", ctx).restore(ctx.detector_dir("mlkd"))
    expected = detector.score(TEXTS + RAW_BYTES)
    np.testing.assert_allclose(served["ood_score"], expected, atol=1e-4)
    np.testing.assert_allclose(served["perplexity"], np.exp(expected), rtol=1e-4)
    assert served["empty_shape"] == [0]
    assert served["is_ood"] == [s > served["threshold"] for s in served["ood_score"]]


def test_threshold_is_calibrated_on_id_validation(exported, trained_workdir, ood_data_dir):
    with open(os.path.join(exported, "1", "assets.extra", "detector.json")) as f:
        info = json.load(f)
    assert info["detector"] == "mlkd" and info["calibration"]["split"] == "id_val"
    # The text limits the server and batch scoring apply (issue 23): bytes, and the scorer's token window.
    assert info["max_text_bytes"] == 100_000 and info["max_text_tokens"] == ctx_max_length(trained_workdir)
    with open(os.path.join(exported, "1", "assets.extra", "serving_limits.json")) as f:
        assert json.load(f) == {"max_string_bytes": 100_000}
    ctx = load_context(trained_workdir, load_dataset("files", ood_data_dir))
    val_scores = create_detector("mlkd", ctx).restore(ctx.detector_dir("mlkd")).score(ctx.dataset.id_val)
    share = np.mean(val_scores <= info["threshold"] + 1e-5)
    assert 0.95 <= share < 0.95 + 2 / len(val_scores)


def ctx_max_length(workdir: str) -> int:
    """The LM scorer's token window (max_length) from the workdir's resolved config."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    return config["model"]["max_length"]


def test_second_export_is_a_new_version(trained_workdir, tmp_path):
    """Its own export directory: the session's shared export (read by other tests) stays at version 1."""
    import shutil

    exported = str(tmp_path / "export")
    for detector, versions in (("mlkd", ["1"]), ("scratch", ["1", "2"])):
        assert main(["export", "--workdir", trained_workdir, "--export_dir", exported, "--detector", detector]) == 0
        assert sorted(os.listdir(exported)) == versions
    with open(os.path.join(exported, "2", "assets.extra", "detector.json")) as f:
        assert json.load(f)["detector"] == "scratch"
    shutil.rmtree(exported)
