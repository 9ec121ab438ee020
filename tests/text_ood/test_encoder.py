"""Sentence encoder: PyTorch-layout safetensors, in-graph WordPiece vs Hugging Face, pooling, errors."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.text_ood.tiny_encoder import write_tiny_encoder
from text_ood.encoder import EncoderError, SentenceEncoder, mean_pool_normalize
from text_ood.wordpiece import VocabularyError, WordPieceTokenizer, read_vocab

EDGE_TEXTS = ["Book a flight to Paris!", "CAFÉ naïve Ångström", "the   balance\tof my\naccount",
              "", "   ", "日本 text日", "a\x00b\x07c", "x\u200by\ufeffz", "tab\u3000ideographic",
              "transfer 350.50$ (now), ok?", "w" * 120, "«quoted» — dash", "bake\u0301d bread"]
RAW_BYTES = [b"caf\xe9 \xff\xfe balance", b"\xc3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_encoder"))
    source = write_tiny_encoder(directory)
    return directory, source, SentenceEncoder.from_directory(directory)


def _hf_tokenizer(directory):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(directory)


def test_mean_pool_normalize_by_hand():
    hidden = tf.constant([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]],
                          [[0.0, 2.0], [5.0, 5.0], [5.0, 5.0]],
                          [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    mask = tf.constant([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    # Row 0: mean of the two real tokens = (2, 0) -> (1, 0); row 1: (0, 2) -> (0, 1);
    # row 2: no real token -> 0 / 1e-9 = 0, normalised to 0 (finite, not NaN).
    np.testing.assert_allclose(mean_pool_normalize(hidden, mask).numpy(),
                               [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)


def test_pytorch_safetensors_give_the_source_models_embeddings(tiny):
    directory, source, encoder = tiny
    texts = ["book a flight to paris", "how do i bake bread", "", "the cafe"]
    ids, mask = encoder.tokenizer(tf.constant(texts))
    hidden = source(input_ids=ids, attention_mask=mask, training=False).last_hidden_state.numpy()
    weights = mask.numpy()[:, :, None].astype(np.float64)
    mean = (hidden * weights).sum(1) / weights.sum(1)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    embeddings = encoder.embed(texts)
    np.testing.assert_allclose(embeddings, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_wordpiece_ids_match_hugging_face(tiny):
    directory, _, encoder = tiny
    hf = _hf_tokenizer(directory)
    texts = EDGE_TEXTS + [b.decode("utf-8", errors="replace") for b in RAW_BYTES]
    graph = encoder.tokenizer.pieces(tf.constant([t.encode() for t in EDGE_TEXTS] + RAW_BYTES))
    assert graph.to_list() == hf(texts, add_special_tokens=False)["input_ids"]
    # Framing, truncation to max_length (24) and padding as Hugging Face does them.
    ids, mask = encoder.tokenizer(tf.constant(EDGE_TEXTS))
    reference = hf(EDGE_TEXTS, truncation=True, max_length=24, padding=True)
    assert ids.numpy().tolist() == reference["input_ids"]
    assert mask.numpy().tolist() == reference["attention_mask"]


def test_embed_keeps_order_and_handles_empty_inputs(tiny):
    _, _, encoder = tiny
    texts = ["the balance of my account", "", "how to bake bread " * 20]
    forward = encoder.embed(texts, batch_size=2)
    backward = encoder.embed(texts[::-1], batch_size=2)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)
    assert np.all(np.isfinite(forward))
    assert encoder.embed([]).shape == (0, encoder.dim)
    assert encoder.embed_texts(tf.constant([], tf.string)).shape == (0, encoder.dim)


def test_pool_layers_average_the_last_layers(tiny):
    directory, _, encoder = tiny
    texts = ["book a flight", "what is my balance", "bake bread"]
    layers = encoder.embed(texts, all_layers=True)  # [3, L + 1 = 3, 16]
    assert layers.shape == (3, 3, 16)
    np.testing.assert_allclose(layers[:, -1], encoder.embed(texts), atol=1e-5)
    pooled = SentenceEncoder.from_directory(directory, pool_layers=2).embed(texts)
    mean = layers[:, -2:].mean(axis=1)
    np.testing.assert_allclose(pooled, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def _copy(directory, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(directory, target)
    return target


def test_bad_encoder_directories_fail_clearly(tiny, tmp_path):
    directory, _, _ = tiny
    with pytest.raises(EncoderError, match="not found"):
        SentenceEncoder.from_directory(str(tmp_path / "missing"))
    gpt = _copy(directory, tmp_path, "gpt")
    with open(os.path.join(gpt, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(gpt, "config.json"), "w") as f:
        json.dump({**config, "model_type": "gpt2"}, f)
    with pytest.raises(EncoderError, match="model_type 'gpt2' is not supported"):
        SentenceEncoder.from_directory(gpt)
    no_vocab = _copy(directory, tmp_path, "no_vocab")
    os.remove(os.path.join(no_vocab, "vocab.txt"))
    with pytest.raises(VocabularyError, match="needs vocab.txt"):
        SentenceEncoder.from_directory(no_vocab)
    short_vocab = _copy(directory, tmp_path, "short_vocab")
    with open(os.path.join(short_vocab, "vocab.txt"), "a") as f:
        f.write("extra\n")
    with pytest.raises(EncoderError, match="do not belong together"):
        SentenceEncoder.from_directory(short_vocab)
    repeated = _copy(directory, tmp_path, "repeated")
    with open(os.path.join(repeated, "vocab.txt"), "a") as f:
        f.write("the\n")
    with pytest.raises(VocabularyError, match="repeated: \\['the'\\]"):
        read_vocab(repeated)
    cls_pooling = _copy(directory, tmp_path, "cls_pooling")
    with open(os.path.join(cls_pooling, "1_Pooling", "config.json"), "w") as f:
        json.dump({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, f)
    with pytest.raises(EncoderError, match="only mean pooling"):
        SentenceEncoder.from_directory(cls_pooling)
    no_weights = _copy(directory, tmp_path, "no_weights")
    os.remove(os.path.join(no_weights, "model.safetensors"))
    with pytest.raises(EncoderError, match="no weights"):
        SentenceEncoder.from_directory(no_weights)
    with pytest.raises(EncoderError, match="pool_layers must be in \\[1, 3\\]"):
        SentenceEncoder.from_directory(directory, pool_layers=4)
    with pytest.raises(EncoderError, match="exceeds the encoder's max_position_embeddings"):
        SentenceEncoder.from_directory(directory, max_length=64)


def _clinc_sample(clinc150_dir, n_per_split, seed=0):
    with open(os.path.join(clinc150_dir, "data_full.json")) as f:
        raw = json.load(f)
    rng = random.Random(seed)
    return {k: rng.sample(raw[k], min(n_per_split, len(raw[k])))
            for k in ("train", "val", "test", "oos_test")}


def test_minilm_wordpiece_matches_hugging_face_on_clinc150(data_dir, clinc150_dir):
    directory = os.path.join(data_dir, "models", "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(directory, "vocab.txt")):
        pytest.skip(f"all-MiniLM-L6-v2 not found under {directory}")
    texts = [text for rows in _clinc_sample(clinc150_dir, 1000).values() for text, _ in rows]
    tokenizer = WordPieceTokenizer(read_vocab(directory), max_length=256)
    graph = tokenizer.pieces(tf.constant(texts)).to_list()
    reference = _hf_tokenizer(directory)(texts, add_special_tokens=False)["input_ids"]
    mismatches = [(t, g, r) for t, g, r in zip(texts, graph, reference) if g != r]
    assert len(texts) == 4000 and not mismatches, mismatches[:3]


@pytest.mark.slow
def test_minilm_knn_separates_clinc150_out_of_scope(data_dir, clinc150_dir):
    """The real encoder through the project's path: a small k-NN bank already separates OoD."""
    from text_ood.detectors.knn import KNNHead
    from text_ood.metrics import auroc

    directory = os.path.join(data_dir, "models", "all-MiniLM-L6-v2")
    if not os.path.isfile(os.path.join(directory, "model.safetensors")):
        pytest.skip(f"all-MiniLM-L6-v2 not found under {directory}")
    encoder = SentenceEncoder.from_directory(directory)
    sample = _clinc_sample(clinc150_dir, 600, seed=1)  # a bank of ~4 training texts per intent
    head = KNNHead(encoder.embed([t for t, _ in sample["train"]]), k=1)
    id_scores = head(encoder.embed([t for t, _ in sample["test"][:200]])).numpy()
    ood_scores = head(encoder.embed([t for t, _ in sample["oos_test"][:100]])).numpy()
    assert auroc(id_scores, ood_scores) > 0.85
    paraphrases = encoder.embed(["what is my bank balance", "how much money is in my account",
                                 "play some jazz music"])
    assert paraphrases[0] @ paraphrases[1] > paraphrases[0] @ paraphrases[2] + 0.3
