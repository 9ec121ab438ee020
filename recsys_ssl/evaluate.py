"""Evaluation: recall@K over the full corpus, overall and for head / tail items, with a plot.

``python -m recsys_ssl evaluate --workdir DIR`` loads the best weights of a training workdir,
scores every eval example against every corpus item (exact dot products), excludes the items of
the user's train and validation examples (never the target), and writes

- ``eval.json``: recall@{10,50,100} and example counts, overall / head / tail (slice = the target
  item's slice in ``stats.json``) / cold (targets with no training interaction; a subset of
  tail), in item-to-item mode also seed_head / seed_tail, plus the protocol
  (``recsys_ssl.protocol``); with ``--peers DIR`` also the peers of ``baselines`` and the paired
  differences to them;
- ``eval_hits.npz``: per-example hits (user, target, hit@K), for paired bootstrap comparisons;
- ``recall_at_k.png``: recall@K against K per slice.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from core.files import write_json_atomic
from recsys_ssl import schema as fs
from recsys_ssl.metrics import corpus_embeddings, hits_at_k, query_embeddings, recall_summary
from recsys_ssl.protocol import EARLIER_SPLITS, held_out, read_splits
from recsys_ssl.workdir import restore_best

REPORT_KS = (10, 50, 100)
CURVE_KS = (1, 5, 10, 20, 50, 100, 200)


def held_out_examples(model, feature_set, split: str, mode: str = "user") -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """The queries of a held-out split under ``recsys_ssl.protocol`` (``model`` is unused: kept
    for callers of the earlier signature).

    Returns:
      ``(held_out, targets, exclude)``: the queries' columns (``FeatureSet.read_split``), int [Q]
      corpus rows of the targets, and per query the int corpus rows its ranking excludes.
    """
    del model
    held = held_out(feature_set.item_ids, split, mode, read_splits(feature_set, (split,) + EARLIER_SPLITS[split]))
    return held.examples, held.targets, held.exclude


def evaluate(workdir: str, split: str = "eval", ks=REPORT_KS, peers: str | None = None) -> dict:
    """Evaluates the best model of ``workdir`` on ``split``; writes and returns ``eval.json``'s content.

    Args:
      peers: optional ``baselines`` output directory of the same features and query mode: its
        peers' metrics go into ``eval.json`` beside the model's, with paired per-user bootstrap
        intervals of the model minus each peer (``peers_vs``; eval split only).
    """
    model, feature_set, config = restore_best(workdir)
    mode = config.model.query_mode
    held = held_out(feature_set.item_ids, split, mode, read_splits(feature_set, (split,) + EARLIER_SPLITS[split]))
    targets, exclude = held.targets, held.exclude
    target_seen = np.array([t in set(e.tolist()) for t, e in zip(targets, exclude)]) if len(targets) else np.zeros(0, bool)
    curve_ks = sorted(set(CURVE_KS) | set(ks))
    hits = hits_at_k(query_embeddings(model, held.examples), corpus_embeddings(model, feature_set.num_items), targets,
                     exclude, curve_ks)
    slices = held.slices(feature_set.is_head, feature_set.is_cold)
    report_columns = [curve_ks.index(k) for k in ks]
    summary = recall_summary(hits[:, report_columns], ks, slices)
    result = {
        "split": split,
        "metrics": summary,
        "num_items": feature_set.num_items,
        "num_users": len(set(held.examples[fs.USER_ID])),
        "targets_seen_earlier": int(target_seen.sum()),
        "protocol": held.protocol(feature_set.num_items),
        "config": {"ssl.method": config.ssl.method, "ssl.weight": config.ssl.weight},
    }
    if mode != "user":
        result["query_mode"] = mode
    suffix = "" if split == "eval" else f"_{split}"
    extra = {name: mask for name, mask in slices.items() if name.startswith("seed_")}
    np.savez_compressed(os.path.join(workdir, f"eval_hits{suffix}.npz"), users=held.examples[fs.USER_ID].astype(str),
                        targets=targets, ks=np.array(curve_ks), hits=hits, head=slices["head"], cold=slices["cold"],
                        **extra)
    if peers is not None:
        if split != "eval":
            raise ValueError("--peers compares on the eval split only")
        result.update(compare_with_peers(workdir, peers, mode))
    write_json_atomic(os.path.join(workdir, f"eval{suffix}.json"), result)
    plot_recall_curve(hits, curve_ks, slices, os.path.join(workdir, f"recall_at_k{suffix}.png"))
    logging.info("%s: %s", split, json.dumps(summary))
    return result


def compare_with_peers(workdir: str, peers_dir: str, mode: str) -> dict:
    """``{"peers": {name: metrics}, "best_peer": name, "peers_vs": {name: paired differences}}`` of
    the model in ``workdir`` (its ``eval_hits.npz``) against a ``baselines`` output directory.

    Raises:
      FileNotFoundError / ValueError: no ``baselines.json``, another query mode, or other eval queries.
    """
    from recsys_ssl.comparison import load_hits, paired_difference

    path = os.path.join(peers_dir, "baselines.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python -m recsys_ssl baselines --output_dir {peers_dir}` first")
    with open(path) as f:
        document = json.load(f)
    if document["mode"] != mode:
        raise ValueError(f"the peers in {peers_dir} ranked {document['mode']} queries; this model ranks {mode} queries")
    ours = load_hits([workdir])
    result = {"peers": {}, "best_peer": document.get("best_peer"), "peers_vs": {}}
    for name, record in document["peers"].items():
        theirs = load_hits([os.path.join(peers_dir, name)])
        if not np.array_equal(theirs["users"], ours["users"]) or not np.array_equal(theirs["targets"], ours["targets"]):
            raise ValueError(f"the peer {name!r} in {peers_dir} ranked other eval queries (another feature directory?)")
        result["peers"][name] = record["metrics"]
        result["peers_vs"][name] = paired_difference(ours, theirs)
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
