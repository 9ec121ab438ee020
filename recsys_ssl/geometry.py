"""Embedding-geometry diagnostics of a trained retrieval model, relative to an item grouping.

Used by ``benchmarks/ssl_geometry.py`` to ask *why* a variant's tail recall moves: does SSL spread
the items of one group (e.g. a brand) apart, and is a missed tail target lost among its own group
or beyond it?
"""

from __future__ import annotations

import numpy as np

from recsys_ssl.metrics import mask_excluded

METRICS = ("same_group_cos", "random_cos", "cohesion", "nn10_same_group", "uniformity")
MISS_METRICS = ("examples", "hit@100", "group@100", "lost_in_group", "same_group_above", "other_group_above")


def group_geometry(embeddings: np.ndarray, groups: np.ndarray, rows: np.ndarray, rng: np.random.Generator,
                   neighbours: int = 10, random_pairs: int = 64) -> dict[str, float]:
    """Geometry of ``rows`` relative to their group.

    Args:
      embeddings: float32 [N, d], L2-normalised item embeddings of the whole corpus.
      groups: int [N] group id of every item (e.g. its brand); ids < 2 (padding / OOV) are no group.
      rows: int [S] the items to measure (each must have a group with at least one other member).
      rng: source of the random comparison items.

    Returns:
      the ``METRICS`` averaged over ``rows``.
    """
    num_groups = int(groups.max()) + 1
    sums = np.zeros([num_groups, embeddings.shape[1]], np.float64)
    np.add.at(sums, groups, embeddings)
    sizes = np.bincount(groups, minlength=num_groups)
    x = embeddings[rows].astype(np.float64)
    g = groups[rows]
    # Mean cosine to the other members of the group: (x . sum_g - x . x) / (n_g - 1).
    same = (np.einsum("sd,sd->s", x, sums[g]) - np.einsum("sd,sd->s", x, x)) / (sizes[g] - 1)
    partners = rng.integers(0, len(embeddings), size=[len(rows), random_pairs])
    partner_cos = np.einsum("sd,spd->sp", x, embeddings[partners])
    random_cos = partner_cos.mean(axis=1)
    squared = 2.0 - 2.0 * partner_cos  # |x - y|^2 of unit vectors
    uniformity = float(np.log(np.exp(-2.0 * squared).mean()))
    same_nn = []
    for start in range(0, len(rows), 512):
        scores = x[start:start + 512] @ embeddings.T
        scores[np.arange(len(scores)), rows[start:start + 512]] = -np.inf  # not itself
        top = np.argpartition(-scores, neighbours, axis=1)[:, :neighbours]
        same_nn.append((groups[top] == g[start:start + 512, None]).mean(axis=1))
    return {
        "same_group_cos": float(same.mean()),
        "random_cos": float(random_cos.mean()),
        "cohesion": float((same - random_cos).mean()),
        "nn10_same_group": float(np.concatenate(same_nn).mean()),
        "uniformity": uniformity,
    }


def tail_misses(queries: np.ndarray, embeddings: np.ndarray, groups: np.ndarray, targets: np.ndarray,
                exclude: list[np.ndarray], k: int = 100, chunk_size: int = 256) -> dict[str, float]:
    """Where the targets land in the ranking, relative to their group.

    Args:
      queries: float32 [Q, d] query embeddings; embeddings: float32 [N, d] corpus items.
      groups: int [N] group id of every item; targets: int [Q] target rows.
      exclude: per query, item rows removed from the ranking (never the target).

    Returns:
      the ``MISS_METRICS`` (rates over the Q examples; ``*_above`` are medians).
    """
    group_hit, same_above, other_above = [], [], []
    for start in range(0, len(targets), chunk_size):
        end = min(start + chunk_size, len(targets))
        scores = queries[start:end] @ embeddings.T
        mask_excluded(scores, exclude[start:end], targets[start:end])
        target_scores = scores[np.arange(end - start), targets[start:end]]
        above = scores > target_scores[:, None]
        same = groups[None, :] == groups[targets[start:end]][:, None]
        same_above.append((above & same).sum(axis=1))
        other_above.append((above & ~same).sum(axis=1))
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        group_hit.append((groups[top] == groups[targets[start:end]][:, None]).any(axis=1))
    same_above, other_above = np.concatenate(same_above), np.concatenate(other_above)
    hit = same_above + other_above < k
    group_hit = np.concatenate(group_hit)
    misses = ~hit
    return {
        "examples": len(targets),
        "hit@100": float(hit.mean()),
        "group@100": float(group_hit.mean()),
        "lost_in_group": float((group_hit & misses).sum() / max(misses.sum(), 1)),
        "same_group_above": float(np.median(same_above)),
        "other_group_above": float(np.median(other_above)),
    }
