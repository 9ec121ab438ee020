"""The resumable training loop both halves use: checkpoints, exact resume, selection, early stopping.

A :class:`TrainingTask` says what one step, one epoch's batches and one validation are;
:func:`run_loop` does the rest, the same way for the two-tower retrieval model and every MLKD
stage:

- **Checkpoints** of the task's objects (models, optimizer) and of the loop's own state (epoch,
  position inside the epoch, global step, best score, epochs without improvement, wall time)
  every ``checkpoint_every_steps`` steps and at every epoch end, in ``checkpoint_dir``.
- **Exact resume**: a re-run restores the latest checkpoint and continues at the next batch of the
  same epoch. A task's batch order is a function of (seed, epoch) and its step randomness a
  function of the global step, and the loop turns on TensorFlow's op determinism (multi-threaded
  CPU kernels such as the embedding-gradient sums otherwise add in a varying order), so the
  resumed run replays the one it continues (after SIGKILL too; everything since the last
  checkpoint is simply done again).
- **Selection and early stopping**: after every epoch ``validate`` returns metrics; the
  ``selection`` metric decides whether the epoch is the best so far (``on_epoch_end`` then
  keeps it) and, with ``early_stopping_patience > 0``, when to stop.
- **TensorBoard**: every loss term every ``log_every_steps`` steps (``train/<term>``), every
  validation metric per epoch (``validation/<metric>``); a tqdm progress bar per epoch.
- ``history_path``: one JSON record per finished epoch (``epoch`` counted from 1, ``steps``,
  ``train_<term>`` means over the epoch, the validation metrics, ``elapsed_s``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from core.files import write_json_atomic

logger = logging.getLogger(__name__)


class TrainingTask(Protocol):
    """What :func:`run_loop` trains."""

    name: str

    def batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """Epoch ``epoch``'s batches (0-based) in a fixed order, without the first ``skip``."""

    def train_step(self, batch: Any, step: int) -> Mapping[str, Any]:
        """One optimizer update at global step ``step`` (0-based); returns scalar loss terms.

        The term named ``loss`` (if any, else ``total``) must stay finite.
        """

    def validate(self, epoch: int) -> dict[str, float]:
        """Validation metrics after epoch ``epoch`` (0-based); must include ``"selection"``."""

    def on_epoch_end(self, epoch: int, record: dict, improved: bool) -> None:
        """Called after validation, before the epoch's checkpoint: keep the best weights etc."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and how the loop runs.

    Attributes:
      epochs: maximum epochs.
      steps_per_epoch: batches per epoch (the loop stops an epoch after this many).
      max_steps: stop after this many global steps; 0 = no limit.
      checkpoint_every_steps: mid-epoch checkpoints; 0 = only at epoch ends.
      log_every_steps: TensorBoard loss terms every this many steps.
      early_stopping_patience: stop after this many epochs without a better selection metric;
        0 = run every epoch.
      higher_is_better: direction of the selection metric.
      max_checkpoints: checkpoints kept in ``checkpoint_dir``.
    """

    epochs: int
    steps_per_epoch: int
    max_steps: int = 0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50
    early_stopping_patience: int = 0
    higher_is_better: bool = True
    max_checkpoints: int = 1

    def __post_init__(self):
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, received {self}")
        if min(self.max_steps, self.checkpoint_every_steps, self.early_stopping_patience) < 0 \
                or self.log_every_steps < 1:
            raise ValueError(f"max_steps, checkpoint_every_steps, early_stopping_patience must be >= 0 "
                             f"and log_every_steps >= 1, received {self}")


@dataclasses.dataclass
class LoopResult:
    """What :func:`run_loop` returns: the epoch records and the final loop state."""

    history: list[dict]
    global_step: int
    best_epoch: int  # 1-based; 0 = no epoch finished with a finite selection metric
    best_selection: float  # the best epoch's selection metric (NaN if none)
    early_stopped: bool
    elapsed_s: float  # wall time over every run of this loop (resumes included)
    step_seconds: list[float]  # duration of each train_step of this process


def _require_loop_state(path: str) -> None:
    """Raises ValueError for a checkpoint written by the per-package loops this one replaced.

    Those kept their state (``epoch``, ``step_in_epoch``, ...) at the checkpoint's top level and had
    no ``loop_state``; resuming one here would restore the weights but not the position, so it is
    refused. Finished artefacts (``best/``, ``done.json``, exports) of such runs are unaffected.
    """
    names = [name for name, _ in tf.train.list_variables(path)]
    if not any(name.startswith("loop_state/") for name in names):
        raise ValueError(f"{path} was written by the training loop of an older version (before "
                         "core.loop, commit a0cedac and earlier: no loop_state in the checkpoint); "
                         "finish that run with the version that started it, or start a new workdir")


