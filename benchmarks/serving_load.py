"""Load test of the server's REST predict: N concurrent clients for T seconds per model.

Stand-ins (until the real exports exist; builds a ScaNN retrieval model over 100k random unit item
vectors with k=100 and the OoD stand-in, then serves them)::

    python -m benchmarks.serving_load --build_standins runs/benchmarks/standins

Real exports (the project's models.config; the kind of each model picks its request generator)::

    python -m benchmarks.serving_load --model_config_file serving/config/models.config \\
        --models retrieval_scann:retrieval,ood:ood --history_vocab FEATURES_DIR/vocab/item_id.txt \\
        --texts_file texts.txt

Against a server that is already running, add ``--server_url http://127.0.0.1:8501``.

Per model: queries/s, latency p50/p90/p99 seen by the clients, errors, and the server's own
overhead = client latency minus the model call (the server reports each request's model-call
time in its ``Server-Timing`` header). The clients run on the same machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np


logger = logging.getLogger("serving_load")

DEFAULT_TEXTS = [
    "what is my account balance", "transfer 200 dollars to savings", "how do i reset my pin",
    "book a table for two tonight at 7", "what's the weather going to be tomorrow",
    "play some jazz music", "set an alarm for six thirty am", "how many calories are in an apple",
    "who won the world cup in 1998", "translate good morning into french", "zxqv blorp fnord",
    "tell me a joke about penguins", "what is the capital of australia", "cancel my last order",
]


def retrieval_bodies(num: int, vocab: list[str], max_history: int, rng: random.Random) -> list[bytes]:
    """Row-format bodies: one user with 0..max_history history items (padded with "" per request)."""
    bodies = []
    for _ in range(num):
        history = rng.sample(vocab, rng.randint(0, max_history)) or [""]
        bodies.append(json.dumps({"instances": [{"user_id": f"user{rng.randrange(100_000)}",
                                                 "history": history}]}).encode())
    return bodies


def ood_bodies(num: int, texts: list[str], rng: random.Random) -> list[bytes]:
    return [json.dumps({"instances": [rng.choice(texts)]}).encode() for _ in range(num)]


async def run_load(url: str, bodies: list[bytes], clients: int, seconds: float, warmup: float) -> dict:
    """``clients`` closed-loop clients POSTing random bodies; returns the measurements after warm-up."""
    import aiohttp

    latencies, model_ms, batch_rows, errors = [], [], [], {}
    deadline_warm = time.perf_counter() + warmup
    deadline = deadline_warm + seconds
    rng = random.Random(0)

    async def client(session):
        while time.perf_counter() < deadline:
            body = bodies[rng.randrange(len(bodies))]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    payload = await response.read()
                    timing = response.headers.get("Server-Timing", "")
                    status = response.status
            except Exception as error:  # noqa: BLE001 - every failure is counted.
                status, payload, timing = type(error).__name__, b"", ""
            elapsed = time.perf_counter() - started
            if started < deadline_warm:
                continue
            if status != 200 or b'"predictions"' not in payload:
                errors[str(status)] = errors.get(str(status), 0) + 1
                continue
            latencies.append(elapsed * 1e3)
            parts = dict(p.strip().split(";", 1) for p in timing.split(",") if ";" in p)
            model_ms.append(float(parts["model"].split("=")[1]))
            batch_rows.append(int(parts["batch"].split('"')[1].split()[0]))

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    lat, mod = np.asarray(latencies), np.asarray(model_ms)
    if not len(lat):
        return {"requests": 0, "errors": errors}
    overhead = lat - mod
    pct = lambda a: {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)} | {"mean": round(float(a.mean()), 2)}
    return {"requests": len(lat), "qps": len(lat) / seconds, "errors": errors, "latency_ms": pct(lat),
            "model_ms": pct(mod), "overhead_ms": pct(overhead), "mean_batch_rows": float(np.mean(batch_rows))}


def build_standins(root: str, num_items: int, k: int) -> str:
    import serving  # noqa: F401
    from serving import standins

    retrieval_dir, ood_dir = os.path.join(root, "retrieval_scann"), os.path.join(root, "ood")
    if not os.path.isdir(retrieval_dir):
        standins.export_retrieval(retrieval_dir, index="scann", num_items=num_items, embedding_dim=64, k=k,
                                  num_leaves=300, num_leaves_to_search=30, num_reordering_candidates=500)
    if not os.path.isdir(ood_dir):
        standins.export_ood(ood_dir, DEFAULT_TEXTS[:10])
    config = os.path.join(root, "models.config")
    with open(config, "w") as f:
        f.write("model_config_list {\n"
                f'  config {{ name: "retrieval_scann" base_path: "{os.path.abspath(retrieval_dir)}" }}\n'
                f'  config {{ name: "ood" base_path: "{os.path.abspath(ood_dir)}" }}\n}}\n')
    return config


def start_server(config: str, port: int, rest_port: int, extra: list[str], log_path: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving", "serve", f"--model_config_file={config}", f"--port={port}",
               f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=30", *extra]
    logger.info("starting: %s", " ".join(command))
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def wait_ready(url: str, models: list[str], process: subprocess.Popen | None, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    for name in models:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models/{name}", timeout=5) as response:
                    if any(s["state"] == "AVAILABLE" for s in json.load(response)["model_version_status"]):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name} not available after {timeout}s")
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--build_standins", metavar="DIR", help="build and serve the stand-in exports in DIR")
    source.add_argument("--model_config_file", help="serve these models (text-format ModelServerConfig)")
    parser.add_argument("--models", default="retrieval_scann:retrieval,ood:ood",
                        help="comma-separated NAME:KIND (kind: retrieval or ood) to load-test, in order")
    parser.add_argument("--server_url", help="use this running server instead of starting one")
    parser.add_argument("--server_flags", default="--batching_parameters_file=serving/config/batching.config",
                        help="extra flags for the server this script starts")
    parser.add_argument("--port", type=int, default=8600, help="gRPC port of the server under test")
    parser.add_argument("--rest_api_port", type=int, default=8601, help="REST port of the server under test")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds of load")
    parser.add_argument("--warmup_seconds", type=float, default=3.0, help="unmeasured seconds before the measurement")
    parser.add_argument("--num_items", type=int, default=100_000, help="stand-in catalogue size")
    parser.add_argument("--k", type=int, default=100, help="stand-in retrieval k")
    parser.add_argument("--history_vocab", help="item ids, one per line (default: the stand-in's item0..)")
    parser.add_argument("--max_history", type=int, default=20, help="history items per request at most")
    parser.add_argument("--texts_file", help="texts for the OoD requests, one per line")
    parser.add_argument("--output_json", default="runs/benchmarks/serving_load.json", help="JSON file of every number (the server log goes beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = random.Random(0)
    config = build_standins(args.build_standins, args.num_items, args.k) if args.build_standins else args.model_config_file
    if args.history_vocab:
        with open(args.history_vocab) as f:
            vocab = [line.strip() for line in f if line.strip()]
    else:
        vocab = [f"item{i}" for i in range(args.num_items)]
    texts = DEFAULT_TEXTS
    if args.texts_file:
        with open(args.texts_file) as f:
            texts = [line.strip() for line in f if line.strip()]
    models = [tuple(spec.split(":")) for spec in args.models.split(",")]
    url = args.server_url or f"http://127.0.0.1:{args.rest_api_port}"
    process = None
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    if not args.server_url:
        log_path = os.path.splitext(args.output_json)[0] + ".server.log"
        process = start_server(config, args.port, args.rest_api_port, args.server_flags.split(), log_path)
    results = {"config": vars(args), "models": {}}
    try:
        wait_ready(url, [name for name, _ in models], process)
        for name, kind in models:
            bodies = (retrieval_bodies(2000, vocab, args.max_history, rng) if kind == "retrieval"
                      else ood_bodies(2000, texts, rng))
            logger.info("load-testing %s (%s): %d clients for %.0fs", name, kind, args.clients, args.seconds)
            result = asyncio.run(run_load(f"{url}/v1/models/{name}:predict", bodies, args.clients,
                                          args.seconds, args.warmup_seconds))
            results["models"][name] = result
            logger.info("%s: %s", name, json.dumps(result))
        import urllib.request

        with urllib.request.urlopen(f"{url}/monitoring/stats", timeout=10) as response:
            results["server_stats"] = json.load(response)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    with open(args.output_json, "w") as f:
        json.dump(results, f, indent=1)
    print("| model | clients | q/s | p50 ms | p90 ms | p99 ms | errors | model call p50 / p99 ms | "
          "server overhead p50 / p99 ms | mean rows per model call |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        if not r.get("requests"):
            print(f"| {name} | {args.clients} | 0 | | | | {r['errors']} | | | |")
            continue
        print(f"| {name} | {args.clients} | {r['qps']:.0f} | {r['latency_ms']['p50']} | {r['latency_ms']['p90']} | "
              f"{r['latency_ms']['p99']} | {sum(r['errors'].values())} | {r['model_ms']['p50']} / {r['model_ms']['p99']} | "
              f"{r['overhead_ms']['p50']} / {r['overhead_ms']['p99']} | {r['mean_batch_rows']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
