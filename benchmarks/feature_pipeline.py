"""Feature pipeline throughput: the Beam pipeline (2 local workers) against a pandas reference.

``python -m benchmarks.feature_pipeline --output_dir runs/bench_features [--interactions 1000000 --items 100000]``

1. Generates synthetic interactions with ``pipelines.synthetic`` (skipped if present).
2. Runs ``python -m pipelines.features.job`` with ``--direct_num_workers=2
   --direct_running_mode=multi_processing`` and, in the same benchmark run, a single-process pandas
   implementation of the same features (:func:`pandas_features`, below): the same splits,
   histories, tf.Examples, item corpus, vocabularies and item-feature MI.
3. Reports wall time, interactions/s, CPU seconds (user + system of the whole process tree; on a
   shared machine the wall time depends on other jobs, the CPU time much less) and peak memory
   (RSS summed over the process tree, sampled every 0.2 s) of each, the ratio, and checks that
   both produced the same features.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time



def _tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
        stack.extend(children.get(current, []))
    return total


def measure(command: list[str], log_path: str) -> dict:
    """Runs ``command``; returns wall seconds, CPU seconds (user + system, whole tree) and peak tree RSS."""
    import resource

    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(process.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{command} failed ({code}); see {log_path}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_bytes": peak}


def pandas_features(data_dir: str, out: str, eval_fraction: float = 0.1, validation_fraction: float = 0.1,
                    history_length: int = 20) -> None:
    """The reference: the feature pipeline's outputs (``--split time``) with pandas, one process."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from pipelines.features.corpus_statistics import head_tail, vocabulary_text
    from pipelines.features.mutual_information import assemble_matrix, entropy, identifier_pair_stats, joint_statistics
    from pipelines.features.splits import histories, time_cutoffs
    from recsys_ssl import schema as fs

    with open(os.path.join(data_dir, "schema.json")) as f:
        spec = json.load(f)
    features = spec["items"]["features"]
    names = [f["name"] for f in features]
    multivalent = {f["name"]: f.get("multivalent", False) for f in features}
    interactions = pd.read_csv(os.path.join(data_dir, spec["interactions"]["path"]),
                               dtype={"user_id": str, "item_id": str, "timestamp": np.int64, "weight": np.float64})
    items = pd.read_json(os.path.join(data_dir, spec["items"]["path"]), lines=True, dtype=False)
    items["item_id"] = items["item_id"].astype(str)
    items = items.drop_duplicates("item_id", keep="first")
    for name in names:
        column = items[name]
        if multivalent[name]:
            items[name] = column.apply(lambda v: tuple(dict.fromkeys(str(x).strip() for x in v)) if isinstance(v, list)
                                       else tuple(dict.fromkeys(p.strip() for p in str(v).split("|") if p.strip()))
                                       if isinstance(v, str) else ())
        else:
            items[name] = column.apply(lambda v: (str(v).strip(),) if v is not None and str(v).strip() else ())
    interactions = interactions[interactions["item_id"].isin(set(items["item_id"]))]

    counts = interactions["timestamp"].value_counts()
    validation_start, eval_start = time_cutoffs(zip(counts.index.tolist(), counts.tolist()), eval_fraction,
                                                validation_fraction)
    interactions = interactions.sort_values(["user_id", "timestamp", "item_id", "weight"], kind="stable")
    timestamps = interactions["timestamp"].to_numpy()
    split = np.where(timestamps >= eval_start, "eval", np.where(timestamps >= validation_start, "validation", "train"))
    users = interactions["user_id"].to_numpy()
    item_ids = interactions["item_id"].to_numpy()
    weights = interactions["weight"].to_numpy()
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = {s: tf.io.TFRecordWriter(os.path.join(out, f"{s}-00000-of-00001{fs.TFRECORD_SUFFIX}"), options)
               for s in fs.SPLITS}
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        user_histories = histories(timestamps[start:end].tolist(), item_ids[start:end].tolist(), history_length)
        for offset, history in enumerate(user_histories):
            row = start + offset
            writers[split[row]].write(fs.example_to_proto(users[row], history, item_ids[row], int(timestamps[row]),
                                                          float(weights[row])))
    for writer in writers.values():
        writer.close()

    with tf.io.TFRecordWriter(os.path.join(out, f"items-00000-of-00001{fs.TFRECORD_SUFFIX}"), options) as writer:
        for record in items[["item_id"] + names].itertuples(index=False):
            writer.write(fs.item_to_proto(record[0], dict(zip(names, record[1:]))))

    vocab_dir = os.path.join(out, fs.VOCAB_DIR)
    os.makedirs(vocab_dir, exist_ok=True)
    train = interactions[split == "train"]
    frequency = train["item_id"].value_counts()
    frequencies = {item_id: int(frequency.get(item_id, 0)) for item_id in items["item_id"]}
    with open(os.path.join(vocab_dir, "item_id.txt"), "w") as f:
        f.write(vocabulary_text(frequencies.items()))
    with open(os.path.join(vocab_dir, "user_id.txt"), "w") as f:
        f.write(vocabulary_text(train["user_id"].value_counts().items()))
    exploded = {}
    feature_stats, pair_stats = {}, {}
    for name in names:
        values = items[["item_id", name]][items[name].map(len) > 0]
        values = values.assign(size=values[name].map(len)).explode(name)
        values["mass"] = 1.0 / values["size"]
        exploded[name] = values
        with open(os.path.join(vocab_dir, f"{name}.txt"), "w") as f:
            f.write(vocabulary_text(values[name].value_counts().items()))
        support = values["item_id"].nunique()
        feature_stats[name] = {"entropy": entropy(values.groupby(name)["mass"].sum().tolist()), "support": support,
                               "mean_log_size": float(np.log(values.drop_duplicates("item_id")["size"]).mean())}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            joined = exploded[first][["item_id", first, "mass"]].merge(
                exploded[second][["item_id", second, "mass"]], on="item_id")
            joined["mass"] = joined["mass_x"] * joined["mass_y"]
            table = joined.groupby([first, second])["mass"].sum()
            mi, h_first, h_second = joint_statistics(dict(table.items()))
            pair_stats[(first, second)] = {"mi": mi, "entropy_first": h_first, "entropy_second": h_second,
                                           "support": joined["item_id"].nunique()}
    feature_stats["item_id"] = {"entropy": math.log(len(items)), "support": len(items), "mean_log_size": 0.0}
    pair_stats.update(identifier_pair_stats("item_id", ["item_id"] + names, feature_stats))
    with open(os.path.join(out, fs.MI_FILE), "w") as f:
        json.dump(assemble_matrix(["item_id"] + names, pair_stats, feature_stats), f, indent=1, sort_keys=True)
    with open(os.path.join(out, fs.STATS_FILE), "w") as f:
        json.dump({"splits": {s: int((split == s).sum()) for s in fs.SPLITS}, "num_items": len(items),
                   "head_tail": head_tail(frequencies)}, f, indent=1)


