"""A ScaNN retrieval export at catalogue scale through the real server: build, recall, latency, hot swap, RSS.

    python -m benchmarks.scann_serving --output_dir runs/scann10m --num_items 10000000

Stages (each recorded in ``OUTPUT_DIR/scann_serving.json`` when done; a re-run skips finished
stages, so an interrupted run resumes; the server stages run again if any of them is missing):

1. ``data`` (child process): ``--num_items`` x ``--dim`` clustered unit vectors and
   ``--num_queries`` queries from the same mixture (:mod:`benchmarks.ann`), the exact top-``k``
   of every query by brute force (numpy), saved as ``.npy``.
2. ``export`` (child process, measured from outside: wall, peak RSS): the retrieval stand-in
   (:func:`serving.standins.export_retrieval`) over those vectors with a ScaNN index
   (``tfrs.layers.factorized_top_k.ScaNN``, as ``recsys_ssl export --index scann`` builds it;
   ``--num_leaves``, ``--leaves_to_search``, ``--reorder``), a hashed history table (the query side
   of a model trained with ``model.item_id_buckets``), and a ``search(query)`` signature next to
   ``serving_default``; index build and save seconds, export size on disk.
3. ``load``: ``python -m serving serve`` on it (``--server_flags``); load time = start to
   AVAILABLE; server RSS (whole process tree, sampled every 0.2 s for the whole session).
4. ``recall``: the ``--num_queries`` queries through REST ``search``, one request per query,
   one client: recall@k against brute force, and that batch-1 latency (p50 / p99).
5. ``latency``: batch-1 ``serving_default`` requests (a user and 0-20 history items), one
   client, ``--latency_requests`` requests: p50 / p99.
6. ``concurrent``: ``--clients`` closed-loop clients for ``--seconds`` on ``serving_default``
   (:func:`benchmarks.serving_load.run_load`): q/s, latency percentiles, errors.
7. ``hot_swap``: the same load for ``--swap_seconds``; after ``--swap_after_seconds`` a copy of the
   export (hard links) appears atomically as the next version; recorded: failed requests (target
   0), the time until the new version served and the old one was unloaded, latency percentiles
   over the whole window, the server's peak RSS during the swap (both versions are in memory
   for a while).

Targets (issue 25, 10M x 64, idle machine): recall@10 >= 0.95, batch-1 p99 <= 5 ms through the
server, build <= 15 min, server RSS <= 8 GiB, 0 failed requests during the hot swap.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import random
import shutil
import signal
import sys
import threading
import time

import numpy as np

from benchmarks.measure import ResultStore, directory_bytes, load_average, measure, tree_rss

logger = logging.getLogger("scann_serving")
MODEL = "retrieval"


def make_data(args: argparse.Namespace) -> dict:
    """Stage 1 (in a child process): vectors, queries and the exact top-k, as .npy files."""
    from benchmarks.ann import _sample, clustered_unit_vectors, exact_top_k

    started = time.perf_counter()
    database, centres, weights = clustered_unit_vectors(args.num_items, args.dim, args.num_topics,
                                                        args.subtopics_per_topic, args.seed)
    queries = _sample(centres, weights, args.num_queries, np.random.default_rng(args.seed + 1))
    generated = time.perf_counter() - started
    started = time.perf_counter()
    exact = exact_top_k(database, queries, args.k, chunk=10)
    exact_seconds = time.perf_counter() - started
    for name, array in (("database", database), ("queries", queries), ("exact", exact)):
        np.save(os.path.join(args.output_dir, f"{name}.npy"), array)
    return {"generate_seconds": generated, "exact_top_k_seconds": exact_seconds,
            "mean_top1_score": float(np.mean(np.sum(queries * database[exact[:, 0]], axis=1)))}


def make_export(args: argparse.Namespace) -> dict:
    """Stage 2 (in a child process): the ScaNN stand-in export over the saved vectors, version 1."""
    import serving  # noqa: F401  (Keras 2 before TensorFlow)
    from serving import standins

    database = np.load(os.path.join(args.output_dir, "database.npy"))
    timings: dict = {}
    path = standins.export_retrieval(
        os.path.join(args.output_dir, "export"), index="scann", k=args.k, num_leaves=args.num_leaves,
        num_leaves_to_search=args.leaves_to_search, num_reordering_candidates=args.reorder, version=1,
        item_vectors=database, history_buckets=args.history_buckets, query_signature=True, timings=timings)
    return {"version_dir": path, **timings}


class _RssSampler(threading.Thread):
    """Samples the server's tree RSS every 0.2 s; ``peak(since)`` = the highest sample after ``since``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self._stop = pid, [], threading.Event()

    def run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tree_rss(self.pid)))
            self._stop.wait(0.2)

    def peak(self, since: float = 0.0) -> int:
        return max((rss for t, rss in self.samples if t >= since), default=0)

    def stop(self):
        self._stop.set()


