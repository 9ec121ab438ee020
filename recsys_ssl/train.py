"""Training: a strategy-aware loop with checkpoints, resume, TensorBoard and early stopping.

``python -m recsys_ssl train --features DIR --workdir DIR [--preset NAME] [--set k=v ...]``

Workdir layout: ``config.json`` (resolved config and the features directory), ``checkpoints/``
(model, optimiser and loop state every ``train.checkpoint_every_steps`` steps and at every epoch
end), ``best/`` (the weights of the best epoch on validation recall@K), ``tensorboard/`` (main,
SSL and total loss, validation recall), ``train_summary.json`` and ``training.png``.

Re-running on the same workdir resumes from the latest checkpoint: the epoch, the position
inside the epoch (the data order of an epoch is a function of the seed and the epoch), the
optimiser state, the early-stopping state and the random streams (stateless, keyed by the
global step) all come back, so a resumed run replays the run it continues.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from recsys_ssl import schema as fs
from recsys_ssl.config import Config
from recsys_ssl.data import FeatureSet
from recsys_ssl.metrics import corpus_embeddings, hits_at_k, query_embeddings, seen_rows
from recsys_ssl.model import SSLTwoTowerModel
from serving import dataclass_config

CONFIG_FILE = "config.json"
SUMMARY_FILE = "train_summary.json"


def write_json_atomic(path: str, document) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load_run(workdir: str) -> tuple[Config, str]:
    """The resolved config and features directory of a training workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: train a model into {workdir!r} first")
    with open(path) as f:
        document = json.load(f)
    return dataclass_config.from_dict(Config, document["config"]), document["features_dir"]


def build_model(feature_set: FeatureSet, config: Config) -> SSLTwoTowerModel:
    model = SSLTwoTowerModel(feature_set, config)
    # Create every variable (Keras builds lazily) so that checkpoints restore eagerly.
    history = tf.fill([1, feature_set.schema.history_length], "")
    model.query_tower({fs.USER_ID: tf.constant([""]), fs.HISTORY: history})
    model.item_embeddings(tf.constant([0]))
    if model.ssl_head is not None:
        model.ssl_head(tf.zeros([1, config.model.output_dim]))
    return model


def restore_best(workdir: str) -> tuple[SSLTwoTowerModel, FeatureSet, Config]:
    """Rebuilds the model of a workdir and loads its best weights (for evaluate and export)."""
    config, features_dir = load_run(workdir)
    feature_set = FeatureSet.load(features_dir, config.model.max_values, config.model.min_count)
    model = build_model(feature_set, config)
    best = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    if best is None:
        raise FileNotFoundError(f"no best checkpoint in {workdir}/best: has training finished an epoch?")
    tf.train.Checkpoint(model=model).restore(best).expect_partial()
    return model, feature_set, config


def _subsample(examples: dict, max_examples: int, seed: int) -> dict:
    count = len(examples[fs.ITEM_ID])
    if count <= max_examples:
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(count, size=max_examples, replace=False))
    return {key: value[keep] for key, value in examples.items()}


