"""Tokenizers: SentencePiece training, in-graph == Python ids, bad inputs, the HF GPT-2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

import text_ood  # noqa: F401
import tensorflow as tf

from text_ood.tokenizer import (BOS_ID, EOS_ID, PAD_ID, SentencePieceTokenizer, TokenizerError,
                                clean_text, load_tokenizer, tokenize_in_graph)

from tests.fixtures.text_data import CORPUS_TEMPLATES, ID_TEMPLATES, make_texts

AWKWARD = ["what is my balance", "", "   \t ", "Ünïcödé ☃ text", "word " * 400,
           "tabs\tand\nnewlines", "caf\ufffd"]


@pytest.fixture(scope="module")
def sp_tokenizer():
    texts = make_texts(CORPUS_TEMPLATES + ID_TEMPLATES, 400, 0)
    return SentencePieceTokenizer.train(texts, vocab_size=100, max_sentences=1000)


def test_special_ids_and_framing(sp_tokenizer):
    ids = sp_tokenizer.encode(["book a flight to paris", ""], max_length=6)
    assert ids[0][0] == BOS_ID and ids[0][-1] == EOS_ID and len(ids[0]) <= 6
    assert ids[1] == [BOS_ID, EOS_ID]
    long = sp_tokenizer.encode(["word " * 400], max_length=10)[0]
    assert len(long) == 10 and long[-1] == EOS_ID


def test_in_graph_tokenization_equals_python(sp_tokenizer):
    _, tokenize = tokenize_in_graph(sp_tokenizer.model_proto, max_length=16)
    texts = AWKWARD + make_texts(ID_TEMPLATES, 20, 9)
    ids, mask = tokenize(tf.constant(texts))
    expected = sp_tokenizer.encode(texts, max_length=16)
    for row, seq in enumerate(expected):
        n = int(mask[row].numpy().sum())
        assert ids[row, :n].numpy().tolist() == seq
        assert np.all(ids[row, n:].numpy() == PAD_ID)


def test_invalid_utf8_bytes_tokenize_like_the_replacement_character(sp_tokenizer):
    _, tokenize = tokenize_in_graph(sp_tokenizer.model_proto, max_length=16)
    raw = [b"caf\xe9 \xff\xfe ok", b"\xc3"]
    ids, mask = tokenize(tf.constant(raw))
    expected = sp_tokenizer.encode(raw, max_length=16)
    assert [ids[i, :int(mask[i].numpy().sum())].numpy().tolist() for i in range(2)] == expected
    assert clean_text(b"\xc3") == "\ufffd"


def test_bad_python_inputs(sp_tokenizer):
    with pytest.raises(TokenizerError, match="expected a str or bytes"):
        sp_tokenizer.encode([None], max_length=8)
    with pytest.raises(TokenizerError, match="empty corpus"):
        SentencePieceTokenizer.train(["", "  "], vocab_size=50)


def test_save_and_load_round_trip(sp_tokenizer, tmp_path):
    sp_tokenizer.save(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.encode(AWKWARD, 12) == sp_tokenizer.encode(AWKWARD, 12)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(str(tmp_path / "nowhere"))
