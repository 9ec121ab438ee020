"""The peers every recommender library ships, scored under the two-tower model's own protocol.

``python -m recsys_ssl baselines --features DIR --output_dir DIR [--query_mode user|item]``

Peers (``recsys_ssl.peers``): **popularity**, cosine **item-kNN** (neighbourhood size tuned) and
**EASE** (Steck 2019, closed form, lambda tuned; it refuses corpora above ``--ease_max_items``,
default 20,000 items, about 9 GiB of dense float64 matrices at peak).

Protocol (``recsys_ssl.protocol``, the same queries, exclusions, slices and K as ``evaluate``):

- ``X``: binary users x items matrix of the **fit splits**: for tuning on validation, the train
  split only; for the eval split, the peer is **refit on train + validation** with the value
  chosen on validation (the usual practice for closed-form models; ``ablate --refit`` gives the
  two-tower model the same protocol: epochs chosen on validation, then trained on train +
  validation).
- A query's items ``x_q``: ``user`` mode: the user's items in the fit splits plus the example's
  history (everything the two-tower query can see: its user id was trained on those, its history
  holds the latest items, including earlier held-out ones); ``item`` mode: the seed item only.
- Exact scores over the whole corpus; the user's items of the earlier splits (and the seed in
  ``item`` mode) excluded, never the target; ties are broken by the lower corpus row, i.e. by
  train frequency (``vocab/item_id.txt`` is sorted by it).
- The **best peer** is the one with the highest validation recall@100 (overall), chosen on the
  validation split like every other choice here.

``refit=False`` (``--refit=false``) fits the eval peers on the train split only, the data the two-tower
model's weights see: the comparison of the data each side learns from, not of the usual practice.

Outputs: ``OUT/<peer>/eval.json``, ``eval_hits.npz`` (the format of ``evaluate``'s, so ``ablate``
and ``evaluate --peers`` can bootstrap paired differences), ``OUT/baselines.json`` (tuning on
validation, chosen values, eval metrics, fit / score seconds, model bytes) and ``OUT/baselines.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from core.files import write_json_atomic
from recsys_ssl import schema as fs
from recsys_ssl.peers import (DEFAULT_EASE_LAMBDAS, DEFAULT_KNN_NEIGHBOURS, EASE, EASE_BYTES_PER_CELL, EASE_MAX_ITEMS,
                              PEER_CLASSES, PEERS, interaction_matrix)
from recsys_ssl.protocol import EARLIER_SPLITS, HeldOut, check_mode, corpus_rows, held_out

logger = logging.getLogger(__name__)

MAX_GRID_EXTENSIONS = 8
SELECTION_K = 100  # peers are tuned, and the best peer chosen, on validation recall@100 (overall)


class PeerData:
    """A feature directory's splits as the matrices the peers fit and score (see the module docstring).

    Args:
      feature_set: a loaded :class:`recsys_ssl.data.FeatureSet`.
      mode: "user" or "item" queries.
      splits: split name -> columns (``FeatureSet.read_split``) of train, validation and eval.
    """

    def __init__(self, feature_set, mode: str, splits: Mapping[str, Mapping[str, np.ndarray]]):
        self.feature_set, self.mode, self.splits = feature_set, check_mode(mode), splits
        self.item_ids = feature_set.item_ids
        self.rows = {name: corpus_rows(self.item_ids, columns[fs.ITEM_ID]) for name, columns in splits.items()}

    def fit_matrix(self, split: str) -> tuple[sp.csr_matrix, dict[str, int]]:
        """Binary users x items matrix of ``split``'s earlier splits, and the user -> row map."""
        names = EARLIER_SPLITS[split]
        users = np.concatenate([self.splits[n][fs.USER_ID] for n in names])
        items = np.concatenate([self.rows[n] for n in names])
        row_of_user = {u: i for i, u in enumerate(dict.fromkeys(users.tolist()))}
        return interaction_matrix(row_of_user, users, items, len(self.item_ids)), row_of_user

    def queries(self, split: str) -> tuple[HeldOut, sp.csr_matrix]:
        """The held-out queries of ``split`` and their item sets x_q (binary [Q, N] CSR)."""
        held = held_out(self.item_ids, split, self.mode, self.splits)
        num_items = len(self.item_ids)
        if self.mode == "item":
            matrix = sp.csr_matrix((np.ones(len(held), np.float32), (np.arange(len(held)), held.seeds)),
                                   shape=(len(held), num_items))
            return held, matrix
        fit, row_of_user = self.fit_matrix(split)
        history = held.examples[fs.HISTORY]
        history_rows = corpus_rows(self.item_ids, history.ravel()).reshape(history.shape)
        example_rows, columns = [], []
        for index, (user, items) in enumerate(zip(held.examples[fs.USER_ID], history_rows)):
            profile = fit.indices[fit.indptr[row_of_user[user]]: fit.indptr[row_of_user[user] + 1]] \
                if user in row_of_user else np.zeros(0, np.int32)
            chosen = np.union1d(profile, items[items >= 0])
            example_rows.append(np.full(len(chosen), index))
            columns.append(chosen)
        example_rows, columns = np.concatenate(example_rows), np.concatenate(columns)
        matrix = sp.csr_matrix((np.ones(len(columns), np.float32), (example_rows, columns)), shape=(len(held), num_items))
        return held, matrix


