"""Training on 1 vs 2 local workers with MultiWorkerMirroredStrategy: examples/s, in one benchmark run.

    python -m benchmarks.multi_worker --features runs/lt/features --output_dir runs/multi_worker \\
        --preset synthetic --set train.epochs=1 --set train.train_fraction=0.2

Runs ``python -m recsys_ssl train`` (same features, config and global batch) as:

- ``single``: one process, the default strategy;
- ``mwms_1``: one process under ``--strategy multi_worker_mirrored`` (a one-worker ``TF_CONFIG``):
  the strategy's own overhead;
- ``mwms_2``: two local worker processes (``TF_CONFIG`` with two ``127.0.0.1`` ports), each
  computing half of every global batch and all-reducing gradients (gRPC, ring collectives) -
  the simulation of two machines on one. On a 2-core machine the two workers share the cores, so
  this measures the communication and synchronisation cost of data parallelism, not a speed-up
  from extra hardware.

For each: the median step time of the chief (``train_summary.json``; the first steps, which trace,
are left out) and examples/s = global batch / median step, wall time, CPU seconds and peak RSS of
the whole process tree, load average. ``--threads_per_worker`` sets ``TF_NUM_INTRAOP_THREADS`` /
``TF_NUM_INTEROP_THREADS`` of every worker (default: TensorFlow's choice, 2 per process on this
machine: 2 workers oversubscribe 2 cores). Results go to ``OUTPUT_DIR/multi_worker.json`` after
each run; re-running skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.measure import ResultStore, load_average, tree_rss
from core.net import free_port

RUNS = ("single", "mwms_1", "mwms_2")


def _train_command(args: argparse.Namespace, workdir: str, strategy: str) -> list[str]:
    command = [sys.executable, "-m", "recsys_ssl", "train", "--features", args.features, "--workdir", workdir,
               "--preset", args.preset, "--strategy", strategy]
    for override in args.set:
        command += ["--set", override]
    return command


def run_workers(commands_and_envs: list[tuple[list[str], dict]], log_prefix: str, timeout: float) -> dict:
    """Starts the processes together, waits for all; wall time, CPU and peak RSS summed over their trees."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load_average()
    started = time.perf_counter()
    processes = []
    for index, (command, env) in enumerate(commands_and_envs):
        log = open(f"{log_prefix}.{index}.log", "w")
        processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    peak = 0
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p, _ in processes):
        peak = max(peak, sum(tree_rss(p.pid) for p, _ in processes if p.poll() is None))
        if time.monotonic() > deadline:
            for p, _ in processes:
                p.kill()
            raise TimeoutError(f"workers did not finish in {timeout}s; see {log_prefix}.*.log")
        time.sleep(0.2)
    wall = time.perf_counter() - started
    for _, log in processes:
        log.close()
    codes = [p.returncode for p, _ in processes]
    if any(codes):
        raise RuntimeError(f"worker exit codes {codes}; see {log_prefix}.*.log")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_seconds": wall, "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_bytes": peak, "load_average_before": load_before, "load_average_after": load_average()}


def run(name: str, args: argparse.Namespace) -> dict:
    workdir = os.path.join(args.output_dir, name)
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ)
    if args.threads_per_worker:
        env.update(TF_NUM_INTRAOP_THREADS=str(args.threads_per_worker),
                   TF_NUM_INTEROP_THREADS=str(args.threads_per_worker))
    if name == "single":
        jobs = [(_train_command(args, workdir, "default"), env)]
    else:
        workers = int(name.split("_")[1])
        cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
        jobs = [(_train_command(args, workdir, "multi_worker_mirrored"),
                 dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
                for i in range(workers)]
    result = run_workers(jobs, os.path.join(args.output_dir, name), args.timeout_seconds)
    with open(os.path.join(workdir, "train_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        batch_size = json.load(f)["train"]["batch_size"]
    result.update(workers=len(jobs), global_batch=batch_size, global_steps=summary["global_steps"],
                  median_step_seconds=summary["median_step_seconds"],
                  examples_per_second=batch_size / summary["median_step_seconds"],
                  train_wall_seconds=summary["wall_time_s"])
    return result


def markdown(document: dict) -> str:
    lines = ["| run | workers | global batch | steps | median step ms | examples/s | wall s | CPU s | peak RSS GiB | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in document["results"].items():
        lines.append(f"| {name} | {r['workers']} | {r['global_batch']} | {r['global_steps']} | "
                     f"{1000 * r['median_step_seconds']:.1f} | {r['examples_per_second']:,.0f} | {r['wall_seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {r['peak_rss_bytes'] / 2 ** 30:.2f} | "
                     f"{r['load_average_before'][0]} -> {r['load_average_after'][0]} |")
    if document.get("ratios"):
        lines.append(f"\nratios: {json.dumps(document['ratios'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--features", required=True, help="a feature directory (python -m pipelines features)")
    parser.add_argument("--output_dir", default="runs/multi_worker", help="workdirs, logs and results go here")
    parser.add_argument("--preset", default="synthetic", help="recsys_ssl config preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of every run (repeatable), e.g. train.train_fraction=0.2")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--threads_per_worker", type=int, default=0,
                        help="TF intra-/inter-op threads per process (0: TensorFlow's default)")
    parser.add_argument("--timeout_seconds", type=float, default=6 * 3600, help="per run")
    args = parser.parse_args(argv)
    runs = args.runs.split(",")
    if any(r not in RUNS for r in runs) or not os.path.isdir(args.features):
        parser.error(f"--runs must be of {RUNS} (received {runs}) and --features an existing directory")
    os.makedirs(args.output_dir, exist_ok=True)
    store = ResultStore(os.path.join(args.output_dir, "multi_worker.json"),
                        {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    for name in runs:
        if name not in store:
            store.put(name, run(name, args))
    speeds = {n: r["examples_per_second"] for n, r in store.results.items()}
    store.document["ratios"] = {f"{n}_over_single": v / speeds["single"] for n, v in speeds.items()
                                if "single" in speeds and n != "single"}
    store.save()
    print(markdown(store.document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
