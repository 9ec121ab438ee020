"""Item-id tables at 0.1-10M items: memory with optimizer slots (computed vs measured), step time, SSL sampler.

    python -m benchmarks.id_tables --output_dir runs/id_tables --num_items 100000,1000000,10000000

For every catalogue size N and variant, a fresh process (clean RSS) builds an in-memory synthetic
feature set of N items (:mod:`recsys_ssl.synthetic_features`; N / 10 users, long-tail-shaped item
features), the two-tower model (preset ``synthetic``, CFM) and its optimizer's slots, and records:

- RSS after each phase: feature set, model (tables, lookups, corpus), optimizer slots (created,
  then written once: zero pages are not resident until written); beside the computed sizes of
  ``recsys_ssl.memory`` (tables, tables + slots, corpus). Measured slots (written) vs computed
  slots is the check of the formula (both exact-size float32 arrays).
- training step time (median over ``--steps`` steps after warm-up) and examples/s, on batches
  drawn by popularity;
- the SSL batch sampler alone: ``ssl.batch_size`` corpus rows drawn uniformly and their features
  gathered (``stateless_uniform`` + ``gather``), median time per draw;
- peak RSS of the process (sampled from outside) and the load average.

Variants: ``exact_adam`` (the default: one row per item, Keras Adam), ``exact_lazy_adam``,
``exact_adagrad``, ``hashed_lazy_adam`` (``model.item_id_buckets = N * --bucket_fraction``, 2
hashes), ``features_only_lazy_adam`` (no item-id table at all: ``model.item_tower_identifiers=false``,
``model.query_history=item_tower``). Results go to ``OUTPUT_DIR/id_tables.json`` after each run
(re-running skips finished runs), a table to stdout, a plot of step time vs N to ``id_tables.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from benchmarks.measure import ResultStore, load_average, measure

logger = logging.getLogger("id_tables")

VARIANTS = {
    "exact_adam": ("train.optimizer=adam",),
    "exact_lazy_adam": ("train.optimizer=lazy_adam",),
    "exact_adagrad": ("train.optimizer=adagrad",),
    "hashed_lazy_adam": ("train.optimizer=lazy_adam", "model.item_id_hashes=2"),  # + item_id_buckets
    "features_only_lazy_adam": ("train.optimizer=lazy_adam", "model.item_tower_identifiers=false",
                                "model.query_history=item_tower"),
}


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _median_seconds(function, repeats: int) -> float:
    import numpy as np

    times = []
    for i in range(repeats):
        started = time.perf_counter()
        function(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def run_one(num_items: int, variant: str, args: argparse.Namespace) -> dict:
    """One (catalogue size, variant) in this process: the measurements of the module docstring."""
    import recsys_ssl  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from core import config as dataclass_config
    from recsys_ssl import config as config_lib
    from recsys_ssl import memory
    from recsys_ssl.optimizers import make_optimizer
    from recsys_ssl.synthetic_features import synthetic_batches, synthetic_feature_set
    from recsys_ssl.train import make_train_step
    from recsys_ssl.workdir import build_model

    overrides = ["ssl.method=cfm"]
    if variant.startswith("hashed"):
        overrides.append(f"model.item_id_buckets={max(1, int(num_items * args.bucket_fraction))}")
    overrides += [*VARIANTS[variant], *args.set]
    config = dataclass_config.apply_overrides(config_lib.preset(args.preset), overrides)
    result = {"num_items": num_items, "variant": variant, "overrides": overrides, "rss_bytes": {"start": _rss_bytes()}}
    started = time.perf_counter()
    feature_set = synthetic_feature_set(num_items, max(1, num_items // args.items_per_user),
                                        max_values=config.model.max_values, seed=0)
    result["feature_set_seconds"] = time.perf_counter() - started
    result["rss_bytes"]["feature_set"] = _rss_bytes()
    sizes = {name: len(values) for name, values in feature_set.vocabularies.items()}
    result["computed"] = memory.memory_report(feature_set.schema, sizes, config)

    started = time.perf_counter()
    tf.keras.utils.set_random_seed(0)
    model = build_model(feature_set, config)
    result["model_seconds"] = time.perf_counter() - started
    result["rss_bytes"]["model"] = _rss_bytes()
    optimizer = make_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    result["rss_bytes"]["optimizer_slots"] = _rss_bytes()
    # Zero-initialised slots may not be resident until written (Adam writes every row each step,
    # lazy Adam only the rows it meets): write them all once, so RSS counts the full slots.
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))
    result["rss_bytes"]["optimizer_slots_written"] = _rss_bytes()
    trainable = sum(v.shape.num_elements() for v in model.trainable_variables) * memory.BYTES_PER_VALUE
    result["computed_slot_bytes_all_variables"] = trainable * memory.OPTIMIZER_SLOTS[config.train.optimizer]

    batches = synthetic_batches(feature_set, config.train.batch_size, args.steps, seed=1)
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer)
    started = time.perf_counter()
    for i in range(3):
        step(batches[i % len(batches)], tf.constant([9, i], tf.int32))
    result["warmup_seconds"] = time.perf_counter() - started

    def one_step(i):
        float(step(batches[i], tf.constant([0, i], tf.int32))["total"])

    step_seconds = _median_seconds(one_step, args.steps)
    result["median_step_ms"] = 1000 * step_seconds
    result["examples_per_second"] = config.train.batch_size / step_seconds
    ssl_size = config.ssl.batch_size

    @tf.function
    def sample_ssl_batch(seed):
        rows = tf.random.stateless_uniform([ssl_size], seed=seed, minval=0, maxval=model.num_items, dtype=tf.int32)
        return model.corpus_features(rows)

    sample_ssl_batch(tf.constant([0, 0], tf.int32))
    result["median_ssl_sample_ms"] = 1000 * _median_seconds(
        lambda i: [t.numpy() for t in sample_ssl_batch(tf.constant([1, i], tf.int32)).values()], 50)
    result["rss_bytes"]["after_steps"] = _rss_bytes()
    result["load_average"] = load_average()
    return result


def _child_command(num_items: int, variant: str, args: argparse.Namespace, result_file: str) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.id_tables", "--one", f"{num_items}:{variant}",
               "--result_file", result_file, "--preset", args.preset, "--steps", str(args.steps),
               "--bucket_fraction", str(args.bucket_fraction), "--items_per_user", str(args.items_per_user)]
    for override in args.set:
        command += ["--set", override]
    return command


def markdown(results: dict) -> str:
    gib = 2 ** 30
    lines = ["| items | variant | tables + slots computed GiB | slots measured / computed GiB | model RSS delta GiB | "
             "peak RSS GiB | step ms | examples/s | SSL sample ms | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results.values(), key=lambda r: (r["num_items"], r["variant"])):
        if "error" in r:
            lines.append(f"| {r['num_items']:,} | {r['variant']} | failed: {r['error']} | | | | | | | |")
            continue
        rss = r["rss_bytes"]
        slots = rss.get("optimizer_slots_written", rss["optimizer_slots"]) - rss["model"]
        lines.append(
            f"| {r['num_items']:,} | {r['variant']} | {r['computed']['training_bytes'] / gib:.2f} | "
            f"{slots / gib:.2f} / {r['computed_slot_bytes_all_variables'] / gib:.2f} | "
            f"{(rss['model'] - rss['feature_set']) / gib:.2f} | {r['outside']['peak_rss_bytes'] / gib:.2f} | "
            f"{r['median_step_ms']:.1f} | {r['examples_per_second']:,.0f} | {r['median_ssl_sample_ms']:.2f} | "
            f"{r['load_average'][0]:.1f} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (steps, memory_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in VARIANTS:
        points = sorted((r["num_items"], r) for r in results.values() if r["variant"] == variant and "error" not in r)
        if not points:
            continue
        sizes = [n for n, _ in points]
        steps.plot(sizes, [r["median_step_ms"] for _, r in points], "o-", label=variant)
        memory_axis.plot(sizes, [r["outside"]["peak_rss_bytes"] / 2 ** 30 for _, r in points], "o-", label=variant)
    steps.set_title("training step (CFM, batch 512 + SSL 256)")
    steps.set_ylabel("median step ms")
    memory_axis.set_title("peak RSS of the process")
    memory_axis.set_ylabel("GiB")
    for axis in (steps, memory_axis):
        axis.set_xscale("log")
        axis.set_xlabel("catalogue items")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output_dir", default="runs/id_tables", help="results, logs and the plot go here")
    parser.add_argument("--num_items", default="100000,1000000",
                        help="comma-separated catalogue sizes (each >= 10), e.g. 100000,1000000,10000000")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--preset", default="synthetic", help="recsys_ssl config preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run (after 3 warm-up steps)")
    parser.add_argument("--bucket_fraction", type=float, default=0.1,
                        help="hashed variant: model.item_id_buckets = items x this")
    parser.add_argument("--items_per_user", type=int, default=10, help="users = items / this")
    parser.add_argument("--max_rss_gib", type=float, default=20.0,
                        help="stop a run whose process exceeds this RSS (recorded as failed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--result_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.one:
        num_items, variant = args.one.split(":")
        result = run_one(int(num_items), variant, args)
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return 0
    sizes = [int(n) for n in args.num_items.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or any(n < 10 for n in sizes) or args.steps < 1:
        parser.error(f"unknown variants {unknown} (valid: {list(VARIANTS)}), or a size < 10, or --steps < 1")
    os.makedirs(args.output_dir, exist_ok=True)
    store = ResultStore(os.path.join(args.output_dir, "id_tables.json"),
                        {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    for num_items in sizes:
        for variant in variants:
            name = f"{num_items}:{variant}"
            if name in store and store.results[name].get("error") in (None, "stopped at --max_rss_gib"):
                logger.info("%s: done already", name)
                continue
            result_file = os.path.join(args.output_dir, f"{num_items}_{variant}.json")
            logger.info("%s: running (load average %s)", name, load_average())
            outside = measure(_child_command(num_items, variant, args, result_file),
                              os.path.join(args.output_dir, f"{num_items}_{variant}.log"),
                              rss_limit_bytes=int(args.max_rss_gib * 2 ** 30), check=False)
            if outside["returncode"] != 0:
                reason = "stopped at --max_rss_gib" if outside["stopped_at_rss_limit"] else f"exit {outside['returncode']}"
                store.put(name, {"num_items": num_items, "variant": variant, "error": reason, "outside": outside})
                logger.warning("%s failed: %s", name, reason)
                continue
            with open(result_file) as f:
                result = json.load(f)
            result["outside"] = outside
            store.put(name, result)
            logger.info("%s: step %.1f ms, peak RSS %.2f GiB", name, result["median_step_ms"],
                        outside["peak_rss_bytes"] / 2 ** 30)
    print(markdown(store.results))
    plot(store.results, os.path.join(args.output_dir, "id_tables.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