def compare(beam_dir: str, pandas_dir: str) -> dict:
    """Checks that both implementations produced the same features."""
    import numpy as np

    beam_stats = json.load(open(os.path.join(beam_dir, "stats.json")))
    pandas_stats = json.load(open(os.path.join(pandas_dir, "stats.json")))
    same_splits = {s: v["examples"] for s, v in beam_stats["splits"].items()} == pandas_stats["splits"]
    vocab_same = all(
        open(os.path.join(beam_dir, "vocab", name)).read() == open(os.path.join(pandas_dir, "vocab", name)).read()
        for name in os.listdir(os.path.join(pandas_dir, "vocab")))
    beam_mi = np.array(json.load(open(os.path.join(beam_dir, "item_feature_mi.json")))["mi"])
    pandas_mi = np.array(json.load(open(os.path.join(pandas_dir, "item_feature_mi.json")))["mi"])
    return {"same_split_counts": same_splits, "same_vocabularies": vocab_same,
            "max_abs_mi_difference": float(np.abs(beam_mi - pandas_mi).max()),
            "same_head_items": beam_stats["head_tail"]["head_items"] == pandas_stats["head_tail"]["head_items"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--output_dir", default="runs/bench_features")
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pandas_reference", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pandas_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pandas_only:
        pandas_features(os.path.join(args.output_dir, "input"), os.path.join(args.output_dir, "pandas"))
        return 0
    python = sys.executable
    data = os.path.join(args.output_dir, "input")
    if not os.path.isfile(os.path.join(data, "schema.json")):
        subprocess.run([python, "-m", "pipelines", "synthetic", "--output_dir", data, "--num_users", str(args.users),
                        "--num_items", str(args.items), "--num_interactions", str(args.interactions), "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {"interactions": args.interactions, "items": args.items, "users": args.users,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_before": os.getloadavg()}
    beam_out = os.path.join(args.output_dir, "beam")
    results["beam"] = measure([python, "-m", "pipelines", "features", "--input_format", "interactions",
                               "--input", data, "--output_dir", beam_out, "--split", "time",
                               "--runner=DirectRunner", f"--direct_num_workers={args.workers}",
                               "--direct_running_mode=multi_processing"], os.path.join(args.output_dir, "beam.log"))
    if args.pandas_reference:
        os.makedirs(os.path.join(args.output_dir, "pandas"), exist_ok=True)
        results["pandas"] = measure([python, os.path.abspath(__file__), "--output_dir", args.output_dir, "--pandas_only"],
                                    os.path.join(args.output_dir, "pandas.log"))
        results["equivalence"] = compare(beam_out, os.path.join(args.output_dir, "pandas"))
    results["load_average_after"] = os.getloadavg()
    for name in ("beam", "pandas"):
        if name in results:
            results[name]["interactions_per_second"] = args.interactions / results[name]["wall_seconds"]
            results[name]["interactions_per_cpu_second"] = args.interactions / results[name]["cpu_seconds"]
    if "pandas" in results:
        results["beam_over_pandas_throughput"] = (results["beam"]["interactions_per_second"]
                                                  / results["pandas"]["interactions_per_second"])
    with open(os.path.join(args.output_dir, "result.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
