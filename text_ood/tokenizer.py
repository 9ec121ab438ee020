"""Tokenizers: SentencePiece (trained here, also applied in-graph) and local Hugging Face GPT-2 BPE.

Both turn texts into ``[BOS] pieces... [EOS]`` id sequences of at most ``max_length`` ids (the
pieces are truncated, BOS and EOS are always there), so an empty or whitespace-only text is the
two-token sequence ``[BOS, EOS]`` and gets a defined perplexity. Undecodable bytes become U+FFFD
on both paths (Python: ``bytes.decode(errors="replace")``; graph: ``tf.strings.unicode_transcode``).

:class:`SentencePieceTokenizer` carries its serialized model proto, which the exported SavedModel
embeds for in-graph tokenisation with ``tensorflow_text.SentencepieceTokenizer``; the Python and
graph paths give identical ids (tested).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)

SPM_FILE = "spm.model"
META_FILE = "text_ood_tokenizer.json"  # not "tokenizer.json": Hugging Face uses that name
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, loaded or applied as asked."""


def clean_text(text: str | bytes) -> str:
    """Returns ``text`` as a str; bytes are decoded as UTF-8 with invalid sequences -> U+FFFD."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TokenizerError(f"expected a str or bytes text, received {type(text).__name__}: {text!r}")
    # Lone surrogates (e.g. from surrogateescape decoding) cannot be encoded; replace them too.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _frame(pieces: list[int], bos: int, eos: int, max_length: int) -> list[int]:
    return [bos] + pieces[: max_length - 2] + [eos]


class SentencePieceTokenizer:
    """A SentencePiece model with fixed special ids: unk 0, bos 1, eos 2, pad 3.

    Attributes:
      model_proto: the serialized SentencePiece ModelProto (bytes).
    """

    kind = "sentencepiece"
    bos_id, eos_id, pad_id = BOS_ID, EOS_ID, PAD_ID

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = (self._processor.bos_id(), self._processor.eos_id(), self._processor.pad_id())
        if ids != (BOS_ID, EOS_ID, PAD_ID):
            raise TokenizerError(f"SentencePiece model must have bos/eos/pad ids 1/2/3, has {ids}")

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
              character_coverage: float = 0.9995, max_sentences: int = 200_000,
              seed: int = 0) -> SentencePieceTokenizer:
        """Trains a SentencePiece model on ``texts`` (sampled down to ``max_sentences``, seeded)."""
        import sentencepiece as spm

        sentences = [clean_text(t).strip() for t in texts]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise TokenizerError("cannot train a tokenizer on an empty corpus")
        if len(sentences) > max_sentences:
            sentences = random.Random(seed).sample(sentences, max_sentences)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            hard_vocab_limit=False, num_threads=2, minloglevel=2,
            max_sentence_length=1 << 14, train_extremely_large_corpus=False,
        )
        tokenizer = cls(model.getvalue())
        logger.info("trained SentencePiece %s on %d sentences: %d pieces", model_type,
                    len(sentences), tokenizer.vocab_size)
        return tokenizer

    def encode(self, texts: Sequence[str | bytes], max_length: int) -> list[list[int]]:
        """Returns ``[BOS] + pieces[:max_length - 2] + [EOS]`` for each text."""
        pieces = self._processor.encode([clean_text(t) for t in texts])
        return [_frame(p, BOS_ID, EOS_ID, max_length) for p in pieces]

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SPM_FILE), "wb") as f:
            f.write(self.model_proto)
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump({"kind": self.kind, "vocab_size": self.vocab_size}, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> SentencePieceTokenizer:
        with open(os.path.join(directory, SPM_FILE), "rb") as f:
            return cls(f.read())


def tokenize_in_graph(model_proto: bytes, max_length: int):
    """Returns a graph function ``texts: tf.string [B] -> (ids int32 [B, T], mask float32 [B, T])``.

    Mirrors :meth:`SentencePieceTokenizer.encode` with tensorflow-text ops, padding with ``PAD_ID``
    to the longest sequence of the batch (``T <= max_length``; an empty batch gives ``T = 0``).
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    sp = tf_text.SentencepieceTokenizer(model=model_proto, out_type=tf.int32)

    def tokenize(texts):
        texts = tf.strings.unicode_transcode(texts, input_encoding="UTF-8", output_encoding="UTF-8",
                                             errors="replace", replacement_char=0xFFFD)
        pieces = sp.tokenize(texts)[:, : max_length - 2]
        batch = tf.shape(texts)[0]
        bos = tf.fill([batch, 1], BOS_ID)
        eos = tf.fill([batch, 1], EOS_ID)
        ragged = tf.concat([bos, pieces, eos], axis=1)
        ids = ragged.to_tensor(default_value=PAD_ID)
        mask = tf.sequence_mask(ragged.row_lengths(), maxlen=tf.shape(ids)[1], dtype=tf.float32)
        return ids, mask

    return sp, tokenize


class HFGPT2Tokenizer:
    """A local Hugging Face GPT-2-family byte-level BPE tokenizer (``vocab.json`` + ``merges.txt``).

    Used with ``--teacher_hf``; the student then shares it. BOS and EOS are both GPT-2's
    ``<|endoftext|>``; padding reuses that id (padded positions are masked everywhere).
    """

    kind = "hf_gpt2"

    def __init__(self, directory: str):
        from transformers import GPT2TokenizerFast

        files = ("vocab.json", "merges.txt")
        missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise TokenizerError(f"{directory}: a GPT-2 tokenizer needs {files}; missing {missing}")
        self.directory = directory
        self._tokenizer = GPT2TokenizerFast.from_pretrained(directory)
        end = self._tokenizer.eos_token_id
        if end is None:
            raise TokenizerError(f"{directory}: tokenizer has no eos token (<|endoftext|>)")
        self.bos_id = self.eos_id = self.pad_id = end

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode(self, texts: Sequence[str | bytes], max_length: int) -> list[list[int]]:
        pieces = self._tokenizer([clean_text(t) for t in texts], add_special_tokens=False)["input_ids"]
        return [_frame(p, self.bos_id, self.eos_id, max_length) for p in pieces]

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._tokenizer.save_pretrained(directory)
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump({"kind": self.kind, "vocab_size": self.vocab_size}, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> HFGPT2Tokenizer:
        return cls(directory)


def load_tokenizer(directory: str) -> SentencePieceTokenizer | HFGPT2Tokenizer:
    """Loads whichever tokenizer :meth:`save` wrote into ``directory``."""
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_path):
        if os.path.isfile(os.path.join(directory, SPM_FILE)):
            return SentencePieceTokenizer.load(directory)
        raise TokenizerError(f"no tokenizer in {directory} (missing {META_FILE})")
    with open(meta_path) as f:
        kind = json.load(f).get("kind")
    if kind == SentencePieceTokenizer.kind:
        return SentencePieceTokenizer.load(directory)
    if kind == HFGPT2Tokenizer.kind:
        return HFGPT2Tokenizer.load(directory)
    raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r}")
