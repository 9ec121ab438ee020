"""Mutual information between item features over the item corpus (the input of CFM).

Definitions (all in nats), for features ``i`` and ``j``:

- **Multivalent features**: each item carries unit mass, spread uniformly over the cross product
  of its values: an item with values ``A`` of ``i`` and ``B`` of ``j`` adds ``1 / (|A| |B|)`` to
  every pair ``(a, b)``. For single-valued features this is the usual joint count, and the
  marginals of the joint are the features' own value distributions (each item's mass spread over
  its values).
- **Missing values**: pairwise deletion. ``MI(i, j)`` is computed over the items that have at least
  one value of both features (``support[i][j]`` items), so a sparse feature such as tags does not
  look informative merely because it is often missing.
- ``MI(i, j) = sum_ab P(a, b) log(P(a, b) / (P(a) P(b)))`` with ``P`` the normalised joint over the
  supporting items and ``P(a)``, ``P(b)`` its marginals. The matrix is symmetric by construction.
- The diagonal holds the entropy ``H(i)`` of each feature's value distribution over the items that
  have it. ``normalized_mi[i][j] = MI(i, j) / sqrt(H_ij(i) H_ij(j))`` uses the entropies of the
  joint's own marginals, so it lies in [0, 1]; identifier features (item_id) have raw MI with any
  feature equal to that feature's entropy, which normalisation exposes for what it is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def entropy(masses: Iterable[float]) -> float:
    masses = [m for m in masses if m > 0]
    total = sum(masses)
    if total <= 0:
        return 0.0
    return -sum((m / total) * math.log(m / total) for m in masses)


def joint_statistics(joint: Mapping[tuple[str, str], float]) -> tuple[float, float, float]:
    """Returns ``(MI, H(first), H(second))`` of a joint mass table (marginals from the joint)."""
    total = sum(joint.values())
    if total <= 0:
        return 0.0, 0.0, 0.0
    marginal_i: dict = defaultdict(float)
    marginal_j: dict = defaultdict(float)
    for (a, b), mass in joint.items():
        marginal_i[a] += mass
        marginal_j[b] += mass
    mi = 0.0
    for (a, b), mass in joint.items():
        if mass > 0:
            mi += (mass / total) * math.log(mass * total / (marginal_i[a] * marginal_j[b]))
    return max(mi, 0.0), entropy(marginal_i.values()), entropy(marginal_j.values())


def identifier_pair_stats(identifier: str, names: Sequence[str], feature_stats: Mapping) -> dict:
    """Per-pair statistics of the identifier with every other feature (see the module docstring)."""
    pairs = {}
    for name in names:
        stats = feature_stats.get(name)
        if name == identifier or not stats or not stats["support"]:
            continue
        pairs[(identifier, name)] = {
            "mi": max(stats["entropy"] - stats["mean_log_size"], 0.0),
            "entropy_first": math.log(stats["support"]),
            "entropy_second": stats["entropy"],
            "support": stats["support"],
        }
    return pairs


def assemble_matrix(names: Sequence[str], pair_stats: Mapping, feature_stats: Mapping) -> dict:
    """Builds the ``item_feature_mi.json`` document from per-pair and per-feature statistics."""
    size = len(names)
    mi = [[0.0] * size for _ in range(size)]
    normalized = [[0.0] * size for _ in range(size)]
    support = [[0] * size for _ in range(size)]
    for index, name in enumerate(names):
        stats = feature_stats.get(name, {"entropy": 0.0, "support": 0})
        mi[index][index] = stats["entropy"]
        normalized[index][index] = 1.0 if stats["entropy"] > 0 else 0.0
        support[index][index] = stats["support"]
    for (first, second), stats in pair_stats.items():
        i, j = names.index(first), names.index(second)
        denominator = math.sqrt(stats["entropy_first"] * stats["entropy_second"])
        nmi = min(1.0, stats["mi"] / denominator) if denominator > 0 else 0.0
        mi[i][j] = mi[j][i] = stats["mi"]
        normalized[i][j] = normalized[j][i] = nmi
        support[i][j] = support[j][i] = stats["support"]
    return {
        "features": list(names),
        "mi": mi,
        "normalized_mi": normalized,
        "support": support,
        "definition": (
            "MI in nats over the item corpus; multivalent features spread each item's unit mass over "
            "the cross product of its values; missing values by pairwise deletion (support = items "
            "having both features); diagonal = entropy; normalized_mi = MI / sqrt(H_i H_j) with the "
            "entropies of the pair's joint marginals. See pipelines/mutual_information.py."
        ),
    }


def coded_joint_statistics(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, float, float]:
    """:func:`joint_statistics` vectorised over integer codes: ``(MI, H(x), H(y))`` of the weighted joint.

    Args:
      x, y: int64 [n] non-negative value codes, aligned (row k = one unit of mass).
      weight: float64 [n] the mass of each row (a multivalent value's share of its item).

    Returns:
      ``MI = H(x) + H(y) - H(x, y)`` in nats (clipped at 0) and the entropies of the joint's
      marginals (equal to :func:`joint_statistics` of the same table up to float summation order; tested).
    """
    total = float(weight.sum())
    if len(x) == 0 or total <= 0:
        return 0.0, 0.0, 0.0
    _, pair = np.unique(x.astype(np.int64) * (int(y.max()) + 1) + y, return_inverse=True)

    def h(codes: np.ndarray) -> float:
        p = np.bincount(codes, weights=weight) / total
        p = p[p > 0]
        return -float(np.sum(p * np.log(p)))

    h_x, h_y = h(x), h(y)
    return max(h_x + h_y - h(pair), 0.0), h_x, h_y


def coded_mutual_information(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    """The MI of :func:`coded_joint_statistics` (the synthetic generators' check of their output)."""
    return coded_joint_statistics(x, y, weight)[0]
