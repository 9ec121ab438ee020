"""In-graph scorers: raw strings -> OoD score, for the exported SavedModel.

A scorer is a ``tf.Module`` with ``score_texts(text: tf.string [B]) -> {"ood_score": float32 [B],
"perplexity": float32 [B]}``; :mod:`text_ood.export` wraps it with the calibrated threshold and
the ``serving_default`` signature. Robust to any input in-graph: invalid UTF-8 becomes U+FFFD,
empty and whitespace-only texts score as ``[BOS, EOS]``, long texts are truncated to
``max_length`` tokens, and an empty batch returns empty outputs.
"""

from __future__ import annotations

import tensorflow as tf

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
