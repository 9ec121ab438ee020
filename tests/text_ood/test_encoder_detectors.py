"""Encoder detectors end to end: train/evaluate/export through the CLI, fresh-process reload, hybrid.

Uses the tiny random BERT encoder (:mod:`tests.text_ood.tiny_encoder`) and the synthetic data set
of ``conftest.py``; the hybrid combines the session's tiny MLKD student with k-NN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.text_ood.tiny_encoder import write_tiny_encoder
from text_ood.__main__ import main
from text_ood.data import load_dataset
from text_ood.detectors import MahalanobisDetector, RequiresFittingError, create_detector
from text_ood.workdir import load_context

TEXTS = ["book a flight to paris on monday", "how long should i bake bread at 350 degrees", "",
         "   \n\t", "word " * 300]
RAW_BYTES = [b"caf\xe9 \xff\xfe", b"\xc3"]

RELOAD = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the WordPiece / SentencePiece ops used in the graphs
texts = json.loads(sys.argv[2])
raw = [bytes.fromhex(h) for h in json.loads(sys.argv[3])]
out = {}
for path in json.loads(sys.argv[1]):
    model = tf.saved_model.load(path)
    serve = model.signatures["serving_default"]
    result = serve(text=tf.constant([t.encode() for t in texts] + raw))
    empty = serve(text=tf.constant([], tf.string))
    out[path] = {k: v.numpy().tolist() for k, v in result.items()} | {
        "empty_shape": list(empty["ood_score"].shape), "threshold": float(model.threshold.numpy())}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("tiny_bert"))
    write_tiny_encoder(directory)
    return directory


def _train_encoder_workdir(tmp_path_factory, name, encoder_dir, data_dir, *flags) -> str:
    """Train encoder detectors (no teacher) on the tiny data set into a fresh workdir."""
    workdir = str(tmp_path_factory.mktemp(name))
    assert main(["train", "--dataset", "files", "--input", data_dir, "--workdir", workdir,
                 "--encoder", encoder_dir, "--preset", "tiny", "--set", "encoder.knn_k=2", *flags]) == 0
    return workdir


@pytest.fixture(scope="module")
def encoder_workdir(tmp_path_factory, encoder_dir, ood_data_dir) -> str:
    """An encoder-only workdir (no teacher): k-NN and both Mahalanobis variants."""
    return _train_encoder_workdir(tmp_path_factory, "encoder_only", encoder_dir, ood_data_dir,
                                  "--detectors", "knn,mahalanobis,mahalanobis_one_class")


@pytest.fixture(scope="module")
def centred_workdir(tmp_path_factory, encoder_dir, ood_data_dir) -> str:
    """k-NN with ``encoder.knn_center``: the ID training mean becomes a constant of the export."""
    return _train_encoder_workdir(tmp_path_factory, "encoder_centred", encoder_dir, ood_data_dir,
                                  "--set", "encoder.knn_center=true", "--detectors", "knn")


@pytest.fixture(scope="module")
def hybrid_workdir(tmp_path_factory, trained_workdir, encoder_dir, ood_data_dir) -> str:
    """A copy of the session's MLKD workdir with the encoder added and the hybrid trained."""
    workdir = str(tmp_path_factory.mktemp("hybrid") / "w")
    shutil.copytree(trained_workdir, workdir)
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                 "--encoder", encoder_dir, "--preset", "tiny", "--detectors", "knn,hybrid"]) == 0
    return workdir


@pytest.fixture(scope="module")
def exports(tmp_path_factory, encoder_workdir, centred_workdir, hybrid_workdir) -> dict:
    """Export paths by key: "knn", "knn_centred", "hybrid"."""
    out = {}
    for key, workdir in (("knn", encoder_workdir), ("knn_centred", centred_workdir),
                         ("hybrid", hybrid_workdir)):
        export_dir = str(tmp_path_factory.mktemp(f"export_{key}"))
        assert main(["export", "--workdir", workdir, "--export_dir", export_dir,
                     "--detector", key.removesuffix("_centred")]) == 0
        out[key] = os.path.join(export_dir, "1")
    return out


def _context(workdir, data_dir):
    return load_context(workdir, load_dataset("files", data_dir))


def test_encoder_only_workdir_evaluates_every_detector(encoder_workdir, ood_data_dir):
    with open(os.path.join(encoder_workdir, "run.json")) as f:
        run = json.load(f)
    assert run["teacher"] is None and os.path.isfile(os.path.join(run["encoder"]["path"], "vocab.txt"))
    assert run["detectors"] == ["knn", "mahalanobis", "mahalanobis_one_class"]
    assert main(["evaluate", "--workdir", encoder_workdir]) == 0
    with open(os.path.join(encoder_workdir, "eval.json")) as f:
        report = json.load(f)
    assert sorted(report["detectors"]) == ["knn", "mahalanobis", "mahalanobis_one_class"]
    for metrics in report["detectors"].values():
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("auroc", "aupr_out", "aupr_in", "far95"))
    # Only fitting reads the embedding cache (the ID training texts, embedded once for all three
    # detectors); scoring embeds raw texts, as the export does.
    assert len(os.listdir(os.path.join(encoder_workdir, "embeddings"))) == 1
    ctx = _context(encoder_workdir, ood_data_dir)
    knn = create_detector("knn", ctx)
    with pytest.raises(RequiresFittingError):
        knn.score(["text"])
    saved = np.load(os.path.join(encoder_workdir, "scores", "knn.npz"))["id"]
    # evaluate used what train saved; fitting again gives the same detector.
    restored = create_detector("knn", ctx).restore(ctx.detector_dir("knn"))
    np.testing.assert_allclose(restored.score(ctx.dataset.id_test), saved, atol=1e-6)
    np.testing.assert_allclose(knn.fit(ctx.dataset.id_train).score(ctx.dataset.id_test), saved, atol=1e-6)
    for name in ("mahalanobis", "mahalanobis_one_class"):
        fitted = create_detector(name, ctx).fit(ctx.dataset.id_train, ctx.dataset.id_train_labels)
        loaded = create_detector(name, ctx).restore(ctx.detector_dir(name))
        assert loaded.classes == fitted.classes
        np.testing.assert_allclose(loaded.score(ctx.dataset.ood_test), fitted.score(ctx.dataset.ood_test),
                                   rtol=1e-5)
    with pytest.raises(RequiresFittingError, match="not trained in this workdir"):
        create_detector("knn", ctx).restore(ctx.detector_dir("hybrid"))


