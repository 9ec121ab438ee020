"""Retrieval quality: exact top-K over the full item corpus, excluding items the user has seen.

Protocol: for each held-out example (user, history, target item), score every corpus item with
the model, drop the items of the user's earlier splits (train for validation; train and
validation for eval) except the target itself, and count a hit at K when the target is among
the K best. Recall@K is the mean hit rate; slices (head / tail) group examples by their target.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from recsys_ssl import schema as fs

NEG_INF = -1e9


def seen_rows(users: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """user id -> unique corpus rows the user interacted with (from aligned arrays)."""
    seen = defaultdict(set)
    for user, row in zip(users, rows):
        if row >= 0:
            seen[user].add(int(row))
    return {user: np.fromiter(items, dtype=np.int64) for user, items in seen.items()}


def query_embeddings(model, examples: Mapping[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
    """float32 [num_examples, d] query-tower outputs of in-memory examples."""
    outputs = []
    for start in range(0, len(examples[fs.USER_ID]), batch_size):
        batch = {
            fs.USER_ID: tf.constant(examples[fs.USER_ID][start: start + batch_size].astype(str)),
            fs.HISTORY: tf.constant(examples[fs.HISTORY][start: start + batch_size].astype(str)),
        }
        outputs.append(model.query_tower(batch, training=False).numpy())
    if not outputs:
        return np.zeros([0, model.config.model.output_dim], np.float32)
    return np.concatenate(outputs)


def corpus_embeddings(model, num_items: int, batch_size: int = 4096) -> np.ndarray:
    """float32 [num_items, d] item-tower outputs of the whole corpus (no masking)."""
    parts = [model.item_embeddings(tf.range(start, min(start + batch_size, num_items))).numpy()
             for start in range(0, num_items, batch_size)]
    return np.concatenate(parts)


def mask_excluded(scores: np.ndarray, exclude: Sequence[np.ndarray], targets: np.ndarray) -> None:
    """Sets ``scores[i, exclude[i]]`` to ``NEG_INF`` in place, except at each row's target.

    Args:
      scores: float [B, N] query-item scores of a chunk; exclude: B int arrays of item rows;
      targets: int [B] target rows (never excluded).
    """
    rows = [np.full(len(e), i) for i, e in enumerate(exclude)]
    if not rows:
        return
    columns = np.concatenate(list(exclude)).astype(np.int64)
    rows = np.concatenate(rows).astype(np.int64)
    keep_target = columns != np.asarray(targets)[rows]
    scores[rows[keep_target], columns[keep_target]] = NEG_INF


def hits_at_k(queries: np.ndarray, items: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray],
              ks: Sequence[int], chunk_size: int = 512) -> np.ndarray:
    """Exact top-K hits.

    Args:
      queries: float32 [Q, d].
      items: float32 [N, d].
      targets: int [Q] corpus rows of the targets.
      exclude: per query, int rows to exclude from the ranking (the target is never excluded).
      ks: cut-offs, e.g. (10, 50, 100).

    Returns:
      bool [Q, len(ks)]: whether the target is within the top ``k`` of the remaining items.
    """
    items_t = np.ascontiguousarray(items.T)
    return hits_of_scorer(lambda start, end: queries[start:end] @ items_t, items.shape[0], targets, exclude, ks,
                          chunk_size)


def hits_of_scorer(score_chunk: Callable[[int, int], np.ndarray], num_items: int, targets: np.ndarray,
                   exclude: Sequence[np.ndarray], ks: Sequence[int], chunk_size: int = 512) -> np.ndarray:
    """Exact top-K hits of any scorer (the two-tower model, or a peer such as EASE).

    Args:
      score_chunk: ``(start, end) -> float [end - start, num_items]`` scores of queries
        ``start:end`` over the corpus (a fresh array: it is modified in place).
      num_items: N, the corpus size.
      targets, exclude, ks: as in :func:`hits_at_k`.
      chunk_size: queries per chunk (capped so that a chunk holds at most 2e7 scores).

    Returns:
      bool [Q, len(ks)]: whether the target is among the first ``k`` items of the ranking by
      score, ties broken by the lower corpus row (the order of ``tf.math.top_k``). Computed from
      the target's rank (the number of items ranked before it), which is exact and needs no sort.
    """
    hits = np.zeros((len(targets), len(ks)), dtype=bool)
    chunk_size = max(16, min(chunk_size, int(2e7) // max(num_items, 1)))
    columns = np.arange(num_items)[None, :]
    for start in range(0, len(targets), chunk_size):
        end = min(start + chunk_size, len(targets))
        chunk_targets = np.asarray(targets[start:end])
        scores = score_chunk(start, end)
        mask_excluded(scores, exclude[start:end], chunk_targets)
        target_scores = scores[np.arange(end - start), chunk_targets][:, None]
        rank = (scores > target_scores).sum(axis=1) + (
            (scores == target_scores) & (columns < chunk_targets[:, None])).sum(axis=1)
        for column, k in enumerate(ks):
            hits[start:end, column] = rank < k
    return hits


def recall_summary(hits: np.ndarray, ks: Sequence[int], slices: Mapping[str, np.ndarray]) -> dict:
    """``{slice: {"examples": n, "recall@k": mean hit, ...}}`` for every boolean slice mask."""
    summary = {}
    for name, mask in slices.items():
        selected = hits[mask]
        entry = {"examples": int(mask.sum())}
        for column, k in enumerate(ks):
            entry[f"recall@{k}"] = float(selected[:, column].mean()) if len(selected) else float("nan")
        summary[name] = entry
    return summary


def paired_bootstrap(users: np.ndarray, mask: np.ndarray, hits_a: np.ndarray, hits_b: np.ndarray,
                     samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of recall(a) - recall(b) on one slice, resampling users with replacement.

    Both models ranked the same held-out examples, so the comparison is paired: a resample draws
    users (all their examples together) and recomputes the difference of the two recalls.

    Args:
      users: [Q] user id of every example.
      mask: bool [Q], the slice's examples.
      hits_a, hits_b: float [Q] hits (or hit rates averaged over seeds) of the two models.

    Returns:
      ``(low, high)``: the 2.5th and 97.5th percentiles of the resampled differences.
    """
    unique, user_index = np.unique(users[mask], return_inverse=True)
    diff_per_user = np.bincount(user_index, weights=hits_a[mask] - hits_b[mask], minlength=len(unique))
    count_per_user = np.bincount(user_index, minlength=len(unique)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(unique), size=(samples, len(unique)))
    weights = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])
    diffs = (weights @ diff_per_user) / (weights @ count_per_user)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
