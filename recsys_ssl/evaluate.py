"""Evaluation: recall@K over the full corpus, overall and for head / tail items, with a plot.

``python -m recsys_ssl evaluate --workdir DIR`` loads the best weights of a training workdir,
scores every eval example against every corpus item (exact dot products), excludes the items of
the user's train and validation examples (never the target), and writes

- ``eval.json``: recall@{10,50,100} and example counts, overall / head / tail (slice = the target
  item's slice in ``stats.json``) / cold (targets with no training interaction; a subset of
  tail), plus the protocol;
- ``eval_hits.npz``: per-example hits (user, target, hit@K), for paired bootstrap comparisons;
- ``recall_at_k.png``: recall@K against K per slice.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from recsys_ssl import schema as fs
from recsys_ssl.metrics import corpus_embeddings, hits_at_k, query_embeddings, recall_summary, seen_rows
from core.files import write_json_atomic
from recsys_ssl.workdir import restore_best

REPORT_KS = (10, 50, 100)
CURVE_KS = (1, 5, 10, 20, 50, 100, 200)
EARLIER_SPLITS = {"eval": ("train", "validation"), "validation": ("train",)}


def held_out_examples(model, feature_set, split: str) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """The examples of a held-out split with what the ranking protocol needs.

    Returns:
      ``(held_out, targets, exclude)``: the split's columns (``FeatureSet.read_split``), int [Q]
      corpus rows of the targets, and per example the int corpus rows of the items its user
      interacted with in the earlier splits (``EARLIER_SPLITS``), which the ranking excludes.
    """
    users, rows = [], []
    for name in EARLIER_SPLITS[split]:
        examples = feature_set.read_split(name)
        users.append(examples[fs.USER_ID])
        rows.append(model.item_rows(tf.constant(examples[fs.ITEM_ID].astype(str))).numpy())
    seen = seen_rows(np.concatenate(users), np.concatenate(rows))
    held_out = feature_set.read_split(split)
    targets = model.item_rows(tf.constant(held_out[fs.ITEM_ID].astype(str))).numpy()
    if (targets < 0).any():
        raise ValueError(f"{int((targets < 0).sum())} {split} targets are not in the item corpus")
    empty = np.zeros(0, np.int64)
    return held_out, targets, [seen.get(user, empty) for user in held_out[fs.USER_ID]]


def evaluate(workdir: str, split: str = "eval", ks=REPORT_KS) -> dict:
    """Evaluates the best model of ``workdir`` on ``split``; writes and returns ``eval.json``'s content."""
    model, feature_set, config = restore_best(workdir)
    held_out, targets, exclude = held_out_examples(model, feature_set, split)
    target_seen = np.array([t in set(e.tolist()) for t, e in zip(targets, exclude)]) if len(targets) else np.zeros(0, bool)
    curve_ks = sorted(set(CURVE_KS) | set(ks))
    hits = hits_at_k(query_embeddings(model, held_out), corpus_embeddings(model, feature_set.num_items), targets,
                     exclude, curve_ks)
    head = feature_set.is_head[targets]
    cold = feature_set.is_cold[targets]
    slices = {"overall": np.ones(len(targets), bool), "head": head, "tail": ~head, "cold": cold}
    report_columns = [curve_ks.index(k) for k in ks]
    summary = recall_summary(hits[:, report_columns], ks, slices)
    result = {
        "split": split,
        "metrics": summary,
        "num_items": feature_set.num_items,
        "num_users": len(set(held_out[fs.USER_ID])),
        "targets_seen_earlier": int(target_seen.sum()),
        "protocol": (
            f"exact scores over all {feature_set.num_items} corpus items; items of the user's "
            f"{' and '.join(EARLIER_SPLITS[split])} examples excluded (never the target); slice = target item's "
            "head/tail membership from stats.json; cold = no interaction in the train split"
        ),
        "config": {"ssl.method": config.ssl.method, "ssl.weight": config.ssl.weight},
    }
    suffix = "" if split == "eval" else f"_{split}"
    write_json_atomic(os.path.join(workdir, f"eval{suffix}.json"), result)
    np.savez_compressed(os.path.join(workdir, f"eval_hits{suffix}.npz"), users=held_out[fs.USER_ID].astype(str),
                        targets=targets, ks=np.array(curve_ks), hits=hits, head=head, cold=cold)
    plot_recall_curve(hits, curve_ks, slices, os.path.join(workdir, f"recall_at_k{suffix}.png"))
    logging.info("%s: %s", split, json.dumps(summary))
    return result


def plot_recall_curve(hits: np.ndarray, ks, slices: dict, path: str) -> None:
    """Recall@K against K (log scale) per slice (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, mask in slices.items():
        if mask.any():
            axis.plot(ks, hits[mask].mean(axis=0), marker="o", label=f"{name} ({int(mask.sum())} examples)")
    axis.set_xscale("log")
    axis.set_xlabel("K")
    axis.set_ylabel("recall@K")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
