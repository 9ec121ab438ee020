"""Pre-trained sentence encoders: a local Hugging Face BERT-family directory -> unit-norm embeddings.

``train --encoder DIR`` takes any local BERT-family sentence-encoder directory (``config.json``
with ``model_type: bert``, ``vocab.txt``, weights as ``model.safetensors`` or ``tf_model.h5``),
for example all-MiniLM-L6-v2. The model runs as transformers' ``TFBertModel``; the sentence
embedding is the masked mean of the last hidden states, L2-normalised, as sentence-transformers'
``Pooling(mean) + Normalize`` modules compute it. Tokenisation happens in-graph
(:mod:`text_ood.wordpiece`), so the same :class:`SentenceEncoder` embeds texts in Python and
inside an exported SavedModel.

PyTorch-layout safetensors (what model hubs ship) are read with ``safetensors.numpy`` and mapped
onto the TF model with ``load_pytorch_state_dict_in_tf2_model``: transformers 4.57's own
``from_pretrained(..., from_pt=True)`` path fails with the current safetensors package
("'builtins.safe_open' object is not iterable") and would need PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from text_ood.wordpiece import WordPieceTokenizer, read_vocab

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert",)
# Graph functions on raw strings: tf.string [batch]. autograph=False: the traced code has no
# tensor-dependent Python control flow, and converting transformers' layers costs ~1 min per trace.
TEXT_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"
POOLING_CONFIG = os.path.join("1_Pooling", "config.json")


class EncoderError(ValueError):
    """A sentence-encoder directory that cannot be loaded as asked."""


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_bert(directory: str):
    """Loads ``directory``'s weights into a ``TFBertModel`` (inference mode, no dropout).

    Raises:
      EncoderError: no ``config.json``, not a BERT model, no weights, or weights that leave
        encoder parameters uninitialised (the pooler head, unused here, may be absent).
    """
    from transformers import BertConfig, TFBertModel

    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise EncoderError(f"{directory}: not a Hugging Face model directory (no config.json)")
    model_type = _read_json(config_path).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EncoderError(f"{config_path}: model_type {model_type!r} is not supported; "
                           f"expected one of {list(SUPPORTED_MODEL_TYPES)} (WordPiece BERT family)")
    safetensors_path = os.path.join(directory, "model.safetensors")
    if os.path.isfile(safetensors_path) and _safetensors_format(safetensors_path) == "pt":
        from safetensors.numpy import load_file
        from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

        model = TFBertModel(BertConfig.from_pretrained(directory))
        model(model.dummy_inputs, training=False)
        model, info = load_pytorch_state_dict_in_tf2_model(
            model, load_file(safetensors_path), output_loading_info=True,
            skip_logger_warnings=True)
        missing = [k for k in info["missing_keys"] if "pooler" not in k]
        if missing or info["mismatched_keys"]:
            raise EncoderError(f"{safetensors_path}: weights do not fit the BERT config: missing "
                               f"{missing[:5]}, mismatched {info['mismatched_keys'][:5]}")
    elif os.path.isfile(safetensors_path) or os.path.isfile(os.path.join(directory, "tf_model.h5")):
        model = TFBertModel.from_pretrained(directory)
    else:
        raise EncoderError(f"{directory}: no weights (expected model.safetensors or tf_model.h5)")
    return model


def _safetensors_format(path: str) -> str:
    """The ``format`` metadata of a safetensors file ("pt", "tf", ...; "pt" if absent)."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return (f.metadata() or {}).get("format", "pt")


def _check_pooling(directory: str) -> None:
    path = os.path.join(directory, POOLING_CONFIG)
    if os.path.isfile(path):
        pooling = _read_json(path)
        if not pooling.get("pooling_mode_mean_tokens", False):
            modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
            raise EncoderError(f"{path}: this encoder was trained with pooling {modes}; only mean "
                               "pooling (pooling_mode_mean_tokens) is implemented")


def default_max_length(directory: str) -> int:
    """``max_seq_length`` of ``sentence_bert_config.json``, else ``max_position_embeddings``."""
    path = os.path.join(directory, SENTENCE_BERT_CONFIG)
    if os.path.isfile(path) and _read_json(path).get("max_seq_length"):
        return int(_read_json(path)["max_seq_length"])
    return int(_read_json(os.path.join(directory, "config.json")).get("max_position_embeddings", 512))


def _lower_case(directory: str) -> bool:
    path = os.path.join(directory, "tokenizer_config.json")
    return bool(_read_json(path).get("do_lower_case", True)) if os.path.isfile(path) else True


