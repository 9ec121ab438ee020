"""In-graph BERT WordPiece tokenisation (tensorflow-text), matching Hugging Face's ``BertTokenizerFast``.

A sentence encoder exported as a SavedModel must tokenise raw strings itself. tensorflow-text's
``FastBertTokenizer`` does BERT's whitespace/punctuation splitting and WordPiece, but its built-in
normaliser (``lower_case_nfd_strip_accents=True``) also applies compatibility folding (``…`` ->
``...``, ``ß`` -> ``ss``, full-width letters) and turns control characters into spaces, unlike
Hugging Face's ``BertNormalizer``. So the normalisation is done here with plain string ops, in
``BertNormalizer``'s order, and ``FastBertTokenizer`` only splits and applies WordPiece:

1. invalid UTF-8 -> U+FFFD (Python: ``bytes.decode(errors="replace")``);
2. ``clean_text``: drop NUL, U+FFFD and other-category (``\\p{C}``) characters except tab/CR/LF,
   then map whitespace to a space;
3. ``handle_chinese_chars``: spaces around CJK ideographs;
4. uncased models only: NFD, drop non-spacing marks (accents), then Unicode lowercase.

Known remaining differences (none occurs in CLINC150's 23,700 texts, whose ids all match; tests
compare ids with ``BertTokenizerFast``): unassigned code points (RE2 has no ``\\p{Cn}``) are
kept, a word-final capital sigma lowercases to final sigma (Hugging Face: medial sigma), and a
word longer than 100 *bytes* (Hugging Face: 100 characters) becomes ``[UNK]``.
"""

from __future__ import annotations

import collections
import os

import tensorflow as tf

VOCAB_FILE = "vocab.txt"
CLS, SEP, PAD, UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
# Hugging Face's ``_is_chinese_char`` ranges (CJK Unified Ideographs and their extensions).
_CJK = (r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
        r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}")


class VocabularyError(ValueError):
    """A WordPiece vocabulary that is missing, repeats tokens or lacks BERT's special tokens."""


def read_vocab(directory: str) -> list[str]:
    """Reads ``directory/vocab.txt`` (one WordPiece token per line; the line number is the id).

    Raises:
      VocabularyError: the file is missing, a token repeats, or ``[CLS]``, ``[SEP]``, ``[PAD]`` or
        ``[UNK]`` is absent.
    """
    path = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(path):
        raise VocabularyError(f"{directory}: a BERT WordPiece encoder needs {VOCAB_FILE}, not found")
    with open(path, encoding="utf-8") as f:
        vocab = [line.rstrip("\n").rstrip("\r") for line in f]
    missing = [t for t in (CLS, SEP, PAD, UNK) if t not in vocab]
    if missing:
        raise VocabularyError(f"{path}: special tokens {missing} missing from the vocabulary")
    if len(set(vocab)) != len(vocab):
        counts = collections.Counter(vocab)
        repeated = [token for token, count in counts.items() if count > 1]
        raise VocabularyError(f"{path}: tokens must be unique, repeated: {repeated[:5]}")
    return vocab


def normalize_bert_text(texts: tf.Tensor, lower_case: bool) -> tf.Tensor:
    """Hugging Face ``BertNormalizer`` in-graph: tf.string [B] -> normalised tf.string [B]."""
    import tensorflow_text as tf_text

    texts = tf.strings.unicode_transcode(texts, input_encoding="UTF-8", output_encoding="UTF-8",
                                         errors="replace", replacement_char=0xFFFD)
    texts = tf.strings.regex_replace(texts, r"[^\P{C}\t\n\r]|\x{FFFD}", "")
    texts = tf.strings.regex_replace(texts, r"[\t\n\r\p{Zs}\x{2028}\x{2029}]", " ")
    texts = tf.strings.regex_replace(texts, f"([{_CJK}])", r" \1 ")
    if lower_case:
        texts = tf_text.normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        texts = tf.strings.lower(texts, encoding="utf-8")
    return texts


class WordPieceTokenizer(tf.Module):
    """Raw strings -> BERT inputs ``[CLS] pieces[:max_length - 2] [SEP]``, padded with ``[PAD]``.

    Args:
      vocab: the WordPiece vocabulary (:func:`read_vocab`); stored in the SavedModel.
      max_length: ids per text including ``[CLS]`` and ``[SEP]`` (>= 2).
      lower_case: uncased model (lowercase and strip accents, as ``do_lower_case=True``).
    """

    def __init__(self, vocab: list[str], max_length: int, lower_case: bool = True):
        super().__init__(name="wordpiece_tokenizer")
        import tensorflow_text as tf_text

        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), received {max_length}")
        self.max_length = max_length
        self.lower_case = lower_case
        self.vocab_size = len(vocab)
        self.cls_id, self.sep_id, self.pad_id = (vocab.index(t) for t in (CLS, SEP, PAD))
        self.fast_bert = tf_text.FastBertTokenizer(vocab=vocab, token_out_type=tf.int32,
                                                   unknown_token=UNK,
                                                   lower_case_nfd_strip_accents=False)

    def pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """WordPiece ids without special tokens or truncation: int32 ragged [B, None]."""
        return self.fast_bert.tokenize(normalize_bert_text(texts, self.lower_case))

    def __call__(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``texts`` tf.string [B] -> ``input_ids`` int32 [B, T], ``attention_mask`` int32 [B, T].

        ``T`` is the longest framed text of the batch (<= ``max_length``); an empty batch gives
        ``T = 0``.
        """
        pieces = self.pieces(texts)[:, : self.max_length - 2]
        batch = tf.shape(texts)[0]
        framed = tf.concat([tf.fill([batch, 1], self.cls_id), pieces,
                            tf.fill([batch, 1], self.sep_id)], axis=1)
        ids = framed.to_tensor(default_value=self.pad_id)
        mask = tf.sequence_mask(framed.row_lengths(), maxlen=tf.shape(ids)[1], dtype=tf.int32)
        return ids, mask
