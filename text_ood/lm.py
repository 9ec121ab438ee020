"""GPT-2-architecture language models (transformers' ``TFGPT2LMHeadModel``) and their scoring.

Weights are stored as TensorFlow checkpoints (``tf.train.Checkpoint(model=...)``) beside a
``lm.json`` holding the architecture, so a stage directory reloads without Hugging Face files.
Local Hugging Face checkpoints (``--teacher_hf``) load through ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from text_ood.batching import length_batches, pad_batch
from text_ood.config import ModelConfig
from text_ood.losses import sequence_mean_nll

logger = logging.getLogger(__name__)

LM_META = "lm.json"
WEIGHTS_PREFIX = "weights"


def build_lm(model: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, name: str = "lm"):
    """Builds a randomly initialised ``TFGPT2LMHeadModel`` (weights created by a dummy call)."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=model.max_length, n_embd=model.n_embd,
        n_layer=model.n_layer, n_head=model.n_head, resid_pdrop=model.dropout,
        embd_pdrop=model.dropout, attn_pdrop=model.dropout, bos_token_id=bos_id,
        eos_token_id=eos_id, use_cache=False,
    )
    lm = TFGPT2LMHeadModel(hf_config, name=name)
    lm(tf.constant([[bos_id, eos_id]], tf.int32))
    return lm


def load_hf_lm(directory: str):
    """Loads a local Hugging Face GPT-2-family checkpoint (TF weights, or PyTorch via ``from_pt``)."""
    from transformers import TFGPT2LMHeadModel

    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"{directory}: not a Hugging Face checkpoint (no config.json)")
    lm = TFGPT2LMHeadModel.from_pretrained(directory)
    lm.config.use_cache = False
    return lm


def save_lm(lm, directory: str) -> None:
    """Writes ``lm``'s weights (TF checkpoint) and its ``GPT2Config`` (``lm.json``) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(model=lm).write(os.path.join(directory, WEIGHTS_PREFIX))
    with open(os.path.join(directory, LM_META), "w") as f:
        json.dump(lm.config.to_dict(), f, indent=2)


def load_lm(directory: str, dropout: float = 0.0):
    """Rebuilds and restores a model written by :func:`save_lm`, with the given dropout rate."""
    from transformers import GPT2Config, TFGPT2LMHeadModel

    meta_path = os.path.join(directory, LM_META)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no language model in {directory} (missing {LM_META})")
    with open(meta_path) as f:
        hf_config = GPT2Config.from_dict(json.load(f))
    hf_config.resid_pdrop = hf_config.embd_pdrop = hf_config.attn_pdrop = dropout
    hf_config.use_cache = False
    lm = TFGPT2LMHeadModel(hf_config, name="lm")
    lm(tf.constant([[hf_config.bos_token_id, hf_config.eos_token_id]], tf.int32))
    tf.train.Checkpoint(model=lm).read(os.path.join(directory, WEIGHTS_PREFIX)).assert_consumed()
    return lm


def mean_nll_function(lm):
    """A compiled ``(ids int32 [B, T], mask float32 [B, T]) -> mean NLL float32 [B]`` for ``lm``."""
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def mean_nll(ids, mask):
        logits = lm(input_ids=ids, attention_mask=mask, training=False).logits
        return sequence_mean_nll(logits, ids, mask)

    return mean_nll


def score_sequences(mean_nll, sequences: Sequence[Sequence[int]], pad_id: int,
                    batch_size: int) -> np.ndarray:
    """Mean token NLL of each id sequence, in input order: float64 [N]."""
    scores = np.zeros(len(sequences), dtype=np.float64)
    for indices in length_batches([len(s) for s in sequences], batch_size, rng=None):
        ids, mask = pad_batch(sequences, indices, pad_id)
        scores[indices] = mean_nll(tf.constant(ids), tf.constant(mask)).numpy()
    return scores


def token_weighted_nll(mean_nll, sequences: Sequence[Sequence[int]], pad_id: int,
                       batch_size: int) -> float:
    """Corpus-level NLL per token (log of the corpus perplexity), for model selection."""
    per_text = score_sequences(mean_nll, sequences, pad_id, batch_size)
    tokens = np.array([len(s) - 1 for s in sequences], dtype=np.float64)
    return float(np.sum(per_text * tokens) / max(tokens.sum(), 1.0))