def mean_pool_normalize(hidden: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Masked mean over tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize).

    Args:
      hidden: float32 [B, T, D] last hidden states.
      mask: int or float [B, T], 1 on real tokens.

    Returns:
      float32 [B, D] unit-norm sentence embeddings.
    """
    mask = tf.cast(mask, hidden.dtype)[:, :, tf.newaxis]
    summed = tf.reduce_sum(hidden * mask, axis=1)
    mean = summed / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
    return tf.math.l2_normalize(mean, axis=1, epsilon=1e-24)  # x / max(|x|, 1e-12), as torch


class SentenceEncoder(tf.Module):
    """In-graph WordPiece + BERT + mean pooling + L2 norm: raw strings -> unit-norm embeddings.

    Build it with :meth:`from_directory`. ``embed_texts`` is the graph function the exported
    detectors call; :meth:`embed` batches a Python list through it.

    With ``pool_layers = n > 1`` the embedding is the re-normalised mean of the last ``n``
    layers' unit-norm mean-pooled states (``n = 1``: exactly the sentence-transformers
    embedding). Lower layers keep more lexical and syntactic detail, which helps to notice texts
    that are phrased unlike the ID data (see BENCHMARKS.md).

    Attributes:
      dim: embedding size ``D``.
      num_layers: Transformer layers ``L`` (hidden states 0..L, 0 = the embedding layer).
      fingerprint: identifies the weights, vocabulary and settings (for embedding caches).
    """

    def __init__(self, bert, tokenizer: WordPieceTokenizer, pool_layers: int = 1,
                 fingerprint: str = ""):
        super().__init__(name="sentence_encoder")
        self.bert = bert
        self.tokenizer = tokenizer
        self.dim = int(bert.config.hidden_size)
        self.num_layers = int(bert.config.num_hidden_layers)
        self.pool_layers = pool_layers
        self.fingerprint = f"{fingerprint}:pool{pool_layers}"
        if not 1 <= pool_layers <= self.num_layers + 1:
            raise EncoderError(f"pool_layers must be in [1, {self.num_layers + 1}] (the encoder's "
                               f"hidden states), received {pool_layers}")
        if tokenizer.max_length > bert.config.max_position_embeddings:
            raise EncoderError(f"max_length {tokenizer.max_length} exceeds the encoder's "
                               f"max_position_embeddings {bert.config.max_position_embeddings}")
        if tokenizer.vocab_size != bert.config.vocab_size:
            raise EncoderError(f"vocab.txt has {tokenizer.vocab_size} tokens, the model "
                               f"{bert.config.vocab_size}: vocabulary and weights do not belong together")

    @classmethod
    def from_directory(cls, directory: str, max_length: int = 0,
                       pool_layers: int = 1) -> SentenceEncoder:
        """Loads a local BERT-family sentence encoder.

        Args:
          directory: Hugging Face model directory (``config.json``, ``vocab.txt``, weights).
          max_length: WordPiece ids per text including ``[CLS]``/``[SEP]``; 0 = the encoder's
            own (:func:`default_max_length`).
          pool_layers: how many of the last hidden layers the embedding averages (class doc).

        Raises:
          EncoderError / VocabularyError: the directory is incomplete or not a BERT encoder.
        """
        if not os.path.isdir(directory):
            raise EncoderError(f"encoder directory not found: {directory}")
        _check_pooling(directory)
        vocab = read_vocab(directory)
        max_length = max_length or default_max_length(directory)
        bert = load_bert(directory)
        tokenizer = WordPieceTokenizer(vocab, max_length, _lower_case(directory))
        digest = hashlib.sha256()
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                stat = os.stat(path)
                digest.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)};".encode())
        digest.update(f"max_length={max_length};lower={tokenizer.lower_case}".encode())
        encoder = cls(bert, tokenizer, pool_layers, digest.hexdigest()[:16])
        logger.info("sentence encoder %s: %d layers x %d, vocabulary %d, max_length %d, "
                    "pooling the last %d layer(s)", directory, encoder.num_layers, encoder.dim,
                    tokenizer.vocab_size, max_length, pool_layers)
        return encoder

    def _layer_embeddings(self, text: tf.Tensor, first: int) -> tf.Tensor:
        """Unit-norm mean-pooled hidden states ``first..L``: float32 [B, L + 1 - first, D]."""
        # One extra empty text keeps every shape non-empty (an empty batch included).
        padded = tf.concat([text, tf.constant([""])], axis=0)
        ids, mask = self.tokenizer(padded)
        out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=tf.zeros_like(ids),
                        output_hidden_states=first < self.num_layers, training=False)
        states = out.hidden_states[first:] if first < self.num_layers else [out.last_hidden_state]
        return tf.stack([mean_pool_normalize(h, mask) for h in states], axis=1)[:-1]

    @tf.function(input_signature=TEXT_SIGNATURE, autograph=False)
    def embed_texts(self, text):
        """``text`` tf.string [B] -> float32 [B, D] unit-norm sentence embeddings."""
        layers = self._layer_embeddings(text, self.num_layers + 1 - self.pool_layers)
        return tf.math.l2_normalize(tf.reduce_mean(layers, axis=1), axis=1, epsilon=1e-24)

    @tf.function(input_signature=TEXT_SIGNATURE, autograph=False)
    def embed_all_layers(self, text):
        """``text`` tf.string [B] -> float32 [B, L + 1, D] unit-norm pooled states of every layer."""
        return self._layer_embeddings(text, 0)

    def embed(self, texts: Sequence[str | bytes], batch_size: int = 128,
              all_layers: bool = False) -> np.ndarray:
        """Embeds a list of texts in length-sorted batches, in input order.

        Returns:
          float32 [N, D] (``embed_texts``), or [N, L + 1, D] with ``all_layers``
          (``embed_all_layers``, for studies of ``pool_layers``).
        """
        from tqdm.auto import tqdm

        function = self.embed_all_layers if all_layers else self.embed_texts
        shape = (len(texts), self.num_layers + 1, self.dim) if all_layers else (len(texts), self.dim)
        out = np.zeros(shape, dtype=np.float32)
        data = [t if isinstance(t, bytes) else str(t).encode("utf-8", errors="replace")
                for t in texts]
        order = np.argsort([len(t) for t in data], kind="stable")
        with tqdm(total=len(data), desc="embedding", unit="text", disable=len(data) < 2000,
                  mininterval=10) as bar:
            for start in range(0, len(data), batch_size):
                index = order[start:start + batch_size]
                out[index] = function(tf.constant([data[i] for i in index])).numpy()
                bar.update(len(index))
        return out