class Trainer:
    """Trains one model into a workdir (see the module docstring).

    Args:
      features_dir: a feature-pipeline output directory.
      workdir: where checkpoints, logs and summaries go.
      config: the resolved run configuration.
      strategy: a ``tf.distribute`` strategy; default the current (single-device) one.
    """

    def __init__(self, features_dir: str, workdir: str, config: Config, strategy: tf.distribute.Strategy | None = None):
        self.features_dir, self.workdir, self.config = features_dir, workdir, config
        self.strategy = strategy or tf.distribute.get_strategy()
        resolver = getattr(self.strategy, "cluster_resolver", None)
        self.is_chief = resolver is None or resolver.task_type in (None, "chief") or (
            resolver.task_type == "worker" and resolver.task_id == 0
        )

    # -- set-up ------------------------------------------------------------------------------
    def _write_config(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        document = {"config": dataclass_config.to_dict(self.config), "features_dir": os.path.abspath(self.features_dir)}
        path = os.path.join(self.workdir, CONFIG_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                previous = json.load(f)
            if previous["config"] != document["config"]:
                raise ValueError(f"{path} holds a different config; use a new workdir or the same settings to resume")
        if self.is_chief:
            write_json_atomic(path, document)
        logging.info("config: %s", json.dumps(document, sort_keys=True))

    def _train_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        train = self.config.train
        dataset = self.feature_set.examples("train")
        if train.train_fraction < 1.0:
            threshold = int(train.train_fraction * 10_000)
            dataset = dataset.filter(lambda x: tf.strings.to_hash_bucket_fast(
                tf.strings.join([x[fs.USER_ID], x[fs.ITEM_ID], tf.strings.as_string(x[fs.TIMESTAMP])], "\x1f"),
                10_000) < threshold)
        dataset = dataset.map(lambda x: {k: x[k] for k in (fs.USER_ID, fs.HISTORY, fs.ITEM_ID)})
        dataset = dataset.shuffle(200_000, seed=train.seed * 1_000 + epoch, reshuffle_each_iteration=False)
        dataset = dataset.batch(train.batch_size, drop_remainder=True).skip(skip_batches).prefetch(tf.data.AUTOTUNE)
        # Multi-worker: every worker reads the same (seeded) order and keeps its share of each batch.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def _steps_per_epoch(self) -> int:
        if self.config.train.train_fraction >= 1.0:
            with open(os.path.join(self.features_dir, fs.STATS_FILE)) as f:
                count = json.load(f)["splits"]["train"]["examples"]
        else:
            count = int(self._train_dataset_count())
        return count // self.config.train.batch_size

    def _train_dataset_count(self) -> int:
        fraction = self.config.train.train_fraction
        dataset = self.feature_set.examples("train").filter(lambda x: tf.strings.to_hash_bucket_fast(
            tf.strings.join([x[fs.USER_ID], x[fs.ITEM_ID], tf.strings.as_string(x[fs.TIMESTAMP])], "\x1f"),
            10_000) < int(fraction * 10_000))
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))

    # -- validation -------------------------------------------------------------------------------
    def _prepare_validation(self) -> None:
        train = self.feature_set.read_split("train")
        train_rows = self.model.item_rows(tf.constant(train[fs.ITEM_ID].astype(str))).numpy()
        self.seen = seen_rows(train[fs.USER_ID], train_rows)
        validation = _subsample(self.feature_set.read_split("validation"), self.config.train.validation_max_examples,
                                seed=self.config.train.seed)
        self.validation = validation
        self.validation_targets = self.model.item_rows(tf.constant(validation[fs.ITEM_ID].astype(str))).numpy()
        empty = np.zeros(0, np.int64)
        self.validation_exclude = [self.seen.get(u, empty) for u in validation[fs.USER_ID]]

    def validation_recall(self) -> dict[str, float]:
        """Recall@selection_k on the (sampled) validation split, excluding the users' train items:
        ``{"overall", "head", "tail"}`` (selection uses ``overall``)."""
        if len(self.validation_targets) == 0:
            return {"overall": float("nan"), "head": float("nan"), "tail": float("nan")}
        k = self.config.train.selection_k
        hits = hits_at_k(query_embeddings(self.model, self.validation),
                         corpus_embeddings(self.model, self.feature_set.num_items),
                         self.validation_targets, self.validation_exclude, [k])[:, 0]
        head = self.feature_set.is_head[self.validation_targets]
        return {"overall": float(hits.mean()), "head": float(hits[head].mean()) if head.any() else float("nan"),
                "tail": float(hits[~head].mean()) if (~head).any() else float("nan")}

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        """Trains until ``train.epochs`` or early stopping; returns the training summary."""
        config = self.config
        self._write_config()
        self.feature_set = FeatureSet.load(self.features_dir, config.model.max_values, config.model.min_count)
        with self.strategy.scope():
            self.model = build_model(self.feature_set, config)
            optimizer_class = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad}
            self.optimizer = optimizer_class[config.train.optimizer](learning_rate=config.train.learning_rate)
            state = {
                "epoch": tf.Variable(0, dtype=tf.int64), "step_in_epoch": tf.Variable(0, dtype=tf.int64),
                "global_step": tf.Variable(0, dtype=tf.int64), "best_metric": tf.Variable(-1.0, dtype=tf.float64),
                "best_epoch": tf.Variable(-1, dtype=tf.int64), "bad_epochs": tf.Variable(0, dtype=tf.int64),
                "stopped": tf.Variable(False),
            }
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, **state)
        checkpoint_dir = os.path.join(self.workdir, "checkpoints") if self.is_chief else tempfile.mkdtemp()
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
        best_dir = os.path.join(self.workdir, "best") if self.is_chief else tempfile.mkdtemp()
        best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=self.model), best_dir, max_to_keep=1)
        history_path = os.path.join(self.workdir, "train_history.json")
        history: list[dict] = []
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint)
            if os.path.isfile(history_path):
                with open(history_path) as f:
                    history = [h for h in json.load(f) if h["epoch"] < int(state["epoch"].numpy())]
            logging.info("resuming from %s: epoch %d, step %d of the epoch, global step %d", manager.latest_checkpoint,
                         int(state["epoch"].numpy()), int(state["step_in_epoch"].numpy()),
                         int(state["global_step"].numpy()))
        self._prepare_validation()
        steps_per_epoch = self._steps_per_epoch()
        if steps_per_epoch < 1:
            raise ValueError(f"fewer training examples than one batch of {config.train.batch_size}")
        writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard")) if self.is_chief else \
            tf.summary.create_noop_writer()
        train_step = make_train_step(self.strategy, self.model, self.optimizer)
        step_seconds: list[float] = []

        while int(state["epoch"].numpy()) < config.train.epochs and not bool(state["stopped"].numpy()):
            epoch = int(state["epoch"].numpy())
            start_step = int(state["step_in_epoch"].numpy())
            progress = tf.keras.utils.Progbar(steps_per_epoch, stateful_metrics=["main", "ssl", "total"],
                                              verbose=(1 if sys.stdout.isatty() else 2) if self.is_chief else 0)
            progress.update(start_step)
            sums = {"main": 0.0, "ssl": 0.0, "total": 0.0}
            count = 0
            for batch in self._train_dataset(epoch, start_step):
                if int(state["step_in_epoch"].numpy()) >= steps_per_epoch:
                    break
                started = time.perf_counter()
                seed = self.model.step_seed(state["global_step"])
                losses = {k: float(v) for k, v in train_step(batch, seed).items()}
                step_seconds.append(time.perf_counter() - started)
                state["global_step"].assign_add(1)
                state["step_in_epoch"].assign_add(1)
                global_step = int(state["global_step"].numpy())
                for key in sums:
                    sums[key] += losses[key]
                count += 1
                progress.update(int(state["step_in_epoch"].numpy()), values=list(losses.items()))
                if global_step % config.train.log_every_steps == 0:
                    with writer.as_default(step=global_step):
                        for key, value in losses.items():
                            tf.summary.scalar(f"loss/{key}", value)
                if global_step % config.train.checkpoint_every_steps == 0:
                    manager.save(checkpoint_number=global_step)
            recalls = self.validation_recall()
            recall = recalls["overall"]
            record = {"epoch": epoch, "validation_recall": recall, "validation_recall_head": recalls["head"],
                      "validation_recall_tail": recalls["tail"], "steps": count,
                      **{f"mean_{k}_loss": (v / count if count else float("nan")) for k, v in sums.items()}}
            history.append(record)
            logging.info("epoch %d: %s", epoch, json.dumps(record))
            with writer.as_default(step=int(state["global_step"].numpy())):
                for name, value in recalls.items():
                    tf.summary.scalar(f"validation/recall@{config.train.selection_k}/{name}", value)
            if recall > float(state["best_metric"].numpy()):
                state["best_metric"].assign(recall)
                state["best_epoch"].assign(epoch)
                state["bad_epochs"].assign(0)
                best_manager.save(checkpoint_number=epoch)
            else:
                state["bad_epochs"].assign_add(1)
                if int(state["bad_epochs"].numpy()) >= config.train.early_stopping_patience:
                    logging.info("early stopping: no validation improvement for %d epochs",
                                 int(state["bad_epochs"].numpy()))
                    state["stopped"].assign(True)
            state["epoch"].assign_add(1)
            state["step_in_epoch"].assign(0)
            manager.save(checkpoint_number=int(state["global_step"].numpy()))
            if self.is_chief:
                write_json_atomic(history_path, history)
        writer.flush()
        summary = {
            "epochs_run": len(history),
            "best_epoch": int(state["best_epoch"].numpy()),
            f"best_validation_recall@{config.train.selection_k}": float(state["best_metric"].numpy()),
            "early_stopped": bool(state["stopped"].numpy()),
            "global_steps": int(state["global_step"].numpy()),
            # The first steps include tracing; the median is the steady-state step time.
            "median_step_seconds": float(np.median(step_seconds[5:] or step_seconds or [float("nan")])),
            "history": history,
        }
        if self.is_chief:
            write_json_atomic(os.path.join(self.workdir, SUMMARY_FILE), summary)
            plot_history(history, os.path.join(self.workdir, "training.png"), config.train.selection_k)
        return summary


