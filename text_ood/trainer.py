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
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from core.files import write_json_atomic
from core.loop import LoopConfig, run_loop
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


class _StageTask:
    """A :class:`Stage` as a :class:`core.loop.TrainingTask`: padded length-bucketed batches."""

    def __init__(self, stage: Stage, train_step, mean_nll):
        self.name, self.stage = stage.name, stage
        self._train_step, self._mean_nll = train_step, mean_nll
        self._lengths = [len(s) for s in stage.train_ids]

    def batches(self, epoch: int, skip: int):
        stage = self.stage
        order = length_batches(self._lengths, stage.config.batch_size, np.random.default_rng([stage.seed, epoch]))
        for indices in order[skip:]:
            ids, mask = pad_batch(stage.train_ids, indices, stage.pad_id)
            yield tf.constant(ids), tf.constant(mask)

    def train_step(self, batch, step: int) -> dict:
        loss, parts = self._train_step(*batch)
        return {"loss": loss, **parts}

    def validate(self, epoch: int) -> dict:
        stage = self.stage
        val_nll = token_weighted_nll(self._mean_nll, stage.val_ids, stage.pad_id, stage.eval_batch_size)
        metrics = {"selection": val_nll, "val_nll": val_nll, "val_perplexity": math.exp(val_nll)}
        for monitor, ids in stage.monitor_ids.items():
            metrics[f"{monitor}_perplexity"] = math.exp(
                token_weighted_nll(self._mean_nll, ids, stage.pad_id, stage.eval_batch_size))
        return metrics

    def on_epoch_end(self, epoch: int, record: dict, improved: bool) -> None:
        stage = self.stage
        if stage.snapshot_epochs:
            save_lm(stage.selected_lm, os.path.join(stage.directory, "epochs", str(epoch + 1)))
        if improved:
            save_lm(stage.selected_lm, os.path.join(stage.directory, "best"))


def run_stage(stage: Stage) -> dict:
    """Trains ``stage`` (resuming from ``ckpt/``), keeps the best validation LM in ``best/``.

    The loop is :func:`core.loop.run_loop` (checkpoints, exact resume, TensorBoard); selection is
    the lowest ID-validation NLL, every epoch runs (no early stopping).

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

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def train_step(ids, mask):
        with tf.GradientTape() as tape:
            loss, parts = stage.loss_fn(ids, mask)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, {**parts, "learning_rate": schedule(optimizer.iterations)}

    task = _StageTask(stage, train_step, mean_nll_function(stage.selected_lm))
    loop_config = LoopConfig(epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, max_steps=total_steps,
                             checkpoint_every_steps=cfg.checkpoint_every_steps,
                             log_every_steps=cfg.log_every_steps, higher_is_better=False)
    result = run_loop(task, loop_config, {"optimizer": optimizer, **stage.trainables},
                      os.path.join(stage.directory, "ckpt"), stage.log_dir,
                      os.path.join(stage.directory, "history.json"))
    history = result.history
    best = min(history, key=lambda r: r["val_nll"]) if history else None
    summary = {"stage": stage.name, "steps": result.global_step, "epochs_run": len(history),
               "selected_epoch": best["epoch"] if best else None,
               "best_val_perplexity": best["val_perplexity"] if best else None,
               "history": history, "wall_time_s": result.elapsed_s,
               "train_examples": len(stage.train_ids)}
    write_json_atomic(os.path.join(stage.directory, DONE_FILE), summary, indent=2, sort_keys=False)
    return summary
