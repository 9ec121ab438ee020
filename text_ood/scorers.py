"""In-graph scorers: raw strings -> OoD score, the form of every detector inside the exported SavedModel.

A scorer is a ``tf.Module`` with ``score_texts(text: tf.string [B]) -> {"ood_score": float32 [B],
...}``; :mod:`text_ood.export` wraps it with the calibrated threshold and the ``serving_default``
signature. Each detector's ``serving_scorer()`` builds its scorer from what it fitted, so the
Python scores and the exported ones come from the same computation:

- :class:`PerplexityScorer`: in-graph SentencePiece, the GPT-2 LM, mean token NLL (the LM
  detectors). Robust to any input: invalid UTF-8 becomes U+FFFD, empty and whitespace-only texts
  score as ``[BOS, EOS]``, long texts are truncated to ``max_length`` tokens, an empty batch
  returns empty outputs.
- :class:`EmbeddingScorer`: in-graph WordPiece, the sentence encoder, a fitted head (k-NN,
  Mahalanobis).
- :class:`HybridScorer`: the component scorers, normalised and combined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from text_ood.encoder import TEXT_SIGNATURE
from text_ood.losses import sequence_mean_nll
from text_ood.tokenizer import SentencePieceTokenizer, tokenize_in_graph


class ExportError(RuntimeError):
    """A detector or tokenizer that cannot be exported as a SavedModel taking raw strings."""


HF_TOKENIZER_EXPORT_MESSAGE = (
    "cannot export a model that uses a Hugging Face GPT-2 byte-level BPE tokenizer (--teacher_hf): "
    "tensorflow-text has no GPT-2 BPE op, keras-nlp's needs Keras 3, and converting the BPE "
    "merges to a SentencePiece model is not exact (SentencePiece merges any adjacent pair whose "
    "concatenation is a piece; GPT-2 applies merges strictly by rank after a regex "
    "pre-tokenisation that RE2 cannot express), so the exported model would score different token "
    "sequences than training and evaluation did. Train with --teacher PRETRAIN_DIR (SentencePiece "
    "tokenizer) to export; --teacher_hf models train and evaluate in Python.")


class PerplexityScorer(tf.Module):
    """Mean token NLL of a GPT-2 LM over in-graph SentencePiece tokens.

    Args:
      lm: a ``TFGPT2LMHeadModel``.
      tokenizer: the :class:`SentencePieceTokenizer` the LM was trained with (its model proto is
        embedded in the SavedModel).
      max_length: tokens per text including BOS and EOS.

    Raises:
      ExportError: ``tokenizer`` is not a SentencePiece tokenizer.
    """

    def __init__(self, lm, tokenizer, max_length: int):
        super().__init__(name="perplexity_scorer")
        if not isinstance(tokenizer, SentencePieceTokenizer):
            raise ExportError(HF_TOKENIZER_EXPORT_MESSAGE)
        self.lm = lm
        self.max_length = max_length
        self.sentencepiece, self._tokenize = tokenize_in_graph(tokenizer.model_proto, max_length)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def score_texts(self, text):
        """``text`` tf.string [B] -> {"ood_score": mean token NLL float32 [B], "perplexity": [B]}."""
        # One extra empty text keeps every shape non-empty (an empty request batch included).
        padded = tf.concat([text, tf.constant([""])], axis=0)
        ids, mask = self._tokenize(padded)
        logits = self.lm(input_ids=ids, attention_mask=mask, training=False).logits
        nll = sequence_mean_nll(logits, ids, mask)[:-1]
        return {"ood_score": nll, "perplexity": tf.exp(nll)}


class EmbeddingScorer(tf.Module):
    """Raw strings -> sentence embeddings -> head: the in-graph form of an embedding detector.

    Args:
      encoder: the :class:`text_ood.encoder.SentenceEncoder` (in-graph WordPiece, BERT, mean
        pooling, L2 norm).
      head: ``tf.Module`` float32 [B, D] -> float32 [B] OoD scores.
    """

    def __init__(self, encoder, head: tf.Module):
        super().__init__(name="embedding_scorer")
        self.encoder = encoder
        self.head = head

    @tf.function(input_signature=TEXT_SIGNATURE, autograph=False)
    def score_texts(self, text):
        """``text`` tf.string [B] -> {"ood_score": float32 [B]}."""
        return {"ood_score": self.head(self.encoder.embed_texts(text))}


class HybridScorer(tf.Module):
    """In-graph hybrid: runs each component scorer on the raw strings and combines their scores.

    Args:
      scorers: the component scorers; names: their detector names.
      normaliser: the fitted :class:`text_ood.normalisation.ScoreNormaliser` (its constants go
        into the graph).
      weights: float [K] weights of the ``weighted_sum`` rule.
      combination: "weighted_sum" or "max" (:mod:`text_ood.detectors.hybrid`).

    Outputs ``ood_score`` (the hybrid), ``<component>_score`` for each component, and every other
    output of the components (e.g. the LM's ``perplexity``).
    """

    def __init__(self, scorers: Sequence[tf.Module], names: Sequence[str], normaliser, weights,
                 combination: str = "weighted_sum"):
        super().__init__(name="hybrid_scorer")
        self.scorers = list(scorers)
        self.names = list(names)
        self.normaliser = normaliser
        self.weights = tf.constant(np.asarray(weights, np.float32))
        self.combination = combination

    @tf.function(input_signature=TEXT_SIGNATURE, autograph=False)
    def score_texts(self, text):
        """``text`` tf.string [B] -> {"ood_score": float32 [B], "<name>_score": [B], ...}."""
        outputs, columns = {}, []
        for name, scorer in zip(self.names, self.scorers):
            out = scorer.score_texts(text)
            columns.append(out["ood_score"])
            outputs[f"{name}_score"] = out["ood_score"]
            outputs.update({k: v for k, v in out.items() if k != "ood_score"})
        z = self.normaliser.tf_transform(tf.stack(columns, axis=1))  # [B, K]
        outputs["ood_score"] = (tf.reduce_max(z, axis=1) if self.combination == "max"
                                else tf.linalg.matvec(z, self.weights))
        return outputs
