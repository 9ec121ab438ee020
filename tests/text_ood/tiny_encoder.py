"""A tiny random BERT sentence encoder written the way model hubs ship them (no real weights needed).

``write_tiny_encoder(dir)`` saves ``config.json``, ``vocab.txt``, ``tokenizer_config.json``,
``1_Pooling/config.json`` and ``model.safetensors`` in the *PyTorch* layout (``format: pt``
metadata, ``Linear`` kernels transposed, no ``bert.`` prefix, as sentence-transformers saves
all-MiniLM-L6-v2), converted from a seeded ``TFBertModel`` whose outputs the tests compare with.
"""

from __future__ import annotations

import json
import os
import string

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "my", "to", "a", "is", "account", "balance", "transfer", "flight", "book", "hotel",
         "cancel", "bake", "bread", "game", "score", "recipe", "money", "how", "what", "cafe",
         "##s", "##ing", "##ed"]


def tiny_vocab() -> list[str]:
    """Specials, words, punctuation, and every letter/digit as a word and a ``##`` piece."""
    chars = list(string.ascii_lowercase + string.digits)
    tokens = SPECIAL + WORDS + list(string.punctuation) + chars + [f"##{c}" for c in chars] + ["日"]
    return list(dict.fromkeys(tokens))  # unique, in order


def write_tiny_encoder(directory: str, seed: int = 0, max_seq_length: int = 24):
    """Writes the encoder into ``directory``; returns the source ``TFBertModel`` (same weights)."""
    import tensorflow as tf
    from safetensors.numpy import save_file
    from transformers import BertConfig, TFBertModel
    from transformers.modeling_tf_pytorch_utils import (TransposeType,
                                                        convert_tf_weight_name_to_pt_weight_name)

    vocab = tiny_vocab()
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    tf.keras.utils.set_random_seed(seed)
    model = TFBertModel(config)
    model(model.dummy_inputs)
    tensors = {}
    for weight in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(
            weight.name, start_prefix_to_remove="tf_bert_model/", tf_weight_shape=weight.shape)
        value = weight.numpy()
        tensors[name.removeprefix("bert.")] = np.ascontiguousarray(
            value.T if transpose is TransposeType.SIMPLE else value)
    os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    with open(os.path.join(directory, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, f)
    with open(os.path.join(directory, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True}, f)
    return model