def peer_hits(peer, queries: sp.csr_matrix, held: HeldOut, ks: Sequence[int], chunk_size: int = 256) -> np.ndarray:
    """bool [Q, len(ks)] exact top-K hits of a fitted peer under the protocol."""
    from recsys_ssl.metrics import hits_of_scorer  # TensorFlow's top_k, as for the two-tower model

    return hits_of_scorer(lambda start, end: peer.score(queries[start:end]), queries.shape[1], held.targets,
                          held.exclude, ks, chunk_size)


def extend_grid(grid: Sequence[float], chosen: float, factor: float = 10.0) -> float | None:
    """The next value to add so that the grid spans ``factor`` below and above ``chosen``
    (half-decade steps beyond the current end, 3 significant digits), or None when it already does."""
    def step(value: float, direction: float) -> float:  # the next point of the half-decade grid 1, 3.16, 10, ...
        return float(f"{10 ** (np.round(2 * np.log10(value)) / 2 + direction / 2):.3g}")

    if max(grid) < chosen * factor:
        return step(max(grid), +1)
    if min(grid) > chosen / factor:
        return step(min(grid), -1)
    return None


def _summary(hits: np.ndarray, ks: Sequence[int], slices: Mapping[str, np.ndarray]) -> dict:
    from recsys_ssl.metrics import recall_summary

    return recall_summary(hits, ks, slices)