def run_loop(task: TrainingTask, config: LoopConfig, trackables: Mapping[str, Any], checkpoint_dir: str,
             log_dir: str | None, history_path: str | None, is_chief: bool = True) -> LoopResult:
    """Trains ``task`` until ``config.epochs``, ``config.max_steps`` or early stopping, resuming.

    Args:
      task: see :class:`TrainingTask`.
      config: see :class:`LoopConfig`.
      trackables: objects checkpointed with the loop state (models, optimizer), by name.
      checkpoint_dir: where checkpoints go (non-chief workers of a multi-worker run write to a
        temporary directory instead).
      log_dir: TensorBoard directory (None = no logs; non-chief workers never log).
      history_path: the epoch records file (None = not written; non-chief workers never write).
      is_chief: False on non-chief workers of a multi-worker strategy.
    """
    tf.config.experimental.enable_op_determinism()  # same inputs, same floating-point sums
    sign = 1.0 if config.higher_is_better else -1.0
    state = {"epoch": tf.Variable(0, dtype=tf.int64), "step_in_epoch": tf.Variable(0, dtype=tf.int64),
             "global_step": tf.Variable(0, dtype=tf.int64),
             "best_score": tf.Variable(-np.inf, dtype=tf.float64),  # sign * best selection metric
             "best_epoch": tf.Variable(0, dtype=tf.int64), "bad_epochs": tf.Variable(0, dtype=tf.int64),
             "stopped": tf.Variable(False), "elapsed_s": tf.Variable(0.0, dtype=tf.float64)}
    checkpoint = tf.train.Checkpoint(**trackables, loop_state=tf.train.Checkpoint(**state))
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir if is_chief else tempfile.mkdtemp(),
                                         max_to_keep=config.max_checkpoints)
    history: list[dict] = []
    if manager.latest_checkpoint:
        _require_loop_state(manager.latest_checkpoint)
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if history_path and os.path.isfile(history_path):
            with open(history_path) as f:
                history = [h for h in json.load(f) if h["epoch"] <= int(state["epoch"])]
        logger.info("%s: resumed from %s (epoch %d, step %d of the epoch, global step %d)", task.name,
                    manager.latest_checkpoint, int(state["epoch"]) + 1, int(state["step_in_epoch"]),
                    int(state["global_step"]))
    writer = tf.summary.create_file_writer(log_dir) if (log_dir and is_chief) else tf.summary.create_noop_writer()
    started, prior_elapsed = time.time(), float(state["elapsed_s"])
    step_seconds: list[float] = []

    def save_checkpoint() -> None:
        state["elapsed_s"].assign(prior_elapsed + time.time() - started)
        manager.save(checkpoint_number=int(state["global_step"]))

    def out_of_steps() -> bool:
        return bool(config.max_steps) and int(state["global_step"]) >= config.max_steps

    interactive = sys.stderr.isatty()
    while int(state["epoch"]) < config.epochs and not bool(state["stopped"]) and not out_of_steps():
        epoch, skip = int(state["epoch"]), int(state["step_in_epoch"])
        remaining = config.max_steps - int(state["global_step"]) if config.max_steps else config.steps_per_epoch
        bar = tqdm(total=min(config.steps_per_epoch, skip + remaining), initial=skip, unit="batch",
                   desc=f"{task.name} epoch {epoch + 1}/{config.epochs}", disable=not is_chief,
                   mininterval=1 if interactive else 60, file=sys.stderr)
        sums: dict[str, float] = {}
        count = 0
        for batch in task.batches(epoch, skip):
            if int(state["step_in_epoch"]) >= config.steps_per_epoch or out_of_steps():
                break
            step = int(state["global_step"])
            step_start = time.perf_counter()
            terms = {k: float(v) for k, v in task.train_step(batch, step).items()}
            step_seconds.append(time.perf_counter() - step_start)
            loss = terms.get("loss", terms.get("total"))
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"{task.name}: loss became {loss} at step {step + 1}; "
                                         "lower the learning rate")
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            state["global_step"].assign_add(1)
            state["step_in_epoch"].assign_add(1)
            bar.update(1)
            global_step = step + 1
            if global_step % config.log_every_steps == 0:
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.3f}")
                with writer.as_default(step=global_step):
                    for key, value in terms.items():
                        tf.summary.scalar(f"train/{key}", value)
            if config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0:
                save_checkpoint()
        bar.close()
        metrics = task.validate(epoch)
        selection = float(metrics["selection"])
        record = {"epoch": epoch + 1, "steps": count, "global_step": int(state["global_step"]),
                  **{f"train_{k}": (v / count if count else float("nan")) for k, v in sums.items()},
                  **{k: v for k, v in metrics.items() if k != "selection"},
                  "elapsed_s": prior_elapsed + time.time() - started}
        history.append(record)
        logger.info("%s epoch %d: %s", task.name, epoch + 1, json.dumps(record))
        with writer.as_default(step=int(state["global_step"])):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "selection":
                    tf.summary.scalar(f"validation/{key}", value)
        improved = sign * selection > float(state["best_score"])
        if improved:
            state["best_score"].assign(sign * selection)
            state["best_epoch"].assign(epoch + 1)
            state["bad_epochs"].assign(0)
        else:
            state["bad_epochs"].assign_add(1)
            if config.early_stopping_patience and int(state["bad_epochs"]) >= config.early_stopping_patience:
                logger.info("%s: early stopping, no validation improvement for %d epochs", task.name,
                            int(state["bad_epochs"]))
                state["stopped"].assign(True)
        task.on_epoch_end(epoch, record, improved)
        state["epoch"].assign_add(1)
        state["step_in_epoch"].assign(0)
        save_checkpoint()
        if history_path and is_chief:
            write_json_atomic(history_path, history)
    writer.flush()
    best = float(state["best_score"])
    return LoopResult(history=history, global_step=int(state["global_step"]), best_epoch=int(state["best_epoch"]),
                      best_selection=sign * best if math.isfinite(best) else float("nan"),
                      early_stopped=bool(state["stopped"]),
                      elapsed_s=history[-1]["elapsed_s"] if history else float(state["elapsed_s"]),
                      step_seconds=step_seconds)
