"""A training stage: an interrupted run resumes from its checkpoint and ends where an unbroken one does."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import text_ood  # noqa: F401

from text_ood import trainer
from text_ood.config import ModelConfig, StageConfig
from text_ood.lm import build_lm, load_lm
from text_ood.losses import causal_lm_loss

MODEL = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_length=12, dropout=0.0)


def _sequences(n, seed):
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(4, 30, size=rng.integers(1, 8)).tolist() + [2] for _ in range(n)]


def _stage(directory, initial_weights=None):
    lm = build_lm(MODEL, vocab_size=30, bos_id=1, eos_id=2)
    if initial_weights is not None:
        lm.set_weights(initial_weights)

    def loss_fn(ids, mask):
        return causal_lm_loss(lm(input_ids=ids, attention_mask=mask, training=True).logits, ids, mask), {}

    config = StageConfig(epochs=2, batch_size=8, learning_rate=1e-2, warmup_steps=2,
                         checkpoint_every_steps=1)
    return lm, trainer.Stage(name="unit", directory=directory, log_dir=os.path.join(directory, "logs"),
                             config=config, seed=3, loss_fn=loss_fn, trainables={"model": lm},
                             selected_lm=lm, train_ids=_sequences(40, 0), val_ids=_sequences(8, 1),
                             pad_id=3, eval_batch_size=4)


@pytest.mark.slow
def test_resume_after_interruption_matches_an_unbroken_run(tmp_path, monkeypatch):
    lm_a, stage_a = _stage(str(tmp_path / "a"))
    initial = [w.copy() for w in lm_a.get_weights()]
    summary_a = trainer.run_stage(stage_a)
    assert summary_a["steps"] == 10 and summary_a["epochs_run"] == 2

    real_pad_batch, calls = trainer.pad_batch, {"n": 0}

    def crashing_pad_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of epoch 2
            raise KeyboardInterrupt("simulated crash")
        return real_pad_batch(*args, **kwargs)

    lm_b, stage_b = _stage(str(tmp_path / "b"), initial)
    monkeypatch.setattr(trainer, "pad_batch", crashing_pad_batch)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_stage(stage_b)
    assert not trainer.is_done(stage_b.directory)
    monkeypatch.setattr(trainer, "pad_batch", real_pad_batch)

    lm_c, stage_c = _stage(str(tmp_path / "b"))  # rebuilt from scratch: weights come from ckpt/
    resume_start = time.time()
    summary_c = trainer.run_stage(stage_c)
    # The reported wall time also counts the interrupted run (up to its last checkpoint).
    assert summary_c["wall_time_s"] > time.time() - resume_start
    assert summary_c["steps"] == 10 and summary_c["epochs_run"] == 2
    for x, y in zip(lm_a.get_weights(), lm_c.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert summary_c["best_val_perplexity"] == pytest.approx(summary_a["best_val_perplexity"], rel=1e-5)

    # A finished stage is not trained again, and best/ reloads to the selected model.
    _, stage_d = _stage(str(tmp_path / "b"))
    assert trainer.run_stage(stage_d)["steps"] == 10
    best = load_lm(os.path.join(stage_d.directory, "best"))
    assert best.count_params() == lm_a.count_params()
    with open(os.path.join(stage_d.directory, "history.json")) as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2]
    assert os.listdir(os.path.join(stage_d.directory, "logs"))  # TensorBoard events


def test_schedule_warms_up_and_decays():
    schedule = trainer.WarmupLinearDecay(1.0, warmup_steps=4, total_steps=12)
    values = [float(schedule(s)) for s in (0, 2, 4, 8, 12)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