def make_train_step(strategy: tf.distribute.Strategy, model: SSLTwoTowerModel, optimizer):
    """A compiled step ``(distributed batch, seed int32 [2]) -> {"main", "ssl", "total"}`` (global means).

    Each replica folds its replica id into the step seed, scales its mean loss by the number of
    replicas (gradients are summed across replicas) and applies the update.
    """

    @tf.function
    def train_step(distributed_batch, seed):
        def step_fn(batch):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            replica_seed = tf.random.experimental.stateless_fold_in(seed, replica)
            with tf.GradientTape() as tape:
                losses = model.loss_terms(batch, replica_seed, training=True)
                scaled = losses["total"] / strategy.num_replicas_in_sync
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return {k: v / strategy.num_replicas_in_sync for k, v in losses.items()}

        per_replica = strategy.run(step_fn, args=(distributed_batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    return train_step


def plot_history(history: list[dict], path: str, k: int) -> None:
    """Training curves: mean losses and validation recall per epoch (PNG; epochs counted from 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not history:
        return
    epochs = [h["epoch"] + 1 for h in history]
    figure, (losses_axis, recall_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("main", "ssl", "total"):
        losses_axis.plot(epochs, [h[f"mean_{key}_loss"] for h in history], marker="o", label=f"{key} loss")
    losses_axis.set_title("training loss (mean over the epoch)")
    losses_axis.set_ylabel("loss")
    for slice_name, color in (("", "tab:green"), ("_head", "tab:blue"), ("_tail", "tab:orange")):
        values = [h.get(f"validation_recall{slice_name}") for h in history]
        if any(v is not None for v in values):
            recall_axis.plot(epochs, values, marker="o", color=color, label=(slice_name[1:] or "overall"))
    recall_axis.set_title(f"validation recall@{k} (model selection: overall)")
    recall_axis.set_ylabel(f"recall@{k}")
    for axis in (losses_axis, recall_axis):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlim(0.5, max(epochs) + 0.5)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
