"""Identity check for refactors of the training loops: fixed seeds, checksums of the final weights.

Trains, with TensorFlow op determinism on, (1) a text_ood stage (1 x 16 GPT-2, dropout 0.1,
3 epochs, checkpoints every 2 steps) and (2) the two-tower model without and with CFM (tiny
preset, 3 epochs, early stopping) on a small feature directory, and writes a SHA-256 prefix of
each model's final weights with the per-epoch validation metrics and losses. Run it against two
checkouts and compare; equal checksums mean bitwise-identical training::

  cd OLD_CHECKOUT && python -m benchmarks.training_identity --workdir /tmp/old --output_file old.json --features F
  cd NEW_CHECKOUT && python -m benchmarks.training_identity --workdir /tmp/new --output_file new.json --features F
  diff old.json new.json   # best_epoch counts from 1 since the shared loop (core.loop)

``F``: any small feature directory (BENCHMARKS.md used the tests' synthetic one: 80 users, 60
items, 2,400 interactions, ``--split user_time --history_length 5``). The initial weights are
seeded here (7) and any seeding inside ``Trainer.run`` is neutralised, so checkouts from before and
after the trainer seeded its own initialisation compare alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

import recsys_ssl  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

try:
    from core import config as dataclass_config
except ImportError:  # checkouts from before core/ existed
    from serving import dataclass_config


def digest(weights) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def text_stage(workdir: str) -> dict:
    from text_ood import trainer
    from text_ood.config import ModelConfig, StageConfig
    from text_ood.lm import build_lm
    from text_ood.losses import causal_lm_loss

    rng = np.random.default_rng(0)
    sequences = [[1] + rng.integers(4, 30, size=rng.integers(1, 8)).tolist() + [2] for _ in range(48)]
    tf.keras.utils.set_random_seed(5)
    lm = build_lm(ModelConfig(n_layer=1, n_embd=16, n_head=2, max_length=12, dropout=0.1), 30, 1, 2)

    def loss_fn(ids, mask):
        return causal_lm_loss(lm(input_ids=ids, attention_mask=mask, training=True).logits, ids, mask), {}

    directory = os.path.join(workdir, "text")
    shutil.rmtree(directory, ignore_errors=True)
    stage = trainer.Stage(name="identity", directory=directory, log_dir=os.path.join(directory, "logs"),
                          config=StageConfig(epochs=3, batch_size=8, learning_rate=1e-2, warmup_steps=2,
                                             checkpoint_every_steps=2),
                          seed=3, loss_fn=loss_fn, trainables={"model": lm}, selected_lm=lm,
                          train_ids=sequences[:40], val_ids=sequences[40:], pad_id=3, eval_batch_size=4)
    summary = trainer.run_stage(stage)
    return {"weights": digest(lm.get_weights()), "val": [h["val_nll"] for h in summary["history"]],
            "train_loss": [h["train_loss"] for h in summary["history"]], "steps": summary["steps"]}


def recsys_runs(workdir: str, features: str) -> dict:
    from recsys_ssl import config as config_lib
    from recsys_ssl.train import Trainer

    seed = tf.keras.utils.set_random_seed
    tf.keras.utils.set_random_seed = lambda value: None  # compare the loop, not the trainer's own seeding
    out = {}
    try:
        for method in ("none", "cfm"):
            seed(7)
            directory = os.path.join(workdir, f"recsys_{method}")
            shutil.rmtree(directory, ignore_errors=True)
            config = dataclass_config.apply_overrides(config_lib.tiny(), [
                f"ssl.method={method}", "train.epochs=3", "train.early_stopping_patience=1", "train.selection_k=10"])
            trainer = Trainer(features, directory, config)
            summary = trainer.run()
            out[f"recsys_{method}"] = {
                "weights": digest(trainer.model.get_weights()),
                "history": [(h.get("validation_recall"), h.get("mean_total_loss", h.get("train_total")))
                            for h in summary["history"]],
                "best_epoch": summary["best_epoch"], "steps": summary["global_steps"],
                "stopped": summary["early_stopped"]}
    finally:
        tf.keras.utils.set_random_seed = seed
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--workdir", required=True, help="scratch directory for the three trainings")
    parser.add_argument("--output_file", required=True, help="where the checksums and histories go (JSON)")
    parser.add_argument("--features", required=True, help="feature directory to train on (fixed, so checksums compare)")
    args = parser.parse_args(argv)
    tf.config.experimental.enable_op_determinism()
    result = {"text": text_stage(args.workdir), **recsys_runs(args.workdir, args.features)}
    with open(args.output_file, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v["weights"] for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