def run_baselines(features_dir: str, output_dir: str, peers: Sequence[str] = PEERS, mode: str = "user",
                  ease_lambdas: Sequence[float] = DEFAULT_EASE_LAMBDAS,
                  knn_neighbours: Sequence[int] = DEFAULT_KNN_NEIGHBOURS, ease_max_items: int = EASE_MAX_ITEMS,
                  refit: bool = True) -> dict:
    """Tunes every peer on validation, refits it on train + validation, scores the eval split.

    A peer whose ``OUT/<peer>/eval.json`` exists with the same settings is not recomputed.

    Returns:
      The ``baselines.json`` document (also written, with ``baselines.md``).

    Raises:
      ValueError: an unknown peer, an empty grid, or EASE on a corpus above ``ease_max_items``
        (checked before any work).
    """
    from recsys_ssl.data import FeatureSet
    from recsys_ssl.evaluate import CURVE_KS, REPORT_KS
    from recsys_ssl.protocol import read_splits

    unknown = [p for p in peers if p not in PEER_CLASSES]
    if unknown or not peers:
        raise ValueError(f"peers must be a non-empty subset of {PEERS}, received {list(peers)}")
    grids = {"popularity": [None], "itemknn": [int(k) for k in knn_neighbours],
             "ease": [float(v) for v in ease_lambdas]}
    if any(not grids[p] for p in peers):
        raise ValueError("the item-kNN and EASE grids must not be empty")
    feature_set = FeatureSet.load(features_dir)
    if "ease" in peers:
        EASE.check_size(feature_set.num_items, ease_max_items)
    check_mode(mode)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "baselines.json")
    document = {"features": os.path.abspath(features_dir), "mode": mode, "refit": refit, "peers": {}}
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if all(previous.get(k) == document[k] for k in ("features", "mode", "refit")):
            document["peers"] = previous.get("peers", {})
    data = PeerData(feature_set, mode, read_splits(feature_set, ("train", "validation", "eval")))
    validation, validation_queries = data.queries("validation")
    evaluation, eval_queries = data.queries("eval")
    fit_validation, _ = data.fit_matrix("validation")
    fit_eval, _ = data.fit_matrix("eval" if refit else "validation")
    curve_ks = sorted(set(CURVE_KS) | set(REPORT_KS) | {SELECTION_K})
    validation_slices = validation.slices(feature_set.is_head, feature_set.is_cold)
    eval_slices = evaluation.slices(feature_set.is_head, feature_set.is_cold)
    document["protocol"] = evaluation.protocol(feature_set.num_items) + (
        "; peers: tuned on validation (fit on train), " + ("refit on train + validation for eval" if refit else
                                                          "fit on train only for eval too (no refit)"))
    document["queries"] = {"validation": len(validation), "eval": len(evaluation)}
    for name in peers:
        settings = {"grid": grids[name], "ease_max_items": ease_max_items if name == "ease" else None}
        record = document["peers"].get(name)
        if record and record.get("settings") == settings and os.path.isfile(os.path.join(output_dir, name, "eval.json")):
            logger.info("%s: already done (%s)", name, os.path.join(output_dir, name))
            continue
        cls = PEER_CLASSES[name]
        make = functools.partial(cls, max_items=ease_max_items) if name == "ease" else cls
        record = {"settings": settings, "parameter": cls.parameter, "tuning": {}}
        grid = list(grids[name])
        while True:
            for value in grid:
                key = "-" if value is None else f"{value:g}"
                if key in record["tuning"]:
                    continue
                started = time.time()
                peer = make(value).fit(fit_validation)
                fitted = time.time()
                hits = peer_hits(peer, validation_queries, validation, [SELECTION_K])
                record["tuning"][key] = {"value": value, "fit_seconds": fitted - started,
                                         "score_seconds": time.time() - fitted,
                                         **{s: {f"recall@{SELECTION_K}": float(hits[m, 0].mean()) if m.any()
                                                else float("nan")} for s, m in validation_slices.items()}}
                logger.info("%s %s=%s: validation recall@%d %.4f (fit %.1f s)", name, cls.parameter, key,
                             SELECTION_K, record["tuning"][key]["overall"][f"recall@{SELECTION_K}"],
                             fitted - started)
            chosen = max(grid, key=lambda v: (record["tuning"]["-" if v is None else f"{v:g}"]["overall"]
                                              [f"recall@{SELECTION_K}"], -(v or 0)))
            extra = extend_grid(grid, chosen) if name == "ease" else None
            if extra is None or len(grid) >= len(grids[name]) + MAX_GRID_EXTENSIONS:
                break
            grid.append(extra)
        record["grid_evaluated"] = grid
        if name == "ease":
            record["grid_spans_decade"] = extend_grid(grid, chosen) is None
            if not record["grid_spans_decade"]:
                logger.warning("ease: lambda %g chosen at the edge after %d extensions of the grid %s", chosen,
                                MAX_GRID_EXTENSIONS, grid)
        record["chosen"] = chosen
        record["validation_recall@100"] = record["tuning"]["-" if chosen is None else f"{chosen:g}"]["overall"][
            f"recall@{SELECTION_K}"]
        started = time.time()
        peer = make(chosen).fit(fit_eval)
        fitted = time.time()
        hits = peer_hits(peer, eval_queries, evaluation, curve_ks)
        record.update(fit_seconds=fitted - started, score_seconds=time.time() - fitted, model_bytes=peer.nbytes())
        if name == "ease":
            record["peak_bytes_estimate"] = EASE_BYTES_PER_CELL * feature_set.num_items ** 2
        columns = [curve_ks.index(k) for k in REPORT_KS]
        record["metrics"] = _summary(hits[:, columns], REPORT_KS, eval_slices)
        write_peer_run(os.path.join(output_dir, name), evaluation, hits, curve_ks, eval_slices, record,
                       document["protocol"])
        document["peers"][name] = record
        _write(document, output_dir)
    done = {n: r for n, r in document["peers"].items() if n in peers}
    document["best_peer"] = max(done, key=lambda n: done[n]["validation_recall@100"]) if done else None
    _write(document, output_dir)
    return document


