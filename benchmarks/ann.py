"""ScaNN vs exact brute force on 1M x 64 clustered unit vectors: recall@10, queries/s, build, memory.

    python -m benchmarks.ann                         # the full run (1M items, ~10 min)
    python -m benchmarks.ann --num_items 100000      # a quick look

Data: unit vectors drawn around a two-level hierarchy of cluster centres (topics -> sub-topics
-> points), with power-law cluster sizes, the shape of trained item embeddings; queries come
from the same distribution (not from the database). Ground truth: exact top-10 by dot product
(numpy). Methods: numpy and TensorFlow brute force (matmul + top-k), ScaNN through its pybind
API (a sweep over leaves searched and reordering depth, built once), and ScaNN through its
TensorFlow ops (what a ScaNN SavedModel runs inside the server) at the chosen setting.

Target (issue 5): recall@10 >= 0.95 at >= 10x the brute-force queries/s at batch 1.
Writes a JSON of every number (``--output_json``) and a recall / speed plot (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import serving  # noqa: E402,F401  (Keras 2 before TensorFlow)

logger = logging.getLogger("ann")


def clustered_unit_vectors(num: int, dim: int, num_topics: int, subtopics_per_topic: int,
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (database float32 [num, dim], cluster centres [C, dim], cluster weights [C])."""
    rng = np.random.default_rng(seed)
    topics = _normalize(rng.normal(size=(num_topics, dim)))
    offsets = rng.normal(size=(num_topics * subtopics_per_topic, dim)) / np.sqrt(dim)  # Norm ~1.
    centres = _normalize(np.repeat(topics, subtopics_per_topic, axis=0) + 0.8 * offsets)
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.8  # Power-law cluster sizes.
    weights = rng.permutation(weights / weights.sum())
    return _sample(centres, weights, num, rng), centres, weights


def _sample(centres, weights, num, rng, noise=0.55) -> np.ndarray:
    """Points around ``centres`` (chosen with ``weights``) with Gaussian noise of norm ~``noise``."""
    dim = centres.shape[1]
    assignment = rng.choice(len(centres), size=num, p=weights)
    points = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, 200_000):
        idx = assignment[start:start + 200_000]
        chunk = centres[idx] + noise * rng.normal(size=(len(idx), dim)) / np.sqrt(dim)
        points[start:start + len(idx)] = _normalize(chunk)
    return points


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        out[start:start + chunk] = numpy_top_k(database, queries[start:start + chunk], k)
    return out


def numpy_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ database.T
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall(found, exact: np.ndarray) -> float:
    return float(np.mean([len(set(np.asarray(f)[:exact.shape[1]].tolist()) & set(e.tolist())) / exact.shape[1]
                          for f, e in zip(found, exact)]))


MIN_SECONDS = 2.0  # Fast methods repeat the query set until at least this long was timed.


def time_batch1(search, queries: np.ndarray, limit: int) -> tuple[float, list]:
    """Runs ``search(q [1, d])`` one query at a time; returns (queries/s, first-pass results)."""
    n = min(limit, len(queries))
    search(queries[:1])  # Warm-up.
    results, done = [], 0
    started = time.perf_counter()
    while True:
        for i in range(n):
            found = search(queries[i:i + 1])
            if done < n:
                results.append(found)
            done += 1
        if time.perf_counter() - started >= MIN_SECONDS:
            break
    return done / (time.perf_counter() - started), results


