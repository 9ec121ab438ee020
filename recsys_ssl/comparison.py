"""Paired comparisons of ranked runs: recall differences with per-user bootstrap intervals.

A run is a directory with ``eval_hits.npz`` (written by ``evaluate`` for a two-tower model and by
``baselines`` for a peer): per eval example the user, the target, hit@K and the slice masks. Two
runs are compared example by example (they must have ranked the same queries), the interval is a
paired bootstrap over users (``metrics.paired_bootstrap``). Used by ``ablate`` (method vs method,
method vs best peer) and ``evaluate --peers``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

KS = (10, 50, 100)


def paired_difference(ours: dict, theirs: dict) -> dict:
    """Recall differences ``ours - theirs`` with paired per-user bootstrap 95% intervals.

    Args:
      ours, theirs: ``load_hits`` of two methods (the same eval examples, in the same order).

    Returns:
      {slice: {"recall@K": {"difference", "interval95": [low, high], "ratio" (None if theirs is 0)}}}
      for the slices with examples.
    """
    from recsys_ssl.metrics import paired_bootstrap  # TensorFlow: only when there is something to compare

    result = {}
    for name in theirs["slices"]:
        mask = theirs["slices"][name]
        if not mask.any():
            continue
        result[name] = {}
        for column, k in enumerate(KS):
            a, b = ours["hits"][mask, column].mean(), theirs["hits"][mask, column].mean()
            low, high = paired_bootstrap(theirs["users"], mask, ours["hits"][:, column], theirs["hits"][:, column])
            result[name][f"recall@{k}"] = {"difference": float(a - b), "interval95": [low, high],
                                           "ratio": float(a / b) if b > 0 else None}
    return result


def load_hits(workdirs: Sequence[str]) -> dict:
    """Hits at KS averaged over seeds (the eval examples are identical across runs), with slices
    (overall, head, tail, cold and, for item-to-item runs, seed_head / seed_tail)."""
    loaded = [np.load(os.path.join(w, "eval_hits.npz")) for w in workdirs]
    columns = [list(loaded[0]["ks"]).index(k) for k in KS]
    head = loaded[0]["head"]
    cold = loaded[0]["cold"] if "cold" in loaded[0] else np.zeros_like(head)
    slices = {"overall": np.ones_like(head), "head": head, "tail": ~head, "cold": cold}
    if "seed_head" in loaded[0]:
        slices.update(seed_head=loaded[0]["seed_head"], seed_tail=loaded[0]["seed_tail"])
    return {"users": loaded[0]["users"], "targets": loaded[0]["targets"],
            "hits": np.mean([d["hits"][:, columns] for d in loaded], axis=0), "slices": slices}
