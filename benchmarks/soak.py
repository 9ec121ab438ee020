"""Soak test: mixed good and bad traffic against one server for N minutes (issue 23's "done when").

Serves a retrieval export and an OoD export (``--retrieval_export`` / ``--ood_export``: a base
directory with versions, or one version directory; default: the stand-ins of
:mod:`serving.standins`) and, until the time is up, runs at once:

- good clients: REST and gRPC predict on both models, every answer checked (status, outputs);
- bad clients: malformed / deep / huge-int JSON, unknown models, an 8 MB signature name, texts
  over the model's limit, too many rows, 15.7 MiB bodies, gRPC shape bombs and 4M-string
  requests, Classify / Regress / MultiInference;
- held connections: slowloris REST heads, idle REST connections from one address (over the
  per-client cap), idle raw TCP connections to the gRPC port, clients that never read their
  (7 MB) responses;
- hot swaps: a new version of each model copied in (atomically) every ``--swap_seconds``; old
  versions are deleted, so the disk stays bounded.

Every minute it appends one line to ``OUTPUT_DIR/minutes.jsonl``: requests by kind and outcome,
good-request failures (with the first few reasons), server RSS / descriptors / threads / log size
and the load average. A run that stops early keeps its finished minutes; running the same
command again resumes until ``--minutes`` are done (a new server per run). ``summary.json``
aggregates all minutes. Every loop is bounded (fixed client counts, sleeps, timeouts) and the
server is always stopped at the end::

    nice -n 10 .venv/bin/python -m benchmarks.soak --output_dir runs/soak --minutes 10

Not a test: it runs for minutes and its numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request


logger = logging.getLogger("soak")
TEXTS = ["what is my account balance", "transfer money to savings", "book a table for two", "play jazz",
         "zxqv blorp fnord", "how do i reset my pin", "what's the weather tomorrow", "cancel my order"]
MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
CONFIG = """model_config_list {{
  config {{ name: "retrieval" base_path: "{root}/retrieval" model_platform: "tensorflow" }}
  config {{ name: "ood" base_path: "{root}/ood" model_platform: "tensorflow" }}
}}
"""


class Tally:
    """Thread-safe counters of (client kind, outcome), and the first reasons of good failures."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.failures: list[str] = []

    def add(self, kind: str, outcome: str, failure: str | None = None) -> None:
        with self._lock:
            self.counts[(kind, outcome)] += 1
            if failure is not None and len(self.failures) < 20:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {failure[:300]}")

    def take(self) -> tuple[dict, list[str]]:
        with self._lock:
            counts, failures = dict(self.counts), list(self.failures)
            self.counts.clear()
            self.failures.clear()
        return {f"{k}|{o}": n for (k, o), n in sorted(counts.items())}, failures