def write_peer_run(directory: str, held: HeldOut, hits: np.ndarray, ks: Sequence[int],
                   slices: Mapping[str, np.ndarray], record: dict, protocol: str) -> None:
    """A peer's ``eval.json`` and ``eval_hits.npz`` in ``evaluate``'s formats."""
    os.makedirs(directory, exist_ok=True)
    extra = {k: v for k, v in slices.items() if k.startswith("seed_")}
    np.savez_compressed(os.path.join(directory, "eval_hits.npz"), users=held.examples[fs.USER_ID].astype(str),
                        targets=held.targets, ks=np.array(ks), hits=hits, head=slices["head"], cold=slices["cold"],
                        **extra)
    write_json_atomic(os.path.join(directory, "eval.json"), {
        "split": held.split, "mode": held.mode, "metrics": record["metrics"], "protocol": protocol,
        "peer": {k: record[k] for k in ("parameter", "chosen", "validation_recall@100", "fit_seconds",
                                        "score_seconds", "model_bytes")}})


def _write(document: dict, output_dir: str) -> None:
    write_json_atomic(os.path.join(output_dir, "baselines.json"), document)
    with open(os.path.join(output_dir, "baselines.md"), "w") as f:
        f.write(markdown(document))


def markdown(document: dict) -> str:
    """The peers' eval table and their validation tuning."""
    slices = ["overall", "head", "tail", "cold"] + (["seed_head", "seed_tail"] if document["mode"] == "item" else [])
    lines = [f"Peers on `{document['features']}` ({document['mode']} queries). Protocol: "
             f"{document.get('protocol', '')}.", "",
             "| peer | chosen on validation | validation R@100 | " + " | ".join(f"{s} R@100" for s in slices)
             + " | fit s | model MB |", "|---|---|---|" + "---|" * len(slices) + "---|---|"]
    for name, record in document["peers"].items():
        chosen = "-" if record["chosen"] is None else f"{record['parameter']} {record['chosen']:g}"
        cells = [f"{record['metrics'][s]['recall@100']:.4f}" if s in record["metrics"] else "n/a" for s in slices]
        lines.append(f"| {name} | {chosen} | {record['validation_recall@100']:.4f} | " + " | ".join(cells)
                     + f" | {record['fit_seconds']:.1f} | {record['model_bytes'] / 2 ** 20:.1f} |")
    if document.get("best_peer"):
        lines += ["", f"Best peer (highest validation R@100): **{document['best_peer']}**."]
    lines += ["", "Validation tuning (fit on train), overall R@100:", ""]
    for name, record in document["peers"].items():
        if record["parameter"]:
            lines.append(f"- {name} ({record['parameter']}): " + ", ".join(
                f"{key}: {entry['overall']['recall@100']:.4f}" for key, entry in
                sorted(record["tuning"].items(), key=lambda kv: float(kv[1]["value"]))))
    return "\n".join(lines) + "\n"
