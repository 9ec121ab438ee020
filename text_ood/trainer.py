"""One training stage: AdamW, length-bucketed batches, checkpoints with resume, TensorBoard, selection.

A stage (pre-training, teacher fine-tuning, student distillation, from-scratch training) is a loss
over batches of token ids plus the language model whose ID-validation perplexity selects the
weights to keep. Layout of ``STAGE_DIR``:

- ``ckpt/``: the latest training state (models, optimizer, epoch, step within the epoch),
  written every ``checkpoint_every_steps`` steps and at each epoch end; a re-run resumes from it
  and replays the same batch order (seeded per epoch).
- ``best/``: the selected language model (:func:`text_ood.lm.save_lm` layout).
- ``done.json``: written last; a re-run of a finished stage only reloads ``best/``.
TensorBoard scalars go to ``LOG_DIR`` (loss terms every ``log_every_steps`` steps, validation
perplexity per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from text_ood.batching import length_batches, pad_batch
from text_ood.config import StageConfig
from text_ood.lm import mean_nll_function, save_lm, token_weighted_nll

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"

# (ids int32 [B, T], mask float32 [B, T]) -> (scalar loss, {name: scalar}); called in a tf.function.
LossFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, dict[str, tf.Tensor]]]


class WarmupLinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, max(total_steps, 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.maximum(0.0, tf.minimum(tf.minimum(warm, 1.0), decay))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@dataclasses.dataclass
class Stage:
    """What :func:`run_stage` trains.

    Attributes:
      name: stage name (logs, progress bar).
      directory: ``STAGE_DIR`` (see module doc).
      log_dir: TensorBoard directory.
      config: optimisation settings.
      seed: seeds batch order (per epoch) and dropout.
      loss_fn: the training loss (see :data:`LossFn`); runs with ``training=True`` models.
      trainables: objects whose ``trainable_variables`` are optimised and checkpointed
        (e.g. the student and the MLKD projection), by checkpoint name.
      selected_lm: the language model whose ID-validation perplexity selects ``best/``.
      train_ids / val_ids: token-id sequences (``[BOS] ... [EOS]``).
      pad_id: padding id.
      eval_batch_size: batch size for validation scoring.
      monitor_ids: further token-id sets whose perplexity is logged every epoch under their name
        (``history`` key ``<name>_perplexity``, TensorBoard ``<name>_perplexity``); never used for
        selection (e.g. the ID validation texts during pre-training).
      no_weight_decay: names of ``trainables`` whose variables get no AdamW weight decay (layer
        norms, biases and position embeddings never do).
      snapshot_epochs: also keep every epoch's LM in ``STAGE_DIR/epochs/<n>/`` (pre-training:
        teachers can then be fine-tuned from any pass).
    """

    name: str
    directory: str
    log_dir: str
    config: StageConfig
    seed: int
    loss_fn: LossFn
    trainables: dict[str, tf.Module]
    selected_lm: tf.keras.Model
    train_ids: Sequence[Sequence[int]]
    val_ids: Sequence[Sequence[int]]
    pad_id: int
    eval_batch_size: int = 128
    monitor_ids: dict[str, Sequence[Sequence[int]]] = dataclasses.field(default_factory=dict)
    snapshot_epochs: bool = False
    no_weight_decay: tuple[str, ...] = ()


def is_done(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, DONE_FILE))


def read_summary(directory: str) -> dict:
    with open(os.path.join(directory, DONE_FILE)) as f:
        return json.load(f)


def run_stage(stage: Stage) -> dict:
    """Trains ``stage`` (resuming from ``ckpt/``), keeps the best validation LM in ``best/``.

    Returns:
      The stage summary also written to ``done.json``: steps, epochs, validation NLL/perplexity
      per epoch, the selected epoch and wall time.
    """
    if is_done(stage.directory):
        logger.info("stage %s already done (%s); skipping", stage.name, stage.directory)
        return read_summary(stage.directory)
    cfg = stage.config
    tf.random.set_seed(stage.seed)
    os.makedirs(stage.directory, exist_ok=True)
    steps_per_epoch = math.ceil(len(stage.train_ids) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    schedule = WarmupLinearDecay(cfg.learning_rate, min(cfg.warmup_steps, total_steps // 2),
                                 total_steps)
    optimizer = tf.keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=cfg.weight_decay,
        global_clipnorm=cfg.clip_norm or None)
    optimizer.exclude_from_weight_decay(
        var_list=[v for name in stage.no_weight_decay for v in stage.trainables[name].trainable_variables],
        var_names=["ln_", "bias", "wpe"])
    variables = [v for module in stage.trainables.values() for v in module.trainable_variables]

    state = {"epoch": tf.Variable(0, dtype=tf.int64), "step_in_epoch": tf.Variable(0, dtype=tf.int64),
             "best_val_nll": tf.Variable(np.inf, dtype=tf.float64)}
    checkpoint = tf.train.Checkpoint(optimizer=optimizer, **state, **stage.trainables)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(stage.directory, "ckpt"),
                                         max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logger.info("stage %s: resumed from %s (epoch %d, step %d of the epoch)", stage.name,
                    manager.latest_checkpoint, int(state["epoch"]), int(state["step_in_epoch"]))
    history_path = os.path.join(stage.directory, "history.json")
    history = []
    if os.path.isfile(history_path):
        with open(history_path) as f:
            history = json.load(f)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def train_step(ids, mask):
        with tf.GradientTape() as tape:
            loss, parts = stage.loss_fn(ids, mask)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, parts

    mean_nll = mean_nll_function(stage.selected_lm)
    writer = tf.summary.create_file_writer(stage.log_dir)
    lengths = [len(s) for s in stage.train_ids]
    start = time.time()
    elapsed_path = os.path.join(stage.directory, "ckpt", "elapsed.json")  # wall time over resumes
    prior_elapsed = 0.0
    if manager.latest_checkpoint and os.path.isfile(elapsed_path):
        with open(elapsed_path) as f:
            prior_elapsed = json.load(f)["elapsed_s"]

    def save_checkpoint(step: int) -> None:
        manager.save(checkpoint_number=step)
        with open(elapsed_path, "w") as f:
            json.dump({"elapsed_s": prior_elapsed + time.time() - start, "step": step}, f)
    interactive = sys.stderr.isatty()
    while int(state["epoch"]) < cfg.epochs and int(optimizer.iterations) < total_steps:
        epoch = int(state["epoch"])
        batches = length_batches(lengths, cfg.batch_size, np.random.default_rng([stage.seed, epoch]))
        skip = int(state["step_in_epoch"])
        remaining = total_steps - int(optimizer.iterations)
        bar = tqdm(total=min(len(batches), skip + remaining), initial=skip, desc=f"{stage.name} epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", mininterval=1 if interactive else 60, file=sys.stderr)
        running = []
        for position in range(skip, len(batches)):
            ids, mask = pad_batch(stage.train_ids, batches[position], stage.pad_id)
            loss, parts = train_step(tf.constant(ids), tf.constant(mask))
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"stage {stage.name}: loss became {loss} at step "
                                         f"{int(optimizer.iterations)}; lower the learning rate")
            running.append(loss)
            state["step_in_epoch"].assign(position + 1)
            step = int(optimizer.iterations)
            bar.update(1)
            if step % cfg.log_every_steps == 0:
                bar.set_postfix(loss=f"{np.mean(running[-cfg.log_every_steps:]):.3f}")
                with writer.as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("learning_rate", schedule(step))
                    for key, value in parts.items():
                        tf.summary.scalar(key, value)
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                save_checkpoint(step)
            if step >= total_steps:
                break
        bar.close()
        val_nll = token_weighted_nll(mean_nll, stage.val_ids, stage.pad_id, stage.eval_batch_size)
        record = {"epoch": epoch + 1, "step": int(optimizer.iterations),
                  "train_loss": float(np.mean(running)) if running else None,
                  "val_nll": val_nll, "val_perplexity": math.exp(val_nll),
                  "elapsed_s": prior_elapsed + time.time() - start}
        for monitor, ids in stage.monitor_ids.items():
            record[f"{monitor}_perplexity"] = math.exp(
                token_weighted_nll(mean_nll, ids, stage.pad_id, stage.eval_batch_size))
        history.append(record)
        logger.info("stage %s epoch %d: train loss %.4f, val perplexity %.3f%s", stage.name,
                    epoch + 1, record["train_loss"] or float("nan"), record["val_perplexity"],
                    "".join(f", {m} perplexity {record[m + '_perplexity']:.3f}"
                            for m in stage.monitor_ids))
        with writer.as_default(step=int(optimizer.iterations)):
            tf.summary.scalar("val_perplexity", record["val_perplexity"])
            for monitor in stage.monitor_ids:
                tf.summary.scalar(f"{monitor}_perplexity", record[f"{monitor}_perplexity"])
        with writer.as_default(step=epoch + 1):  # stages of one workdir overlay on one epoch axis
            tf.summary.scalar("val_perplexity_by_epoch", record["val_perplexity"])
        if stage.snapshot_epochs:
            save_lm(stage.selected_lm, os.path.join(stage.directory, "epochs", str(epoch + 1)))
        if val_nll < float(state["best_val_nll"]):
            state["best_val_nll"].assign(val_nll)
            save_lm(stage.selected_lm, os.path.join(stage.directory, "best"))
        state["epoch"].assign(epoch + 1)
        state["step_in_epoch"].assign(0)
        save_checkpoint(int(optimizer.iterations))
        with open(history_path, "w") as f:
            json.dump(history, f, indent=2)
    writer.flush()
    best = min(history, key=lambda r: r["val_nll"]) if history else None
    summary = {"stage": stage.name, "steps": int(optimizer.iterations), "epochs_run": len(history),
               "selected_epoch": best["epoch"] if best else None,
               "best_val_perplexity": best["val_perplexity"] if best else None,
               "history": history, "wall_time_s": history[-1]["elapsed_s"] if history else 0.0,
               "train_examples": len(stage.train_ids)}
    with open(os.path.join(stage.directory, DONE_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