def time_batched(search, queries: np.ndarray, batch: int) -> tuple[float, list]:
    """Runs ``search(q [batch, d])`` over the queries; returns (queries/s, first-pass results)."""
    search(queries[:batch])  # Warm-up.
    results, done = [], 0
    started = time.perf_counter()
    while True:
        for start in range(0, len(queries), batch):
            found = search(queries[start:start + batch])
            if done < len(queries):
                results.extend(found)
            done += len(found)
        if time.perf_counter() - started >= MIN_SECONDS:
            break
    return done / (time.perf_counter() - started), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--num_items", type=int, default=1_000_000, help="database vectors (synthetic, clustered)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension")
    parser.add_argument("--num_queries", type=int, default=1000, help="queries measured for recall and speed")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument("--num_topics", type=int, default=100, help="clusters of the synthetic vectors")
    parser.add_argument("--subtopics_per_topic", type=int, default=20, help="sub-clusters per cluster")
    parser.add_argument("--brute_force_batch1_queries", type=int, default=200,
                        help="single queries timed for the (slow) brute-force baselines")
    parser.add_argument("--num_leaves", type=int, default=2000, help="ScaNN partitioning leaves")
    parser.add_argument("--leaves_to_search", default="10,25,50,100,200", help="comma-separated sweep")
    parser.add_argument("--reorder", default="50,100,250", help="comma-separated sweep of reordering depth")
    parser.add_argument("--target_recall", type=float, default=0.95, help="recall@k the reported operating point must reach")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    parser.add_argument("--output_json", default="runs/benchmarks/ann.json", help="JSON file of every number")
    parser.add_argument("--plot", default="runs/benchmarks/ann.png", help="PNG of recall vs queries/s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import scann
    import tensorflow as tf

    results: dict = {"config": vars(args), "methods": {}}
    started = time.perf_counter()
    database, centres, weights = clustered_unit_vectors(args.num_items, args.dim, args.num_topics,
                                                        args.subtopics_per_topic, args.seed)
    queries = _sample(centres, weights, args.num_queries, np.random.default_rng(args.seed + 1))
    logger.info("data: %s items, %s queries in %.1fs", database.shape, queries.shape, time.perf_counter() - started)
    started = time.perf_counter()
    exact = exact_top_k(database, queries, args.k)
    logger.info("exact top-%d for %d queries in %.1fs", args.k, len(queries), time.perf_counter() - started)
    results["data"] = {"mean_top1_score": float(np.mean(np.sum(queries * database[exact[:, 0]], axis=1))),
                       "mean_top10_score": float(np.mean(np.sum(queries * database[exact[:, -1]], axis=1))),
                       "mean_random_score": float(np.mean(queries[:100] @ database[:1000].T))}

    qps1, found = time_batch1(lambda q: numpy_top_k(database, q, args.k)[0], queries, args.brute_force_batch1_queries)
    qps256, found256 = time_batched(lambda q: list(numpy_top_k(database, q, args.k)), queries, 256)
    results["methods"]["numpy brute force"] = {"qps_batch1": qps1, "qps_batch256": qps256, "build_s": 0.0,
                                               "recall": recall(found256, exact), "index_mib": database.nbytes / 2**20}
    logger.info("numpy brute force: %.1f q/s batch 1, %.1f q/s batch 256", qps1, qps256)

    rss = rss_mib()
    started = time.perf_counter()
    db_tensor = tf.constant(database)
    top_k = tf.function(lambda q: tf.math.top_k(tf.matmul(q, db_tensor, transpose_b=True), args.k).indices)
    build = time.perf_counter() - started
    qps1, _ = time_batch1(lambda q: top_k(q).numpy()[0], queries, args.brute_force_batch1_queries)
    qps256, found256 = time_batched(lambda q: list(top_k(q).numpy()), queries, 256)
    results["methods"]["TF brute force"] = {"qps_batch1": qps1, "qps_batch256": qps256, "build_s": build,
                                            "recall": recall(found256, exact), "rss_delta_mib": rss_mib() - rss,
                                            "index_mib": database.nbytes / 2**20}
    logger.info("TF brute force: %.1f q/s batch 1, %.1f q/s batch 256", qps1, qps256)
    del db_tensor, top_k

    reorder_sweep = [int(x) for x in args.reorder.split(",")]
    rss = rss_mib()
    started = time.perf_counter()
    searcher = (scann.scann_ops_pybind.builder(database, args.k, "dot_product")
                .tree(num_leaves=args.num_leaves, num_leaves_to_search=100, training_sample_size=250_000)
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(max(reorder_sweep)).build())
    build = time.perf_counter() - started
    rss_delta = rss_mib() - rss
    index_dir = tempfile.mkdtemp(prefix="scann-index-")
    searcher.serialize(index_dir)
    index_mib = sum(os.path.getsize(os.path.join(index_dir, f)) for f in os.listdir(index_dir)) / 2**20
    shutil.rmtree(index_dir)
    logger.info("ScaNN build %.1fs, RSS +%.0f MiB, serialized %.0f MiB", build, rss_delta, index_mib)
    sweep = []
    for leaves in [int(x) for x in args.leaves_to_search.split(",")]:
        for reorder in reorder_sweep:
            def one(q, leaves=leaves, reorder=reorder):
                return searcher.search(q[0], final_num_neighbors=args.k, pre_reorder_num_neighbors=reorder,
                                       leaves_to_search=leaves)[0]

            def many(q, leaves=leaves, reorder=reorder):
                return list(searcher.search_batched(q, final_num_neighbors=args.k, pre_reorder_num_neighbors=reorder,
                                                    leaves_to_search=leaves)[0])

            def many_parallel(q, leaves=leaves, reorder=reorder):
                return list(searcher.search_batched_parallel(q, final_num_neighbors=args.k,
                                                             pre_reorder_num_neighbors=reorder,
                                                             leaves_to_search=leaves, batch_size=128)[0])

            qps1, found1 = time_batch1(one, queries, len(queries))
            qps256, _ = time_batched(many, queries, 256)
            qps256p, _ = time_batched(many_parallel, queries, 256)
            entry = {"leaves_to_search": leaves, "reorder": reorder, "recall": recall(found1, exact),
                     "qps_batch1": qps1, "qps_batch256": qps256, "qps_batch256_parallel": qps256p}
            sweep.append(entry)
            logger.info("ScaNN leaves %d reorder %d: recall %.4f, %.0f q/s batch 1, %.0f / %.0f q/s batch 256 "
                        "(1 / 2 threads)", leaves, reorder, entry["recall"], qps1, qps256, qps256p)
    results["scann_sweep"] = sweep
    results["scann_build"] = {"build_s": build, "rss_delta_mib": rss_delta, "serialized_mib": index_mib,
                              "num_leaves": args.num_leaves}
    brute_qps1 = max(results["methods"]["numpy brute force"]["qps_batch1"], results["methods"]["TF brute force"]["qps_batch1"])
    meeting = [e for e in sweep if e["recall"] >= args.target_recall]
    chosen = max(meeting, key=lambda e: e["qps_batch1"]) if meeting else max(sweep, key=lambda e: e["recall"])
    results["chosen"] = dict(chosen, speedup_vs_best_brute_force_batch1=chosen["qps_batch1"] / brute_qps1)
    results["methods"]["ScaNN (pybind)"] = {"qps_batch1": chosen["qps_batch1"], "qps_batch256": chosen["qps_batch256"],
                                            "qps_batch256_parallel": chosen["qps_batch256_parallel"],
                                            "recall": chosen["recall"], "build_s": build, "rss_delta_mib": rss_delta,
                                            "index_mib": index_mib}
    del searcher

    rss = rss_mib()
    started = time.perf_counter()
    tf_searcher = (scann.scann_ops.builder(database, args.k, "dot_product")
                   .tree(num_leaves=args.num_leaves, num_leaves_to_search=chosen["leaves_to_search"],
                         training_sample_size=250_000)
                   .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(chosen["reorder"]).build())
    build = time.perf_counter() - started
    rss_delta = rss_mib() - rss
    qps1, found1 = time_batch1(lambda q: tf_searcher.search(q[0])[0].numpy(), queries, len(queries))
    qps256, _ = time_batched(lambda q: list(tf_searcher.search_batched(q)[0].numpy()), queries, 256)
    results["methods"]["ScaNN (TF ops)"] = {"qps_batch1": qps1, "qps_batch256": qps256, "recall": recall(found1, exact),
                                            "build_s": build, "rss_delta_mib": rss_delta}
    logger.info("ScaNN TF ops: recall %.4f, %.0f q/s batch 1, %.0f q/s batch 256", recall(found1, exact), qps1, qps256)

    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump(results, f, indent=1)
    if args.plot:
        _plot(results, args.plot)
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = ["| method | recall@10 | q/s batch 1 | q/s batch 256 | build s | memory |", "|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        batched = f"{m['qps_batch256']:.0f}"
        if "qps_batch256_parallel" in m:
            batched += f" ({m['qps_batch256_parallel']:.0f} with 2 threads)"
        memory = f"index {m['index_mib']:.0f} MiB" if "index_mib" in m else ""
        if "rss_delta_mib" in m:
            memory += f"{', ' if memory else ''}RSS +{m['rss_delta_mib']:.0f} MiB"
        lines.append(f"| {name} | {m['recall']:.4f} | {m['qps_batch1']:.1f} | {batched} | {m['build_s']:.1f} | {memory} |")
    lines += ["", "| leaves searched | reorder | recall@10 | q/s batch 1 | q/s batch 256 (1 / 2 threads) |",
              "|---|---|---|---|---|"]
    for e in results["scann_sweep"]:
        lines.append(f"| {e['leaves_to_search']} | {e['reorder']} | {e['recall']:.4f} | {e['qps_batch1']:.0f} | "
                     f"{e['qps_batch256']:.0f} / {e['qps_batch256_parallel']:.0f} |")
    c = results["chosen"]
    lines.append(f"\nChosen: leaves {c['leaves_to_search']}, reorder {c['reorder']}: recall {c['recall']:.4f}, "
                 f"{c['speedup_vs_best_brute_force_batch1']:.1f}x the faster brute force at batch 1.")
    return "\n".join(lines)


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for reorder in sorted({e["reorder"] for e in results["scann_sweep"]}):
        points = [e for e in results["scann_sweep"] if e["reorder"] == reorder]
        ax.plot([e["recall"] for e in points], [e["qps_batch1"] for e in points], "o-", label=f"ScaNN, reorder {reorder}")
    for name in ("numpy brute force", "TF brute force"):
        m = results["methods"][name]
        ax.axhline(m["qps_batch1"], linestyle="--", label=f"{name} (recall 1.0)", color="grey" if "numpy" in name else "k")
    ax.set_xlabel("recall@10 vs exact")
    ax.set_ylabel("queries/s at batch 1")
    ax.set_yscale("log")
    ax.set_title(f"{results['config']['num_items']:,} x {results['config']['dim']} clustered unit vectors")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
