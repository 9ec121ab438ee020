"""Options for catalogues whose id tables do not fit: hashed item ids, lazy Adam, the memory report.

All on an in-memory synthetic feature set (no feature pipeline): seconds per test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from core import config as dataclass_config
from recsys_ssl import __main__ as recsys_main
from recsys_ssl import config as config_lib
from recsys_ssl import memory
from recsys_ssl import schema as fs
from recsys_ssl.optimizers import LazyAdam, make_optimizer
from recsys_ssl.synthetic_features import synthetic_batches, synthetic_feature_set
from recsys_ssl.towers import hash_item_ids
from recsys_ssl.train import make_train_step
from recsys_ssl.workdir import build_model

NUM_ITEMS = 1009  # a prime no other dimension of the tiny model has (see the O(batch) test)


@pytest.fixture(scope="module")
def feature_set():
    return synthetic_feature_set(NUM_ITEMS, num_users=50, max_values=4, history_length=5, seed=1)


def _config(*overrides: str) -> config_lib.Config:
    return dataclass_config.apply_overrides(config_lib.tiny(), list(overrides))


def _embedding_shapes(model) -> dict[str, tuple[int, int]]:
    return {v.name.split("/")[-2]: tuple(v.shape) for v in model.trainable_variables
            if v.name.endswith("embeddings:0") and "default" not in v.name}


def test_hash_item_ids_is_farmhash_in_a_bucket_range_with_independent_salted_hashes():
    ids = tf.constant(["i0", "i1", "i2", "i0"])
    one = hash_item_ids(ids, 7).numpy()
    np.testing.assert_array_equal(one, tf.strings.to_hash_bucket_fast(ids, 7).numpy() + 2)  # 0 = pad, 1 = OOV
    assert one[0] == one[3] and one.min() >= 2 and one.max() < 2 + 7
    three = hash_item_ids(tf.constant([["i0", "i1"]]), 1000, hashes=3).numpy()
    assert three.shape == (1, 2, 3)
    np.testing.assert_array_equal(three[..., 0], hash_item_ids(tf.constant([["i0", "i1"]]), 1000).numpy())
    assert len(set(three[0, 0].tolist())) == 3  # the salted hashes differ (for these ids)


def test_config_validates_the_bucket_options():
    with pytest.raises(dataclass_config.ConfigError, match="item_id_buckets must be >= 0"):
        _config("model.item_id_buckets=-1")
    with pytest.raises(dataclass_config.ConfigError, match="needs model.item_id_buckets > 0"):
        _config("model.item_id_hashes=2")
    with pytest.raises(dataclass_config.ConfigError, match="optimizer"):
        _config("train.optimizer=sgd")


@pytest.mark.parametrize("overrides", [
    (),
    ("model.item_id_buckets=64",),
    ("model.item_id_buckets=64", "model.item_id_hashes=2"),
    ("model.item_tower_identifiers=false", "model.query_history=item_tower"),
])
def test_memory_report_lists_exactly_the_models_embedding_tables(feature_set, overrides):
    config = _config(*overrides)
    model = build_model(feature_set, config)
    sizes = {name: len(values) for name, values in feature_set.vocabularies.items()}
    tables = memory.embedding_tables(feature_set.schema, sizes, config)
    assert {t.name: (t.rows, t.dim) for t in tables} == _embedding_shapes(model)
    corpus = sum(np.asarray(ids).nbytes for ids in model._corpus.values())
    assert memory.corpus_bytes(feature_set.schema, NUM_ITEMS, config) == corpus


def test_memory_report_by_hand():
    # 10 items, 3 users, item features item_id + tags (multivalent, 4 values) + brand (2 values); d = 8.
    schema = fs.FeatureSchema(item_features=(fs.FeatureSpec("item_id", identifier=True),
                                             fs.FeatureSpec("tags", multivalent=True), fs.FeatureSpec("brand")))
    sizes = {"item_id": 10, "user_id": 3, "tags": 4, "brand": 2}
    config = _config("model.embedding_dim=8", "model.max_values=4")
    report = memory.memory_report(schema, sizes, config)
    # rows: user 3+2, history 10+2, item_id 10+2, tags 4+2, brand 2+2 = 5+12+12+6+4 = 39; 39 * 8 * 4 B = 1248 B
    assert [t["rows"] for t in report["tables"]] == [5, 12, 12, 6, 4]
    assert report["weight_bytes"] == 1248
    assert report["training_bytes"] == 3 * 1248  # Adam: weights + 2 slots
    assert report["corpus_bytes"] == 10 * (1 + 4 + 1) * 4
    hashed = memory.memory_report(schema, sizes, _config("model.embedding_dim=8", "model.item_id_buckets=3",
                                                         "train.optimizer=adagrad"))
    assert [t["rows"] for t in hashed["tables"]] == [5, 5, 5, 6, 4]
    assert hashed["training_bytes"] == 2 * 25 * 8 * 4  # Adagrad: weights + 1 slot


@pytest.mark.slow
def test_hashed_ids_feed_both_towers_and_training_lowers_the_loss(feature_set):
    tf.keras.utils.set_random_seed(0)
    config = _config("model.item_id_buckets=97", "model.item_id_hashes=2", "ssl.method=cfm")
    model = build_model(feature_set, config)
    expected = hash_item_ids(tf.constant(feature_set.item_ids[:5].astype(str)), 97, 2).numpy()
    np.testing.assert_array_equal(model.corpus_features(tf.range(5))["item_id"].numpy(), expected)
    batches = synthetic_batches(feature_set, 32, 4, seed=2)
    optimizer = make_optimizer(config.train)
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer)
    seed = tf.constant([0, 0], tf.int32)
    before = float(model.loss_terms(batches[0], seed, training=False)["main"])
    for i in range(20):
        step(batches[i % 4], tf.constant([0, i], tf.int32))
    assert float(model.loss_terms(batches[0], seed, training=False)["main"]) < before - 0.2
    # A history of one unknown item hashes into a bucket (exact ids would use the OOV row).
    query = model.query_tower({"user_id": tf.constant(["u0"]), "history": tf.constant([["never-seen", ""]])})
    assert np.isfinite(query.numpy()).all()


class _QueryModule(tf.Module):
    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def serve(self, user_id, history):
        return self.tower({"user_id": user_id, "history": history})


def test_a_hashed_query_tower_exports_without_the_item_vocabulary(feature_set, tmp_path):
    # The query side of a hashed model does not grow with the catalogue: no item StringLookup in the
    # tower (the model keeps its own, for training's target rows), so the SavedModel has no item vocabulary.
    exact = build_model(feature_set, _config())
    hashed = build_model(feature_set, _config("model.item_id_buckets=64"))
    assert hashed.query_tower.item_lookup is None
    np.testing.assert_array_equal(hashed.item_rows(tf.constant(["i5", "nope"])).numpy(), [5, -1])
    for name, model in (("exact", exact), ("hashed", hashed)):
        tf.saved_model.save(_QueryModule(model.query_tower), str(tmp_path / name))
    saved = {name: b"".join(open(os.path.join(root, f), "rb").read()
                           for root, _, files in os.walk(tmp_path / name) for f in files)
             for name in ("exact", "hashed")}
    last_item = f"i{NUM_ITEMS - 1}".encode()
    assert last_item in saved["exact"] and last_item not in saved["hashed"]


def test_lazy_adam_moves_only_the_rows_a_batch_touched_by_hand():
    lr, b1, b2 = 0.1, 0.9, 0.999
    table = tf.Variable(np.zeros([4, 2], np.float32))
    lazy = LazyAdam(learning_rate=lr)
    # Step 1: row 1 twice (the optimizer sums duplicates: g = 2 * [1, -1]) and row 3 once.
    lazy.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0, -1.0], [1.0, -1.0], [0.5, 0.5]]),
                                            tf.constant([1, 1, 3]), tf.constant([4, 2])), table)])
    # Adam's first step on a row with gradient g: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2) / (1-b1),
    # so w -= alpha m / (sqrt(v) + eps) = lr * g / (|g| + eps / sqrt(1-b2)) ~= lr * sign(g).
    eps = 1e-7 / np.sqrt(1 - b2)
    expected = np.zeros([4, 2], np.float32)
    expected[1] = -lr * np.array([2.0, -2.0]) / (2.0 + eps)
    expected[3] = -lr * np.array([0.5, 0.5]) / (0.5 + eps)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-6)
    m, v = lazy._momentums[0].numpy(), lazy._velocities[0].numpy()
    np.testing.assert_allclose(m[1], (1 - b1) * np.array([2.0, -2.0]), rtol=1e-6)
    np.testing.assert_allclose(v[3], (1 - b2) * np.array([0.25, 0.25]), rtol=1e-4)  # 1 - b2 in float32
    # Step 2 touches row 0 only: rows 1 and 3 and their moments stay (Adam would decay m and move them).
    lazy.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0, 1.0]]), tf.constant([0]), tf.constant([4, 2])), table)])
    np.testing.assert_allclose(table.numpy()[1:], expected[1:], rtol=1e-6)
    np.testing.assert_allclose(lazy._momentums[0].numpy()[1], m[1], rtol=1e-6)
    # Row 0's first update at step t=2: m = (1-b1) g, v = (1-b2) g^2, alpha_2 = lr sqrt(1-b2^2) / (1-b1^2).
    alpha = lr * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
    row0 = -alpha * (1 - b1) / (np.sqrt(1 - b2) + 1e-7)
    np.testing.assert_allclose(table.numpy()[0], [row0, row0], rtol=1e-5)
    dense = tf.Variable(np.ones([2], np.float32))  # dense gradients: Adam's update
    lazy_dense, adam = LazyAdam(learning_rate=lr), tf.keras.optimizers.Adam(learning_rate=lr)
    other = tf.Variable(np.ones([2], np.float32))
    lazy_dense.apply_gradients([(tf.constant([0.3, -0.2]), dense)])
    adam.apply_gradients([(tf.constant([0.3, -0.2]), other)])
    np.testing.assert_array_equal(dense.numpy(), other.numpy())


def _catalogue_sized_intermediates(graph, sizes: set[int]) -> list[str]:
    """Ops of a graph whose outputs have a catalogue-sized dimension (captured inputs and variables aside)."""
    found = []
    for op in graph.get_operations():
        if op.type in ("Placeholder", "VarHandleOp", "Const", "ReadVariableOp"):
            continue
        for output in op.outputs:
            if output.shape.rank and any(d in sizes for d in output.shape.as_list() if d is not None):
                found.append(f"{op.type}:{op.name}{output.shape}")
    return found


@pytest.mark.parametrize("optimizer,catalogue_work", [("lazy_adam", False), ("adam", True)])
def test_a_cfm_training_step_does_catalogue_sized_work_only_under_keras_adam(feature_set, optimizer, catalogue_work):
    # The SSL batch is drawn uniformly from the corpus by index (stateless_uniform + gather): O(batch),
    # like the rest of the step, so no op of a lazy-Adam step has a catalogue-sized output. Keras'
    # Adam decays and applies every row of the id tables each step (O(catalogue)).
    config = _config("ssl.method=cfm", f"train.optimizer={optimizer}")
    model = build_model(feature_set, config)
    step = make_train_step(tf.distribute.get_strategy(), model, make_optimizer(config.train))
    batch = synthetic_batches(feature_set, 16, 1)[0]
    graph = step.get_concrete_function(batch, tf.constant([0, 0], tf.int32)).graph
    found = _catalogue_sized_intermediates(graph, {NUM_ITEMS, NUM_ITEMS + 2})
    assert bool(found) == catalogue_work, found[:10]


def test_memory_command_prints_the_report_of_a_feature_directory(tmp_path, capsys, feature_set):
    features = tmp_path / "features"
    (features / fs.VOCAB_DIR).mkdir(parents=True)
    (features / fs.SCHEMA_FILE).write_text(json.dumps(feature_set.schema.to_json()))
    for name, values in feature_set.vocabularies.items():
        (features / fs.VOCAB_DIR / f"{name}.txt").write_text("".join(f"{v}\t1\n" for v in values))
    code = recsys_main.main(["memory", "--features", str(features), "--preset", "tiny",
                             "--set", "model.item_id_buckets=100"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    sizes = {name: len(values) for name, values in feature_set.vocabularies.items()}
    assert report == memory.memory_report(feature_set.schema, sizes, _config("model.item_id_buckets=100"))
    assert "| query_tower/history_embedding | 102 |" in out
    assert recsys_main.main(["memory", "--features", str(features), "--set", "model.item_id_bucket=1"]) == 2