def version_source(path: str) -> str:
    """A version directory: ``path`` itself if it holds a SavedModel, else its newest version."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(int(n) for n in os.listdir(path) if n.isdigit())
    return os.path.join(path, str(versions[-1]))


def prepare_models(root: str, retrieval: str | None, ood: str | None) -> dict[str, str]:
    """Base paths ``root/{retrieval,ood}/1`` from the given exports (stand-ins when None)."""
    sources = {}
    for name, given in (("retrieval", retrieval), ("ood", ood)):
        staging = os.path.join(root, "staging", name)
        if given is None and not os.path.isdir(staging):
            from serving import standins
            from serving.export import write_serving_limits

            if name == "retrieval":
                standins.export_retrieval(staging, index="scann", num_items=10_000, k=100, num_leaves=100, version=1)
            else:
                write_serving_limits(standins.export_ood(staging, version=1), 100_000)
        sources[name] = version_source(given) if given else os.path.join(staging, "1")
        base = os.path.join(root, name)
        if os.path.isdir(base):
            shutil.rmtree(base)
        shutil.copytree(sources[name], os.path.join(base, "1"))
    return sources


def hot_swap(root: str, sources: dict[str, str], stop: threading.Event, every: float, tally: Tally) -> None:
    """Copies a new version of one model (alternating) in every ``every`` s, atomically (copy to a
    hidden dir, rename); deletes all but the two newest versions."""
    for name in itertools.cycle(sources):
        if stop.wait(every):
            return
        base = os.path.join(root, name)
        versions = sorted(int(n) for n in os.listdir(base) if n.isdigit())
        tmp = os.path.join(base, f".tmp-soak-{versions[-1] + 1}")
        shutil.copytree(sources[name], tmp)
        os.rename(tmp, os.path.join(base, str(versions[-1] + 1)))
        for old in versions[:-1]:
            shutil.rmtree(os.path.join(base, str(old)), ignore_errors=True)
        tally.add("hot_swap", name)


class Requests:
    """Good requests for each model, built from its served signature (REST JSON and gRPC)."""

    def __init__(self, rest_url: str):
        self.inputs = {}
        for model in ("retrieval", "ood"):
            with urllib.request.urlopen(f"{rest_url}/v1/models/{model}/metadata", timeout=30) as response:
                signature = json.load(response)["metadata"]["signature_def"]["signature_def"]["serving_default"]
            self.inputs[model] = {name: len(info["tensor_shape"].get("dim", []))
                                  for name, info in signature["inputs"].items()}

    def values(self, model: str, rng: random.Random) -> dict:
        out = {}
        for name, rank in self.inputs[model].items():
            if model == "ood":
                out[name] = rng.choice(TEXTS)
            else:
                value = f"{name}{rng.randrange(1000)}"
                out[name] = [value, f"item{rng.randrange(500)}", ""] if rank >= 2 else value
        return out

    def rest_body(self, model: str, rng: random.Random) -> bytes:
        return json.dumps({"instances": [self.values(model, rng)]}).encode()

    def grpc_request(self, model: str, rng: random.Random):
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        for name, value in self.values(model, rng).items():
            array = np.array([[v.encode() for v in value]] if isinstance(value, list) else [value.encode()], dtype=object)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        return request


def post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def good_rest(server, requests: Requests, model: str, stop, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            status, body = post(f"{server['rest']}/v1/models/{model}:predict", requests.rest_body(model, rng), 30)
            predictions = json.loads(body).get("predictions") if status == 200 else None
            if status == 200 and isinstance(predictions, list) and len(predictions) == 1:
                tally.add(f"good_rest_{model}", "ok")
            else:
                tally.add(f"good_rest_{model}", "FAILED", f"HTTP {status}: {body[:200]!r}")
        except Exception as error:  # noqa: BLE001 - every failure of a good request is counted.
            tally.add(f"good_rest_{model}", "FAILED", f"{type(error).__name__}: {error}")
        stop.wait(0.05)


def good_grpc(server, requests: Requests, model: str, stop, tally: Tally, seed: int) -> None:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    rng = random.Random(seed)
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                response = stub.Predict(requests.grpc_request(model, rng), timeout=30)
                ok = all(o.tensor_shape.dim[0].size == 1 for o in response.outputs.values())
                tally.add(f"good_grpc_{model}", "ok" if ok else "FAILED", None if ok else "wrong output shape")
            except Exception as error:  # noqa: BLE001
                tally.add(f"good_grpc_{model}", "FAILED", f"{type(error).__name__}: {error}")
            stop.wait(0.05)


def bad_rest(server, stop, tally: Tally) -> None:
    """Malformed and oversized REST requests; every answer must be a 4xx or 503 JSON error."""
    huge_name = "s" * (8 * 2**20)
    payloads = [
        ("ood", b"{not json"), ("ood", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("ood", b'{"instances": [' + b"1" * 4301 + b"]}"), ("nope", b'{"instances": ["x"]}'),
        ("ood", json.dumps({"instances": ["a" * 200_000]}).encode()),  # Over the text limit.
        ("ood", json.dumps({"instances": [1, 2]}).encode()),  # Wrong dtype.
        ("ood", json.dumps({"instances": ["x"] * 20_000}).encode()),  # Over the row cap.
        ("ood", json.dumps({"signature_name": huge_name, "instances": ["x"]}).encode()),
        ("ood", json.dumps({"instances": ["abcdefghijklmnopqrstuvwxyz"] * 550_000}).encode()),  # 15.7 MiB.
    ]
    for index in itertools.count():
        model, body = payloads[index % len(payloads)]
        try:
            status, answer = post(f"{server['rest']}/v1/models/{model}:predict", body, 60)
            json.loads(answer)["error"]
            tally.add("bad_rest", str(status) if 400 <= status < 500 or status == 503 else f"UNEXPECTED_{status}")
        except Exception as error:  # noqa: BLE001
            tally.add("bad_rest", f"client_error_{type(error).__name__}")
        if stop.wait(0.5):
            return


def bad_grpc(server, stop, tally: Tally) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import (
        classification_pb2, inference_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2,
    )

    def bomb(size: int, values: int):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ood"
        proto = request.inputs["text"]
        proto.dtype = tf.string.as_datatype_enum
        proto.tensor_shape.dim.add(size=size)
        proto.string_val.extend(itertools.repeat(b"", values))
        return request

    named = predict_pb2.PredictRequest()
    named.model_spec.name, named.model_spec.signature_name = "ood", "s" * (8 * 2**20)
    named.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"x"], dtype=object)))
    unknown = predict_pb2.PredictRequest()
    unknown.model_spec.name = "nope"
    with grpc.insecure_channel(server["grpc"], options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = [(stub.Predict, bomb(2**27, 1)), (stub.Predict, bomb(4_000_000, 4_000_000)), (stub.Predict, named),
                 (stub.Predict, unknown), (stub.Classify, classification_pb2.ClassificationRequest()),
                 (stub.Regress, regression_pb2.RegressionRequest()),
                 (stub.MultiInference, inference_pb2.MultiInferenceRequest())]
        for index in itertools.count():
            call, request = calls[index % len(calls)]
            try:
                call(request, timeout=60)
                tally.add("bad_grpc", "UNEXPECTED_OK")
            except grpc.RpcError as error:
                tally.add("bad_grpc", error.code().name)
            if stop.wait(0.5):
                return


def held_connections(server, stop, tally: Tally, kind: str, count: int, source: str, port_key: str,
                     payload: bytes, hold: float) -> None:
    """Opens ``count`` connections from ``source``, sends ``payload`` (one byte per second for a
    slowloris), holds them ``hold`` s, closes them, and repeats."""
    host, port = server[port_key]
    while not stop.is_set():
        sockets = []
        for _ in range(count):
            try:
                sock = socket.socket()
                sock.settimeout(2)
                sock.bind((source, 0))
                sock.connect((host, port))
                sock.sendall(payload)
                sockets.append(sock)
            except OSError:
                sock.close()
                tally.add(kind, "connect_failed")
        tally.add(kind, "opened", None)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline and not stop.is_set():
            stop.wait(1.0)
            if kind == "slowloris":
                for sock in sockets:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass
        for sock in sockets:
            sock.close()


def non_reader(server, requests: Requests, stop, tally: Tally) -> None:
    """Three clients send 3,200-row retrieval requests (~7 MB answers) and read nothing for 30 s."""
    rng = random.Random(7)
    body = json.dumps({"instances": [requests.values("retrieval", rng) for _ in range(3200)]}).encode()
    head = (f"POST /v1/models/retrieval:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    host, port = server["rest_address"]
    while not stop.is_set():
        sockets = []
        for _ in range(3):
            try:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(10)
                sock.connect((host, port))
                sock.sendall(head + body)
                sockets.append(sock)
            except OSError as error:
                tally.add("non_reader", f"send_failed_{type(error).__name__}")
        stop.wait(30)
        for sock in sockets:
            sock.close()
        tally.add("non_reader", "cycle")


def sample(pid: int, log_path: str) -> dict:
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    names: collections.Counter = collections.Counter()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass  # The thread ended meanwhile.
    return {"rss_mib": round(int(status["VmRSS"].split()[0]) / 1024, 1), "threads": int(status["Threads"]),
            "thread_names": dict(names), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "log_bytes": os.path.getsize(log_path), "loadavg": open("/proc/loadavg").read().split()[:3]}


def start_server(root: str, out: str, flags: list[str]) -> tuple[subprocess.Popen, dict, str]:
    from core.net import free_port

    grpc_port, rest_port = free_port(), free_port()
    config = os.path.join(out, "models.config")
    with open(config, "w") as f:
        f.write(CONFIG.format(root=os.path.abspath(root)))
    monitoring = os.path.join(out, "monitoring.config")
    with open(monitoring, "w") as f:
        f.write(MONITORING)
    log_path = os.path.join(out, f"server-{int(time.time())}.log")
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "serve", f"--model_config_file={config}", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", f"--monitoring_config_file={monitoring}",
         "--file_system_poll_wait_seconds=1", *flags], stdout=log, stderr=subprocess.STDOUT)
    server = {"rest": f"http://127.0.0.1:{rest_port}", "grpc": f"127.0.0.1:{grpc_port}",
              "rest_address": ("127.0.0.1", rest_port), "grpc_address": ("127.0.0.1", grpc_port)}
    from benchmarks.serving_load import wait_ready

    wait_ready(server["rest"], ["retrieval", "ood"], process, timeout=300)
    return process, server, log_path


def stop_server(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def summarize(minutes: list[dict]) -> dict:
    totals: collections.Counter = collections.Counter()
    for minute in minutes:
        totals.update(minute["counts"])
    good = {k: v for k, v in totals.items() if k.startswith("good_")}
    rss = [m["server"]["rss_mib"] for m in minutes]
    return {
        "minutes": len(minutes), "good_requests": sum(v for k, v in good.items() if k.endswith("|ok")),
        "good_failed": sum(v for k, v in good.items() if k.endswith("|FAILED")),
        "counts": dict(sorted(totals.items())),
        "rss_mib_first_last_max": [rss[0], rss[-1], max(rss)] if rss else None,
        "log_bytes_per_minute": [m["log_growth_bytes"] for m in minutes],
        "fds_max": max((m["server"]["fds"] for m in minutes), default=None),
        "failures": [f for m in minutes for f in m["failures"]][:20],
        "loadavg": [m["server"]["loadavg"] for m in minutes],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output_dir", required=True, help="where the soak's logs and result.json go")
    parser.add_argument("--minutes", type=int, default=10, help="total soak minutes (resumes finished ones)")
    parser.add_argument("--retrieval_export", default=None, help="retrieval export (default: ScaNN stand-in)")
    parser.add_argument("--ood_export", default=None, help="OoD export (default: stand-in)")
    parser.add_argument("--swap_seconds", type=float, default=30.0, help="seconds between hot swaps")
    parser.add_argument("--server_flag", action="append", default=[], help="extra server flag (repeatable)")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error(f"--minutes must be >= 1, received {args.minutes}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.makedirs(args.output_dir, exist_ok=True)
    minutes_path = os.path.join(args.output_dir, "minutes.jsonl")
    done = [json.loads(line) for line in open(minutes_path)] if os.path.isfile(minutes_path) else []
    if len(done) >= args.minutes:
        logger.info("%d minutes already done", len(done))
    else:
        run(args, done, minutes_path)
        done = [json.loads(line) for line in open(minutes_path)]
    summary = summarize(done)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logger.info("summary: %s", json.dumps({k: summary[k] for k in ("minutes", "good_requests", "good_failed",
                                                                    "rss_mib_first_last_max", "fds_max")}))
    return 0 if summary["good_failed"] == 0 else 1


def run(args, done: list[dict], minutes_path: str) -> None:
    root = os.path.join(args.output_dir, "models")
    sources = prepare_models(root, args.retrieval_export, args.ood_export)
    process, server, log_path = start_server(root, args.output_dir, args.server_flag)
    stop, tally = threading.Event(), Tally()
    threads = []
    try:
        requests = Requests(server["rest"])
        targets = [(good_rest, (server, requests, m, stop, tally, i)) for i, m in enumerate(["retrieval", "ood"] * 2)]
        targets += [(good_grpc, (server, requests, m, stop, tally, 10 + i)) for i, m in enumerate(["retrieval", "ood"])]
        targets += [(bad_rest, (server, stop, tally)), (bad_grpc, (server, stop, tally)),
                    (hot_swap, (root, sources, stop, args.swap_seconds, tally)),
                    (non_reader, (server, requests, stop, tally)),
                    (held_connections, (server, stop, tally, "slowloris", 50, "127.0.0.4", "rest_address",
                                        b"POST /v1/models/ood:predict HTTP/1.1\r\n", 40)),
                    (held_connections, (server, stop, tally, "idle_rest", 300, "127.0.0.3", "rest_address", b"", 20)),
                    (held_connections, (server, stop, tally, "idle_grpc", 600, "127.0.0.5", "grpc_address", b"", 15))]
        for target, target_args in targets:
            thread = threading.Thread(target=target, args=target_args, daemon=True, name=target.__name__)
            thread.start()
            threads.append(thread)
        last_log = os.path.getsize(log_path)
        for minute in range(len(done), args.minutes):
            started = time.time()
            while time.time() - started < 60:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
                time.sleep(1)
            counts, failures = tally.take()
            state = sample(process.pid, log_path)
            record = {"minute": minute + 1, "end": time.strftime("%Y-%m-%d %H:%M:%S"), "counts": counts,
                      "failures": failures, "server": state, "log_growth_bytes": state["log_bytes"] - last_log}
            last_log = state["log_bytes"]
            with open(minutes_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            good = sum(v for k, v in counts.items() if k.startswith("good_") and k.endswith("|ok"))
            bad = sum(v for k, v in counts.items() if k.startswith("good_") and k.endswith("|FAILED"))
            logger.info("minute %d: %d good ok, %d good failed, RSS %.0f MiB, fds %d, log +%d B, load %s",
                        minute + 1, good, bad, state["rss_mib"], state["fds"], record["log_growth_bytes"],
                        state["loadavg"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        code = stop_server(process)
        logger.info("server stopped (exit %s); log %s", code, log_path)


if __name__ == "__main__":
    sys.exit(main())