def _post(connection: http.client.HTTPConnection, body: bytes) -> tuple[float, dict]:
    started = time.perf_counter()
    connection.request("POST", f"/v1/models/{MODEL}:predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    elapsed = 1000 * (time.perf_counter() - started)
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
    return elapsed, json.loads(payload)


def _percentiles(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p90": float(np.percentile(array, 90)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean()), "n": len(values)}


def measure_recall(port: int, args: argparse.Namespace) -> dict:
    """Stage 4: every query through ``search``, one at a time: recall@k and batch-1 latency."""
    queries = np.load(os.path.join(args.output_dir, "queries.npy"))
    exact = np.load(os.path.join(args.output_dir, "exact.npy"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    hits, latencies = [], []
    for index, query in enumerate(queries):
        body = json.dumps({"signature_name": "search", "instances": [{"query": query.tolist()}]}).encode()
        elapsed, document = _post(connection, body)
        if index >= 10:  # the first requests warm up
            latencies.append(elapsed)
        found = {int(item[len("item"):]) for item in document["predictions"][0]["item_ids"][:args.k]}
        hits.append(len(found & set(exact[index].tolist())) / args.k)
    return {"recall_at_k": float(np.mean(hits)), "k": args.k, "latency_ms": _percentiles(latencies),
            "load_average": load_average()}


def _bodies(args: argparse.Namespace, count: int, seed: int) -> list[bytes]:
    from benchmarks.serving_load import retrieval_bodies
    from serving.standins import item_ids

    rng = random.Random(seed)
    vocabulary = item_ids(min(args.num_items, 200_000))  # a sample of the catalogue's ids
    return retrieval_bodies(count, vocabulary, 20, rng)


def measure_latency(port: int, args: argparse.Namespace) -> dict:
    """Stage 5: batch-1 ``serving_default`` requests from one client."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies = []
    for index, body in enumerate(_bodies(args, args.latency_requests + 20, seed=1)):
        elapsed, _ = _post(connection, body)
        if index >= 20:
            latencies.append(elapsed)
    return {"latency_ms": _percentiles(latencies), "load_average": load_average()}


def measure_concurrent(port: int, args: argparse.Namespace, seconds: float) -> dict:
    from benchmarks.serving_load import run_load

    result = asyncio.run(run_load(f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict", _bodies(args, 2000, seed=2),
                                  args.clients, seconds, 3.0))
    result["load_average"] = load_average()
    return result


def _model_versions(port: int) -> dict[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"/v1/models/{MODEL}")
    document = json.loads(connection.getresponse().read())
    return {s["version"]: s["state"] for s in document.get("model_version_status", [])}


def link_copy(source: str, target: str) -> None:
    """A copy of the directory tree ``source`` made of hard links (instant, no extra disk)."""
    for root, _, files in os.walk(source):
        destination = os.path.join(target, os.path.relpath(root, source))
        os.makedirs(destination, exist_ok=True)
        for name in files:
            os.link(os.path.join(root, name), os.path.join(destination, name))


def measure_hot_swap(port: int, args: argparse.Namespace, sampler: _RssSampler) -> dict:
    """Stage 7: a new version appears under load; the load's errors and the swap's timeline."""
    base = os.path.join(args.output_dir, "export")
    versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
    old, new = versions[-1], versions[-1] + 1
    outcome: dict = {}
    load = threading.Thread(target=lambda: outcome.update(measure_concurrent(port, args, args.swap_seconds)))
    load.start()
    time.sleep(3.0 + args.swap_after_seconds)
    swap_started = time.monotonic()
    staging = os.path.join(base, f".staging-{new}")
    shutil.rmtree(staging, ignore_errors=True)
    link_copy(os.path.join(base, str(old)), staging)
    os.rename(staging, os.path.join(base, str(new)))
    served = unloaded = None
    while load.is_alive() or unloaded is None:
        states = _model_versions(port)
        now = time.monotonic() - swap_started
        if served is None and states.get(str(new)) == "AVAILABLE":
            served = now
        if served is not None and unloaded is None and states.get(str(old)) in (None, "END"):
            unloaded = now
        if not load.is_alive() and (unloaded is not None or now > args.swap_seconds + 600):
            break
        time.sleep(0.2)
    load.join()
    return {"old_version": old, "new_version": new, "new_version_available_after_s": served,
            "old_version_unloaded_after_s": unloaded, "failed_requests": sum(outcome.get("errors", {}).values()),
            "load": outcome, "server_peak_rss_bytes_during_swap": sampler.peak(swap_started),
            "load_average": load_average()}


def serve_stages(args: argparse.Namespace, store: ResultStore) -> None:
    """Stages 3-7 against one server process."""
    from benchmarks.serving_load import start_server, wait_ready

    config = os.path.join(args.output_dir, "models.config")
    with open(config, "w") as f:
        f.write(f'model_config_list {{ config {{ name: "{MODEL}" '
                f'base_path: "{os.path.abspath(os.path.join(args.output_dir, "export"))}" }} }}\n')
    started = time.perf_counter()
    process = start_server(config, args.port, args.rest_api_port,
                           args.server_flags.split() + ["--file_system_poll_wait_seconds=1"],
                           os.path.join(args.output_dir, "server.log"))
    sampler = _RssSampler(process.pid)
    sampler.start()
    try:
        wait_ready(f"http://127.0.0.1:{args.rest_api_port}", [MODEL], process, timeout=3600)
        store.put("load", {"server_start_to_available_seconds": time.perf_counter() - started,
                           "server_rss_bytes_after_load": tree_rss(process.pid), "load_average": load_average()})
        for name, stage in (("recall", lambda: measure_recall(args.rest_api_port, args)),
                            ("latency", lambda: measure_latency(args.rest_api_port, args)),
                            ("concurrent", lambda: measure_concurrent(args.rest_api_port, args, args.seconds)),
                            ("hot_swap", lambda: measure_hot_swap(args.rest_api_port, args, sampler))):
            logger.info("stage %s (load average %s)", name, load_average())
            store.put(name, stage())
        store.put("server", {"peak_rss_bytes": sampler.peak(), "rss_bytes_at_end": tree_rss(process.pid)})
    finally:
        sampler.stop()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except Exception:  # noqa: BLE001 - a server that does not stop is killed
            process.kill()


def markdown(results: dict) -> str:
    gib = 2 ** 30
    lines = ["| measurement | value |", "|---|---|"]
    if "export" in results:
        e = results["export"]
        lines += [f"| index build (2 cores) | {e['index_seconds']:.0f} s |",
                  f"| export: save / size | {e['save_seconds']:.0f} s / {e['export_bytes'] / gib:.2f} GiB |",
                  f"| export process: wall / peak RSS | {e['wall_seconds']:.0f} s / {e['peak_rss_bytes'] / gib:.2f} GiB |"]
    if "load" in results:
        lines += [f"| server start to AVAILABLE | {results['load']['server_start_to_available_seconds']:.0f} s |",
                  f"| server RSS after load | {results['load']['server_rss_bytes_after_load'] / gib:.2f} GiB |"]
    if "recall" in results:
        r = results["recall"]
        lines += [f"| recall@{r['k']} through the server (search signature) | {r['recall_at_k']:.4f} |",
                  f"| batch-1 search latency p50 / p99 | {r['latency_ms']['p50']:.2f} / {r['latency_ms']['p99']:.2f} ms |"]
    if "latency" in results:
        r = results["latency"]["latency_ms"]
        lines.append(f"| batch-1 serving_default latency p50 / p99 | {r['p50']:.2f} / {r['p99']:.2f} ms |")
    if "concurrent" in results and results["concurrent"].get("requests"):
        c = results["concurrent"]
        lines.append(f"| concurrent serving_default: q/s, p50 / p99, errors | {c['qps']:.0f}, "
                     f"{c['latency_ms']['p50']} / {c['latency_ms']['p99']} ms, {sum(c['errors'].values())} |")
    if "hot_swap" in results:
        h = results["hot_swap"]
        lines += [f"| hot swap: failed requests | {h['failed_requests']} |",
                  f"| hot swap: new version serving / old unloaded after | {h['new_version_available_after_s']} / "
                  f"{h['old_version_unloaded_after_s']} s |",
                  f"| hot swap: server peak RSS | {h['server_peak_rss_bytes_during_swap'] / gib:.2f} GiB |"]
    if "server" in results:
        lines.append(f"| server peak RSS (whole session) | {results['server']['peak_rss_bytes'] / gib:.2f} GiB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output_dir", default="runs/scann_serving", help="data, export, logs and results")
    parser.add_argument("--num_items", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=64, help="vector width")
    parser.add_argument("--num_queries", type=int, default=1000, help="queries of the recall measurement")
    parser.add_argument("--k", type=int, default=10, help="items returned (fixed at export) and recall@k")
    parser.add_argument("--num_topics", type=int, default=100, help="data: top-level clusters")
    parser.add_argument("--subtopics_per_topic", type=int, default=20, help="data: clusters per topic")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--num_leaves", type=int, default=4000, help="ScaNN partitions")
    parser.add_argument("--leaves_to_search", type=int, default=100, help="ScaNN partitions searched per query")
    parser.add_argument("--reorder", type=int, default=500, help="ScaNN candidates re-scored exactly")
    parser.add_argument("--history_buckets", type=int, default=100_000, help="rows of the hashed history table")
    parser.add_argument("--port", type=int, default=8610, help="server gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=8611, help="server REST port")
    parser.add_argument("--server_flags", default="--batching_parameters_file=serving/config/batching.config",
                        help="extra flags of `python -m serving serve`")
    parser.add_argument("--latency_requests", type=int, default=2000, help="batch-1 serving_default requests")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the load and hot-swap stages")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the concurrent stage")
    parser.add_argument("--swap_seconds", type=float, default=120.0, help="duration of the load during the hot swap")
    parser.add_argument("--swap_after_seconds", type=float, default=10.0, help="new version this long into the load")
    parser.add_argument("--stage", choices=("data", "export"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.num_items < args.num_leaves or args.k < 1 or args.num_queries < 11:
        parser.error("need --num_items >= --num_leaves, --k >= 1 and --num_queries > 10")
    os.makedirs(args.output_dir, exist_ok=True)
    if args.stage:  # a child process of this script
        result = make_data(args) if args.stage == "data" else make_export(args)
        print(json.dumps(result))
        return 0
    store = ResultStore(os.path.join(args.output_dir, "scann_serving.json"),
                        {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "config": vars(args)})
    child = [sys.executable, "-m", "benchmarks.scann_serving", *(argv if argv is not None else sys.argv[1:])]
    for stage in ("data", "export"):
        if stage in store:
            continue
        if stage == "export":
            shutil.rmtree(os.path.join(args.output_dir, "export"), ignore_errors=True)
        log = os.path.join(args.output_dir, f"{stage}.log")
        outside = measure(child + ["--stage", stage], log)
        with open(log) as f:
            outside.update(json.loads(f.read().strip().splitlines()[-1]))
        if stage == "export":
            outside["export_bytes"] = directory_bytes(outside["version_dir"])
        store.put(stage, outside)
        logger.info("%s: %s", stage, json.dumps(outside))
    if any(s not in store for s in ("load", "recall", "latency", "concurrent", "hot_swap", "server")):
        versions = [v for v in os.listdir(os.path.join(args.output_dir, "export")) if v.isdigit() and v != "1"]
        for version in versions:  # versions of an interrupted hot swap
            shutil.rmtree(os.path.join(args.output_dir, "export", version))
        serve_stages(args, store)
    print(markdown(store.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