def test_mahalanobis_uses_labels_only_when_asked(encoder_workdir, ood_data_dir):
    ctx = _context(encoder_workdir, ood_data_dir)
    texts = ctx.dataset.id_train
    labels = ["flight" if "flight" in t or "hotel" in t else "bank" for t in texts]
    conditional = MahalanobisDetector("m", ctx).fit(texts, labels)
    one_class = MahalanobisDetector("m1", ctx, use_labels=False).fit(texts, labels)
    unlabelled = MahalanobisDetector("m2", ctx).fit(texts)
    assert (conditional.classes, one_class.classes, unlabelled.classes) == (2, 1, 1)
    probe = ctx.dataset.ood_test[:8]
    np.testing.assert_allclose(one_class.score(probe), unlabelled.score(probe))
    assert not np.allclose(conditional.score(probe), one_class.score(probe))


def test_missing_teacher_or_encoder_fails_cleanly(encoder_workdir, tmp_path, ood_data_dir, caplog):
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 encoder_workdir, "--preset", "tiny", "--detectors", "mlkd"]) == 2
    assert "needs a teacher language model" in caplog.text
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 str(tmp_path / "nothing"), "--preset", "tiny", "--detectors", "knn"]) == 2
    assert "--encoder DIR" in caplog.text
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 str(tmp_path / "bad"), "--encoder", str(tmp_path), "--preset", "tiny",
                 "--detectors", "knn"]) == 2
    assert "not a Hugging Face model directory" in caplog.text


def test_hybrid_standardises_on_id_validation(hybrid_workdir, ood_data_dir):
    ctx = _context(hybrid_workdir, ood_data_dir)
    hybrid = create_detector("hybrid", ctx).fit(ctx.dataset.id_train)  # components as train saved them
    restored = create_detector("hybrid", ctx).restore(ctx.detector_dir("hybrid"))
    np.testing.assert_allclose(restored.weights, hybrid.weights)
    np.testing.assert_allclose(restored.means, hybrid.means)
    assert [c.name for c in hybrid.components] == ["mlkd", "knn"]
    np.testing.assert_allclose(hybrid.weights, [0.5, 0.5])  # two components: equal weights
    val = hybrid.score(ctx.dataset.id_val)
    assert abs(val.mean()) < 1e-9  # a weighted sum of ID-validation z-scores has mean 0
    components = np.stack([c.score(ctx.dataset.ood_test) for c in hybrid.components], axis=1)
    expected = ((components - hybrid.means) / hybrid.scales) @ hybrid.weights
    np.testing.assert_allclose(hybrid.score(ctx.dataset.ood_test), expected)


def test_exports_reload_in_a_fresh_process(exports, encoder_workdir, centred_workdir,
                                           hybrid_workdir, ood_data_dir):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    workdirs = {"knn": encoder_workdir, "knn_centred": centred_workdir, "hybrid": hybrid_workdir}
    paths = [exports[key] for key in workdirs]
    result = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(paths), json.dumps(TEXTS),
                             json.dumps([b.hex() for b in RAW_BYTES])],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    for key, workdir in workdirs.items():
        name = key.removesuffix("_centred")
        out = served[exports[key]]
        ctx = _context(workdir, ood_data_dir)
        detector = create_detector(name, ctx).restore(ctx.detector_dir(name))  # what export used
        np.testing.assert_allclose(out["ood_score"], detector.score(TEXTS + RAW_BYTES), atol=1e-4)
        assert out["empty_shape"] == [0]
        assert out["is_ood"] == [s > out["threshold"] for s in out["ood_score"]]
        with open(os.path.join(exports[key], "assets.extra", "detector.json")) as f:
            info = json.load(f)
        assert info["detector"] == name and info["calibration"]["split"] == "id_val"
        assert ("centred on the ID training mean" in info["score"]) == (key == "knn_centred")
        val = detector.score(ctx.dataset.id_val)
        assert 0.95 <= np.mean(val <= info["threshold"] + 1e-5) < 0.95 + 2 / len(val)
        assert set(info["signature"]["outputs"]) == set(out) - {"empty_shape", "threshold"}
    assert set(served[exports["knn"]]) == {"ood_score", "is_ood", "empty_shape", "threshold"}
    # The centred export really centres: its scores differ from the plain k-NN export's.
    centred, plain = served[exports["knn_centred"]], served[exports["knn"]]
    assert not np.allclose(centred["ood_score"], plain["ood_score"], atol=1e-3)
    hybrid_out = served[exports["hybrid"]]
    assert {"perplexity", "mlkd_score", "knn_score"} <= set(hybrid_out)
    np.testing.assert_allclose(hybrid_out["perplexity"], np.exp(hybrid_out["mlkd_score"]), rtol=1e-4)
