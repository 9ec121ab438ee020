"""Distributions every synthetic regime shares: Zipf shares, the language marginal, session timestamps."""

from __future__ import annotations

import numpy as np

LANGUAGES, LANGUAGE_PROBS = ("en", "es", "de", "fr", "ja", "pt"), (0.45, 0.15, 0.12, 0.12, 0.10, 0.06)


def zipf(n: int, exponent: float) -> np.ndarray:
    """float64 [n] probabilities proportional to rank^-exponent (rank 1..n)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def sample_timestamps(user: np.ndarray, user_start: np.ndarray, counts: np.ndarray,
                      starts_session: np.ndarray, start_timestamp: int, end_timestamp: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Timestamps of interactions grouped by user: ~5 minutes apart in a session, ~3 days between.

    Args:
      user: int64 [K] user of each interaction, rows grouped by user (user ``u``'s rows are
        ``user_start[u] .. user_start[u] + counts[u] - 1``).
      user_start, counts: int64 [N] first row and number of rows per user.
      starts_session: bool [K], True where an interaction opens a session (every user's first).
      start_timestamp, end_timestamp: the time range, seconds.

    Returns:
      int64 [K] timestamps, strictly increasing per user, inside the range (gaps are compressed
      for users whose history would overflow it); each user's first time is uniform over what fits.
    """
    k, n = len(user), len(counts)
    gaps = np.where(starts_session, rng.exponential(3 * 86_400.0, size=k), rng.exponential(300.0, size=k))
    gaps = 1 + np.floor(gaps).astype(np.int64)
    gaps[user_start] = 0
    span = np.add.reduceat(gaps, user_start)
    time_range = end_timestamp - start_timestamp
    scale = np.where(span > time_range, (time_range - counts) / np.maximum(span - counts, 1), 1.0)
    gaps = np.where(gaps > 0, 1 + np.floor((gaps - 1) * scale[user]).astype(np.int64), 0)
    elapsed = np.cumsum(gaps)
    offsets = elapsed - np.repeat(elapsed[user_start], counts)  # gaps[user_start] == 0
    span = np.add.reduceat(gaps, user_start)
    first = start_timestamp + np.floor(rng.random(n) * (time_range - span + 1)).astype(np.int64)
    return first[user] + offsets
