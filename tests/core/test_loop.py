"""core.loop: checkpoints of the loops it replaced are refused with a clear error, not half-restored."""

import numpy as np
import pytest
import tensorflow as tf

from core.loop import LoopConfig, run_loop


class _OneWeightTask:
    """Fits w to 3.0 by SGD; two batches per epoch."""

    name = "toy"

    def __init__(self):
        self.w = tf.Variable(0.0)
        self.optimizer = tf.keras.optimizers.SGD(0.1)

    def batches(self, epoch, skip):
        return [np.float32(3.0)] * (2 - skip)

    def train_step(self, target, step):
        with tf.GradientTape() as tape:
            loss = (self.w - target) ** 2
        self.optimizer.apply_gradients([(tape.gradient(loss, self.w), self.w)])
        return {"loss": loss}

    def validate(self, epoch):
        return {"selection": float((self.w - 3.0) ** 2)}

    def on_epoch_end(self, epoch, record, improved):
        pass


def test_a_checkpoint_without_loop_state_is_refused_with_a_clear_error(tmp_path):
    task = _OneWeightTask()
    legacy = tf.train.Checkpoint(w=task.w, epoch=tf.Variable(1, dtype=tf.int64),
                                 step_in_epoch=tf.Variable(1, dtype=tf.int64),
                                 best_val_nll=tf.Variable(0.5, dtype=tf.float64))
    tf.train.CheckpointManager(legacy, str(tmp_path / "ckpt"), max_to_keep=1).save(checkpoint_number=3)
    config = LoopConfig(epochs=2, steps_per_epoch=2, higher_is_better=False)
    with pytest.raises(ValueError, match="older version"):
        run_loop(task, config, {"w": task.w}, str(tmp_path / "ckpt"), None, None)


class _Interrupted(Exception):
    pass


def test_the_loop_resumes_its_own_checkpoints_mid_epoch(tmp_path):
    config = LoopConfig(epochs=2, steps_per_epoch=2, checkpoint_every_steps=1, higher_is_better=False)
    first = _OneWeightTask()
    step = first.train_step

    def crash_at_step_3(target, global_step):
        if global_step == 2:
            raise _Interrupted
        return step(target, global_step)

    first.train_step = crash_at_step_3
    with pytest.raises(_Interrupted):
        run_loop(first, config, {"w": first.w, "optimizer": first.optimizer}, str(tmp_path / "ckpt"), None, None)
    resumed = _OneWeightTask()
    result = run_loop(resumed, config, {"w": resumed.w, "optimizer": resumed.optimizer},
                      str(tmp_path / "ckpt"), None, None)
    straight = _OneWeightTask()
    run_loop(straight, config, {"w": straight.w, "optimizer": straight.optimizer},
             str(tmp_path / "other"), None, None)
    assert result.global_step == 4 and result.best_epoch == 2
    assert float(resumed.w) == pytest.approx(float(straight.w), abs=1e-7)
