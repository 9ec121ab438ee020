"""Training of the two-tower model: a strategy-aware step on the shared loop (:mod:`core.loop`).

``python -m recsys_ssl train --features DIR --workdir DIR [--preset NAME] [--set k=v ...]``

Workdir layout (:mod:`core.workdir`): ``config.json`` (the resolved config), ``run.json`` (the
features directory), ``checkpoints/``
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
import tempfile

import numpy as np
import tensorflow as tf

from core.files import write_json_atomic
from core.workdir import update_run, write_config
from core.loop import LoopConfig, run_loop
from recsys_ssl import schema as fs
from recsys_ssl.config import Config
from recsys_ssl.data import FeatureSet
from recsys_ssl.metrics import corpus_embeddings, hits_at_k, query_embeddings, seen_rows
from recsys_ssl.model import SSLTwoTowerModel
from recsys_ssl.optimizers import make_optimizer
from recsys_ssl.workdir import build_model

SUMMARY_FILE = "train_summary.json"


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
        write_config(self.workdir, self.config, write=self.is_chief)
        if self.is_chief:
            update_run(self.workdir, features_dir=os.path.abspath(self.features_dir))

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

    # -- the loop (a core.loop.TrainingTask) ----------------------------------------------------------
    @property
    def name(self) -> str:
        return "train"

    def batches(self, epoch: int, skip: int):
        return self._train_dataset(epoch, skip)

    def train_step(self, batch, step: int) -> dict:
        return self._step(batch, self.model.step_seed(step))

    def validate(self, epoch: int) -> dict[str, float]:
        recalls = self.validation_recall()
        return {"selection": recalls["overall"], **{f"validation_recall{'' if k == 'overall' else '_' + k}": v
                                                     for k, v in recalls.items()}}

    def on_epoch_end(self, epoch: int, record: dict, improved: bool) -> None:
        if improved:
            self._best_manager.save(checkpoint_number=epoch)

    def run(self) -> dict:
        """Trains until ``train.epochs`` or early stopping; returns the training summary."""
        config = self.config
        self._write_config()
        self.feature_set = FeatureSet.load(self.features_dir, config.model.max_values, config.model.min_count)
        with self.strategy.scope():
            tf.keras.utils.set_random_seed(config.train.seed)  # initial weights follow the seed
            self.model = build_model(self.feature_set, config)
            self.optimizer = make_optimizer(config.train)
        best_dir = os.path.join(self.workdir, "best") if self.is_chief else tempfile.mkdtemp()
        self._best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=self.model), best_dir, max_to_keep=1)
        self._prepare_validation()
        steps_per_epoch = self._steps_per_epoch()
        if steps_per_epoch < 1:
            raise ValueError(f"fewer training examples than one batch of {config.train.batch_size}")
        self._step = make_train_step(self.strategy, self.model, self.optimizer)
        loop_config = LoopConfig(epochs=config.train.epochs, steps_per_epoch=steps_per_epoch,
                                 checkpoint_every_steps=config.train.checkpoint_every_steps,
                                 log_every_steps=config.train.log_every_steps,
                                 early_stopping_patience=config.train.early_stopping_patience,
                                 higher_is_better=True, max_checkpoints=2)
        result = run_loop(self, loop_config, {"model": self.model, "optimizer": self.optimizer},
                          os.path.join(self.workdir, "checkpoints"), os.path.join(self.workdir, "tensorboard"),
                          os.path.join(self.workdir, "train_history.json"), is_chief=self.is_chief)
        summary = {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            f"best_validation_recall@{config.train.selection_k}": result.best_selection,
            "early_stopped": result.early_stopped,
            "global_steps": result.global_step,
            # The first steps include tracing; the median is the steady-state step time.
            "median_step_seconds": float(np.median(result.step_seconds[5:] or result.step_seconds or [float("nan")])),
            "wall_time_s": result.elapsed_s,
            "history": result.history,
        }
        if self.is_chief:
            write_json_atomic(os.path.join(self.workdir, SUMMARY_FILE), summary)
            plot_history(result.history, os.path.join(self.workdir, "training.png"), config.train.selection_k)
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
    epochs = [h["epoch"] for h in history]
    figure, (losses_axis, recall_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("main", "ssl", "total"):
        losses_axis.plot(epochs, [h.get(f"train_{key}") for h in history], marker="o", label=f"{key} loss")
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
