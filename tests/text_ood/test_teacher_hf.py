"""--teacher_hf: a tiny random GPT-2 written by save_pretrained, with its own byte-level BPE."""

from __future__ import annotations

import json
import os

import pytest

import text_ood  # noqa: F401

from text_ood.__main__ import main
from text_ood.tokenizer import HFGPT2Tokenizer, load_tokenizer

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "n"), ("Ġ", "a"), ("o", "u")]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    directory = str(tmp_path_factory.mktemp("tiny_gpt2"))
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for left, right in MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    end = vocab["<|endoftext|>"]
    config = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=end, eos_token_id=end)
    model = TFGPT2LMHeadModel(config)
    model(tf.constant([[end, end]]))
    model.save_pretrained(directory)
    return directory


def test_hf_tokenizer_frames_with_endoftext(hf_dir):
    tokenizer = HFGPT2Tokenizer(hf_dir)
    ids = tokenizer.encode(["the an", "", b"\xff"], max_length=8)
    end = tokenizer.eos_id
    assert ids[1] == [end, end]
    with open(os.path.join(hf_dir, "vocab.json")) as f:
        vocab = json.load(f)
    # Merges by rank: t+he (no "Ġt" at the start), then "Ġan" -> Ġ + an ("a n" ranks before "Ġ a").
    assert ids[0] == [end, vocab["t"], vocab["he"], vocab["Ġ"], vocab["an"], end]
    assert len(ids[2]) >= 3  # U+FFFD is 3 bytes


@pytest.mark.slow
def test_train_evaluate_with_hf_teacher_and_export_refuses_clearly(hf_dir, ood_data_dir, tmp_path, caplog):
    workdir = str(tmp_path / "hf_run")
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                 "--teacher_hf", hf_dir, "--preset", "tiny", "--detectors", "mlkd,teacher"]) == 0
    assert isinstance(load_tokenizer(os.path.join(workdir, "tokenizer")), HFGPT2Tokenizer)
    assert main(["evaluate", "--workdir", workdir]) == 0
    with open(os.path.join(workdir, "eval.json")) as f:
        assert set(json.load(f)["detectors"]) == {"mlkd", "teacher"}
    assert main(["export", "--workdir", workdir, "--export_dir", str(tmp_path / "export")]) == 2
    assert "byte-level BPE" in caplog.text
    assert not os.path.exists(tmp_path / "export" / "1")
