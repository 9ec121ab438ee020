"""The peers every recommender library ships, scored under the two-tower model's own protocol.

``python -m recsys_ssl baselines --features DIR --output_dir DIR [--query_mode user|item]``

- **popularity**: an item's number of interacting users in the fit splits.
- **item-kNN**: cosine similarity of the items' user sets, ``s_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)``
  (``s_ii = 0``); each item keeps its ``neighbours`` most similar items (row ``i`` of ``S``);
  ``score(q, j) = sum_{i in q} s_ij``. ``neighbours`` is tuned.
- **EASE** (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019, eq. 8):
  ``P = (X^T X + lambda I)^-1``, ``B_ij = -P_ij / P_jj`` for ``i != j``, ``B_jj = 0``;
  ``score(q, .) = x_q B``. ``lambda`` is tuned. It needs dense items x items float64 matrices
  (about 3 N^2 x 8 bytes at peak: G, its inverse in place and B), so it refuses corpora above
  ``max_items`` (default 20,000 items: about 9.6 GB), naming the limit.

Protocol (``recsys_ssl.protocol``, the same queries, exclusions, slices and K as ``evaluate``):

- ``X``: binary users x items matrix of the **fit splits**: for tuning on validation, the train
  split only; for the eval split, the peer is **refit on train + validation** with the value
  chosen on validation (the two-tower model trains on train only and uses validation for model
  selection; the peers use the validation interactions as data, the usual practice for
  closed-form models, which makes them stronger peers, not weaker).
- A query's items ``x_q``: ``user`` mode: the user's items in the fit splits plus the example's
  history (everything the two-tower query can see: its user id was trained on those, its history
  holds the latest items, including earlier held-out ones); ``item`` mode: the seed item only.
- Exact scores over the whole corpus; the user's items of the earlier splits (and the seed in
  ``item`` mode) excluded, never the target; ties are broken by the lower corpus row, i.e. by
  train frequency (``vocab/item_id.txt`` is sorted by it).
- The **best peer** is the one with the highest validation recall@100 (overall), chosen on the
  validation split like every other choice here.

``refit=False`` (``--no_refit``) fits the eval peers on the train split only, the data the two-tower
model's weights see: the comparison of the data each side learns from, not of the usual practice.

Outputs: ``OUT/<peer>/eval.json``, ``eval_hits.npz`` (the format of ``evaluate``'s, so ``ablate``
and ``evaluate --peers`` can bootstrap paired differences), ``OUT/baselines.json`` (tuning on
validation, chosen values, eval metrics, fit / score seconds, model bytes) and ``OUT/baselines.md``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from core.files import write_json_atomic
from recsys_ssl import schema as fs
from recsys_ssl.protocol import EARLIER_SPLITS, HeldOut, check_mode, corpus_rows, held_out

PEERS = ("popularity", "itemknn", "ease")
DEFAULT_EASE_LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
DEFAULT_KNN_NEIGHBOURS = (10, 20, 50, 100, 200, 500, 1000)
EASE_MAX_ITEMS = 20_000
EASE_BYTES_PER_CELL = 3 * 8  # G, its inverse (in place) and B, float64
MAX_GRID_EXTENSIONS = 8
SELECTION_K = 100  # peers are tuned, and the best peer chosen, on validation recall@100 (overall)


def interaction_matrix(row_of_user: Mapping[str, int], users: np.ndarray, items: np.ndarray,
                       num_items: int) -> sp.csr_matrix:
    """Binary float32 [num_users, num_items] CSR matrix of (user, corpus row) pairs (rows < 0 skipped)."""
    keep = items >= 0
    rows = np.fromiter((row_of_user[u] for u in users[keep]), np.int64, int(keep.sum()))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, items[keep])),
                           shape=(len(row_of_user), num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


class Popularity:
    """``score(q, j)`` = number of fit users of item ``j`` (the same ranking for every query)."""

    name = "popularity"
    parameter = None

    def __init__(self, value=None):
        del value

    def fit(self, matrix: sp.csr_matrix) -> "Popularity":
        self.counts = np.asarray(matrix.sum(axis=0), np.float32).ravel()
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.counts, (queries.shape[0], 1))

    def nbytes(self) -> int:
        return self.counts.nbytes


class ItemKNN:
    """Cosine item-kNN (see the module docstring).

    Args:
      neighbours: how many most similar items each item keeps.
    """

    name = "itemknn"
    parameter = "neighbours"

    def __init__(self, neighbours: int):
        if int(neighbours) < 1:
            raise ValueError(f"item-kNN neighbours must be >= 1, received {neighbours}")
        self.neighbours = int(neighbours)

    def fit(self, matrix: sp.csr_matrix) -> "ItemKNN":
        self.similarity = cosine_neighbours(matrix, self.neighbours)
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.asarray((queries @ self.similarity).toarray(), np.float32)

    def nbytes(self) -> int:
        s = self.similarity
        return s.data.nbytes + s.indices.nbytes + s.indptr.nbytes


def cosine_neighbours(matrix: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """float32 [N, N] CSR: row ``i`` holds the ``neighbours`` largest cosine similarities
    ``|U_i & U_j| / sqrt(|U_i| |U_j|)`` of item ``i`` (``j != i``, only positive ones; ties by
    the lower ``j``)."""
    x = matrix.tocsc().astype(np.float32)
    co = (x.T @ x).tocsr()
    co.setdiag(0.0)
    co.eliminate_zeros()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    co = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ co @ sp.diags(1.0 / np.maximum(norms, 1e-12))
    co = co.tocsr()
    co.sort_indices()
    data, indices, indptr = [], [], [0]
    for i in range(co.shape[0]):
        start, end = co.indptr[i], co.indptr[i + 1]
        values, columns = co.data[start:end], co.indices[start:end]
        if len(values) > neighbours:
            order = np.lexsort((columns, -values))[:neighbours]
            values, columns = values[order], columns[order]
        data.append(values)
        indices.append(columns)
        indptr.append(indptr[-1] + len(values))
    return sp.csr_matrix((np.concatenate(data).astype(np.float32), np.concatenate(indices), np.array(indptr)),
                         shape=co.shape)


class EASE:
    """EASE (Steck 2019), closed form (see the module docstring).

    Args:
      l2: lambda, the L2 weight (> 0).
      max_items: the largest corpus it fits (its dense items x items matrices).
    """

    name = "ease"
    parameter = "lambda"

    def __init__(self, l2: float, max_items: int = EASE_MAX_ITEMS):
        if not float(l2) > 0:
            raise ValueError(f"EASE lambda must be > 0, received {l2}")
        self.l2, self.max_items = float(l2), int(max_items)

    @staticmethod
    def check_size(num_items: int, max_items: int = EASE_MAX_ITEMS) -> None:
        """Raises ValueError when an ``num_items`` corpus exceeds ``max_items``."""
        if num_items > max_items:
            raise ValueError(
                f"EASE needs dense {num_items:,} x {num_items:,} float64 matrices (about "
                f"{EASE_BYTES_PER_CELL * num_items ** 2 / 2 ** 30:.1f} GiB at peak); the limit is {max_items:,} items "
                f"(about {EASE_BYTES_PER_CELL * max_items ** 2 / 2 ** 30:.1f} GiB, --ease_max_items): use popularity "
                "or item-kNN on this corpus, or raise the limit on a machine with the memory")

    def fit(self, matrix: sp.csr_matrix) -> "EASE":
        num_items = matrix.shape[1]
        self.check_size(num_items, self.max_items)
        x = matrix.tocsc().astype(np.float64)
        gram = np.asarray((x.T @ x).toarray(), np.float64)
        gram[np.diag_indices(num_items)] += self.l2
        self.weights = ease_weights(gram)
        return self

    def score(self, queries: sp.csr_matrix) -> np.ndarray:
        return np.asarray(queries @ self.weights, np.float32)

    def nbytes(self) -> int:
        return self.weights.nbytes


def ease_weights(regularised_gram: np.ndarray) -> np.ndarray:
    """EASE's B from ``G = X^T X + lambda I`` (float64 [N, N], overwritten): float32 [N, N].

    ``P = G^-1`` through a Cholesky factorisation (G is symmetric positive definite);
    ``B = I - P diag(1 / diag(P))``, i.e. ``B_ij = -P_ij / P_jj`` off the diagonal and 0 on it.
    """
    factor, info = scipy.linalg.lapack.dpotrf(regularised_gram, lower=False, overwrite_a=True)
    if info != 0:
        raise ValueError(f"X^T X + lambda I is not positive definite (LAPACK dpotrf info {info})")
    inverse, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"inverting X^T X + lambda I failed (LAPACK dpotri info {info})")
    inverse = np.triu(inverse) + np.triu(inverse, 1).T  # dpotri fills the upper triangle only
    diagonal = np.diag(inverse).copy()
    inverse /= -diagonal[None, :]
    inverse[np.diag_indices_from(inverse)] = 0.0
    return inverse.astype(np.float32)


PEER_CLASSES = {"popularity": Popularity, "itemknn": ItemKNN, "ease": EASE}


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
            logging.info("%s: already done (%s)", name, os.path.join(output_dir, name))
            continue
        cls = PEER_CLASSES[name]
        make = (lambda v: cls(v, ease_max_items)) if name == "ease" else cls
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
                logging.info("%s %s=%s: validation recall@%d %.4f (fit %.1f s)", name, cls.parameter, key,
                             SELECTION_K, record["tuning"][key]["overall"][f"recall@{SELECTION_K}"],
                             fitted - started)
            chosen = max(grid, key=lambda v: (record["tuning"]["-" if v is None else f"{v:g}"]["overall"]
                                              [f"recall@{SELECTION_K}"], -(v or 0)))
            extra = extend_grid(grid, chosen) if name == "ease" else None
            if extra is None or len(grid) >= len(grids[name]) + MAX_GRID_EXTENSIONS:
                break
            grid.append(extra)
        record["grid_evaluated"] = grid
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
