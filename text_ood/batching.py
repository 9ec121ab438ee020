"""Length-bucketed batches of token-id sequences (padding each batch only to its own longest text).

On CPU, padding every batch to the global maximum length wastes most of the compute on short
queries such as CLINC150's; sorting within shuffled chunks keeps batches random across epochs yet
nearly uniform in length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None,
                   chunk_batches: int = 50) -> list[np.ndarray]:
    """Splits example indices into batches of similar length.

    Args:
      lengths: sequence length of each example.
      batch_size: examples per batch (the last batch of a chunk may be smaller).
      rng: shuffles examples and batch order when given; ``None`` = sorted, deterministic order
        (for scoring).
      chunk_batches: examples are sorted by length within chunks of ``chunk_batches * batch_size``.

    Returns:
      A list of int64 index arrays covering every example exactly once.
    """
    n = len(lengths)
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(sequences: Sequence[Sequence[int]], indices: np.ndarray,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads the chosen sequences to their longest one.

    Returns:
      ``ids`` int32 [batch, max_len] (``pad_id`` after each sequence) and ``mask`` float32
      [batch, max_len] (1 on real tokens).
    """
    chosen = [sequences[i] for i in indices]
    width = max(len(s) for s in chosen)
    ids = np.full((len(chosen), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(chosen), width), dtype=np.float32)
    for row, seq in enumerate(chosen):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1.0
    return ids, mask
