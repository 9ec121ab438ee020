"""Training, resume (also after SIGKILL), evaluation and export on a small real feature directory."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from recsys_ssl import __main__ as cli
from recsys_ssl import config as config_lib
from recsys_ssl.data import FeatureSet
from recsys_ssl.export import build_index, scann_defaults
from recsys_ssl.train import Trainer
from recsys_ssl.workdir import build_model
from core import config as dataclass_config


def _config(**overrides) -> config_lib.Config:
    return dataclass_config.apply_overrides(config_lib.tiny(), [f"{k}={v}" for k, v in overrides.items()])


def test_feature_set_reads_the_pipeline_contract(features_dir):
    feature_set = FeatureSet.load(features_dir, max_values=4)
    assert feature_set.num_items == 60
    assert feature_set.schema.item_feature_names[0] == "item_id"
    assert set(feature_set.item_feature_ids) == set(feature_set.schema.item_feature_names)
    assert feature_set.item_feature_ids["tags"].shape == (60, 4)
    assert feature_set.item_probability.sum() == pytest.approx(1.0, abs=1e-5)
    assert 0 < feature_set.is_head.sum() < 60


@pytest.mark.parametrize("method,variant", [
    ("none", {}), ("rfm", {}), ("cfm", {}), ("feature_dropout", {}),
    # the paper's per-example masks, item_id masked in both views, a projection head
    ("cfm", {"ssl.mask_granularity": "example", "ssl.identifiers": "both_masked", "ssl.projection_head": 8}),
    # features-only item tower, history read through it (shared weights)
    ("cfm", {"model.item_tower_identifiers": "false", "model.query_history": "item_tower"}),
    # item-to-item queries with mixed negative sampling (issue 21)
    ("cfm", {"model.query_mode": "item", "train.mns_negatives": 16}),
])
def test_training_lowers_the_loss(features_dir, method, variant):
    # Seeded initial weights (otherwise they follow whichever tests ran before in the process),
    # and losses averaged over 8 fixed SSL draws: a single draw's SSL loss could rise after
    # training for some initialisations (seen once in CI-like runs). Checked with init seeds 0, 1, 3:
    # main falls by >= 3.7, SSL by >= 0.5 in every case.
    tf.keras.utils.set_random_seed(0)
    config = _config(**{"ssl.method": method, **variant})
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    batch = next(iter(feature_set.examples("train").batch(64)))
    optimizer = tf.keras.optimizers.Adam(0.01)

    @tf.function
    def step(batch, seed):
        with tf.GradientTape() as tape:
            losses = model.loss_terms(batch, seed)
        optimizer.apply_gradients(zip(tape.gradient(losses["total"], model.trainable_variables),
                                      model.trainable_variables))
        return losses

    def mean_terms(draws: int = 8) -> dict:
        # One SSL draw (batch of corpus rows and masks) is noisy; the mean over fixed draws is not.
        terms = [model.loss_terms(batch, tf.constant([1, d], tf.int32), training=False) for d in range(draws)]
        return {k: float(np.mean([float(t[k]) for t in terms])) for k in terms[0]}

    before = mean_terms()
    for i in range(30):
        step(batch, tf.constant([0, i], tf.int32))
    after = mean_terms()
    assert after["main"] < before["main"] - 0.3
    if method == "none":
        assert before["ssl"] == 0.0
    else:
        assert after["ssl"] < before["ssl"]
        assert before["total"] == pytest.approx(before["main"] + 0.3 * before["ssl"], rel=1e-5)


def test_logq_strength_scales_the_correction_between_none_and_full(features_dir):
    config = _config()
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    batch = next(iter(feature_set.examples("train").batch(64)))
    seed = tf.constant([0, 0], tf.int32)

    def main_loss(**train_overrides) -> float:
        model.config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train_overrides))
        return float(model.loss_terms(batch, seed, training=False)["main"])

    full, off = main_loss(), main_loss(logq_strength=0.0)  # 0: no probability op at all
    assert full != pytest.approx(off, rel=1e-3)  # the correction matters on this batch
    assert main_loss(logq_strength=1.0) == full
    assert main_loss(logq_strength=1e-6) == pytest.approx(off, rel=1e-5)  # the limit of q^s is no correction
    half = main_loss(logq_strength=0.5)
    assert half not in (pytest.approx(full, rel=1e-4), pytest.approx(off, rel=1e-4))
    with pytest.raises(ValueError, match="logq_strength"):
        config_lib.TrainConfig(logq_strength=-0.5)


def test_keras_fit_trains_the_ssl_objective_with_a_new_seed_per_step(features_dir):
    # tfrs.Model.train_step sums compute_loss and Keras' Model.losses: model.fit must work, and
    # every step must draw its own SSL batch and masks (the seed follows optimizer.iterations).
    config = _config(**{"ssl.method": "cfm"})
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    model = build_model(feature_set, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    data = feature_set.examples("train").map(lambda x: {k: x[k] for k in ("user_id", "history", "item_id")})
    batch = next(iter(data.batch(64)))
    at_step_0 = float(model.compute_loss(batch))
    assert float(model.compute_loss(batch)) == at_step_0  # same step, same SSL draw
    model.optimizer.iterations.assign(1)
    assert float(model.compute_loss(batch)) != at_step_0  # next step, another SSL batch / mask
    model.optimizer.iterations.assign(0)
    assert model.losses == []  # Keras' own regularisation losses, no longer shadowed
    history = model.fit(data.batch(64, drop_remainder=True).take(8).cache().repeat(), steps_per_epoch=8,
                        epochs=4, verbose=0)
    assert int(model.optimizer.iterations) == 32
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.3


def test_train_resume_evaluate_export(features_dir, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(**{"train.epochs": 1, "train.early_stopping_patience": 5})
    first = Trainer(features_dir, workdir, config).run()
    assert first["epochs_run"] == 1 and first["best_epoch"] == 1  # epochs count from 1
    # Re-running the finished run restores its checkpoint instead of starting over.
    assert cli.main(["train", "--features", features_dir, "--workdir", workdir, "--preset", "tiny",
                     "--set", "train.epochs=1", "--set", "train.early_stopping_patience=5"]) == 0
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    assert summary["global_steps"] == first["global_steps"]  # nothing left to do: no extra steps
    for name in ("config.json", "training.png", "train_history.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    result = json.load(open(os.path.join(workdir, "eval.json")))
    metrics = result["metrics"]
    assert metrics["head"]["examples"] + metrics["tail"]["examples"] == metrics["overall"]["examples"] > 0
    saved = np.load(os.path.join(workdir, "eval_hits.npz"))
    feature_set = FeatureSet.load(features_dir, config.model.max_values)
    np.testing.assert_array_equal(saved["cold"], feature_set.item_probability[saved["targets"]] == 0)
    assert metrics["cold"]["examples"] == int(saved["cold"].sum()) <= metrics["tail"]["examples"]
    assert not (saved["cold"] & saved["head"]).any()
    for slice_metrics in (m for m in metrics.values() if m["examples"]):  # an empty slice is NaN
        assert 0.0 <= slice_metrics["recall@10"] <= slice_metrics["recall@50"] <= slice_metrics["recall@100"] <= 1.0
    assert os.path.isfile(os.path.join(workdir, "recall_at_k.png"))

    # Export (brute force), reload in a fresh process: same top-k as the in-process model.
    export_dir = str(tmp_path / "export")
    assert cli.main(["export", "--workdir", workdir, "--export_dir", export_dir, "--k", "10"]) == 0
    assert os.listdir(export_dir) == ["1"]
    from recsys_ssl.workdir import restore_best
    from recsys_ssl.metrics import corpus_embeddings

    model, feature_set, _ = restore_best(workdir)
    users = np.array(["u00001", "nobody"])
    history = np.array([["i00002", "i00003", ""], ["", "", ""]])
    queries = model.query_tower({"user_id": tf.constant(users), "history": tf.constant(history)}).numpy()
    scores = queries @ corpus_embeddings(model, feature_set.num_items).T
    expected = [list(feature_set.item_ids[np.argsort(-row, kind="stable")[:10]]) for row in scores]
    code = (
        "import json, sys, serving, tensorflow as tf\n"
        f"m = tf.saved_model.load({os.path.join(export_dir, '1')!r})\n"
        "out = m.signatures['serving_default'](user_id=tf.constant(json.loads(sys.argv[1])),"
        " history=tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'ids': [[i.decode() for i in r] for r in out['item_ids'].numpy()],"
        " 'scores': out['scores'].numpy().tolist()}))\n"
    )
    process = subprocess.run([sys.executable, "-c", code, json.dumps(users.tolist()), json.dumps(history.tolist())],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    reloaded = json.loads(process.stdout.strip().splitlines()[-1])
    assert reloaded["ids"] == expected
    np.testing.assert_allclose(reloaded["scores"], np.sort(scores, axis=1)[:, ::-1][:, :10], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"model.query_history": "item_tower"}])
def test_scann_export_loads_with_scann_ops(features_dir, tmp_path, overrides):
    workdir = str(tmp_path / "run")
    Trainer(features_dir, workdir, _config(**{"train.epochs": 1, **overrides})).run()
    export_dir = str(tmp_path / "scann")
    # The ScaNN knobs of the command, set explicitly in one of the two runs.
    knobs = ["--num_leaves", "4", "--leaves_to_search", "2", "--reorder", "50"] if overrides else []
    assert cli.main(["export", "--workdir", workdir, "--export_dir", export_dir, "--index", "scann", "--k", "5",
                     *knobs]) == 0
    code = (
        "import scann, serving, tensorflow as tf\n"
        f"m = tf.saved_model.load({os.path.join(export_dir, '1')!r})\n"
        "out = m.signatures['serving_default'](user_id=tf.constant(['u00001']), history=tf.constant([['i00002']]))\n"
        "print(out['item_ids'].shape, out['scores'].shape)\n"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "(1, 5) (1, 5)" in process.stdout


def test_scann_defaults_keep_the_old_rule_up_to_250k_items_and_follow_the_10m_measurement():
    for num_items in (3, 100, 9_742, 100_000, 250_000):  # the rule before issue 25
        leaves = max(1, min(1000, int(np.sqrt(num_items) * 2)))
        assert scann_defaults(num_items, 100) == {"num_leaves": leaves, "num_leaves_to_search": max(1, leaves // 5),
                                                  "num_reordering_candidates": 200}
    assert scann_defaults(10_000_000, 10) == {"num_leaves": 4000, "num_leaves_to_search": 200,
                                              "num_reordering_candidates": 2000}
    assert scann_defaults(10_000_000, 10, num_leaves=50)["num_leaves_to_search"] == 10


def test_build_index_takes_the_given_scann_options_over_the_defaults():
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    ids = np.array([f"i{n}" for n in range(300)])
    layer = build_index(None, vectors, ids, "scann", 5, {"num_reordering_candidates": 40, "num_leaves": None})
    assert layer._num_reordering_candidates == 40
    assert build_index(None, vectors, ids, "scann", 5)._num_reordering_candidates == 200


@pytest.mark.parametrize("argv, message", [
    (["--reorder", "500"], "--reorder tune the ScaNN index: use them with --index scann"),
    (["--index", "scann", "--num_leaves", "0"], "--num_leaves must be >= 1"),
    (["--index", "scann", "--leaves_to_search", "many"], "expected an integer"),
])
def test_export_refuses_scann_knobs_it_cannot_use(tmp_path, capsys, argv, message):
    workdir = tmp_path / "run"
    workdir.mkdir()
    assert cli.main(["export", "--workdir", str(workdir), "--export_dir", str(tmp_path / "e"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_sigkill_then_resume_matches_an_uninterrupted_run(features_dir, tmp_path):
    args = ["--features", features_dir, "--preset", "tiny", "--set", "train.epochs=2",
            "--set", "train.early_stopping_patience=5", "--set", "train.checkpoint_every_steps=3"]
    reference = str(tmp_path / "reference")
    assert cli.main(["train", "--workdir", reference, *args]) == 0
    killed = str(tmp_path / "killed")
    process = subprocess.Popen([sys.executable, "-m", "recsys_ssl", "train", "--workdir", killed, *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = os.path.join(killed, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(checkpoints) and any(n.startswith("ckpt-") and n.endswith(".index") for n in os.listdir(checkpoints)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not os.path.isfile(os.path.join(killed, "train_summary.json"))
    assert cli.main(["train", "--workdir", killed, *args]) == 0
    expected = json.load(open(os.path.join(reference, "train_summary.json")))
    resumed = json.load(open(os.path.join(killed, "train_summary.json")))
    assert resumed["global_steps"] == expected["global_steps"]
    assert resumed["epochs_run"] == expected["epochs_run"] == 2
    # Same initial weights (seeded), data order and random streams: the resumed run replays the
    # uninterrupted one, so the final weights agree to float tolerance.
    for a, b in zip(resumed["history"], expected["history"]):
        assert a["validation_recall"] == pytest.approx(b["validation_recall"], abs=1e-6)
    readers = [tf.train.load_checkpoint(os.path.join(w, "checkpoints")) for w in (reference, killed)]
    names = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("model/") and "OPTIMIZER" not in n]
    assert len(names) > 5
    for name in names:
        np.testing.assert_allclose(readers[1].get_tensor(name), readers[0].get_tensor(name), rtol=1e-5, atol=1e-5)


def test_cli_rejects_unknown_config_keys(features_dir, tmp_path, capsys):
    assert cli.main(["train", "--features", features_dir, "--workdir", str(tmp_path / "w"),
                     "--set", "ssl.methd=cfm"]) == 2
    assert "unknown config key 'ssl.methd'" in capsys.readouterr().err
