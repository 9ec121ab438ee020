"""Feature pipeline throughput and memory: Beam runners against a pandas reference, resumable.

Small scale, the issue-2/14 comparison (1M interactions, 100k items; DirectRunner with 2 worker
processes against pandas)::

  python -m benchmarks.feature_pipeline --output_dir runs/bench_features

Ten million items (issue 25; the long-tail generator, 20M interactions; every run of the scaling
curve on the same input, the pandas reference where it fits in memory, the MI step alone)::

  python -m benchmarks.feature_pipeline --output_dir runs/scale10m --generator synthetic_long_tail \
      --items 10000000 --interactions 20000000 --users 2000000 \
      --runs direct_2,direct_1,portable,corpus_statistics,pandas --max_rss_gib 20

1. Generates the input with ``python -m pipelines synthetic`` or ``synthetic_long_tail`` (skipped
   when ``OUTPUT_DIR/input/input_schema.json`` exists), measured like a run.
2. Runs, in the order given (``--runs``), each in a child process measured from outside
   (:func:`benchmarks.measure.measure`): wall time, interactions/s, CPU seconds and peak RSS of
   the whole process tree (sampled every 0.2 s), the peak size of its temporary directory
   (``TMPDIR``) and of its output directory (Beam's ``beam-temp-*`` files), the load average
   before and after. Run names:

   - ``direct_N``: ``python -m pipelines features`` on the DirectRunner with ``N`` workers
     (``N > 1``: ``--direct_running_mode=multi_processing``; ``N = 1``: in-process). The
     DirectRunner shuffles in the memory of its runner process: its shuffle is part of the peak
     RSS, not of a file size.
   - ``portable``: the same job on the PortableRunner with the embedded job server and the
     LOOPBACK environment (``--job_endpoint=embed --environment_type=LOOPBACK``): Beam's
     portability layer, the path to Flink / Spark / Dataflow, on this machine.
   - ``pandas``: the single-process pandas implementation of the same features
     (:func:`pandas_features`); stopped (and recorded as such) when its RSS exceeds
     ``--max_rss_gib``.
   - ``corpus_statistics``: the pipeline's vocabulary + MI step (``CorpusStatisticsFn``) alone,
     in one process, on the item corpus the first Beam run wrote: the MI matrix's time and memory.

3. Checks every output against the pandas one (or the first Beam run's): split counts,
   vocabularies, head items, MI. Results go to ``OUTPUT_DIR/result.json`` after each run; a
   re-run skips finished runs (delete an entry, or the file, to measure again).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys
import time

from benchmarks.measure import ResultStore, directory_bytes, load_average, measure

INPUT_SCHEMA_FILE = "input_schema.json"  # pipelines.io.input_schema.INPUT_SCHEMA_FILE (no Beam import here)


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

    with open(os.path.join(data_dir, INPUT_SCHEMA_FILE)) as f:
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
    """Checks that two runs produced the same features (the second may be the pandas reference's)."""
    import numpy as np

    beam_stats = json.load(open(os.path.join(beam_dir, "stats.json")))
    pandas_stats = json.load(open(os.path.join(pandas_dir, "stats.json")))
    counts = [{s: v["examples"] if isinstance(v, dict) else v for s, v in stats["splits"].items()}
              for stats in (beam_stats, pandas_stats)]  # the pipeline's stats.json or the reference's
    same_splits = counts[0] == counts[1]
    vocab_same = all(
        open(os.path.join(beam_dir, "vocab", name)).read() == open(os.path.join(pandas_dir, "vocab", name)).read()
        for name in os.listdir(os.path.join(pandas_dir, "vocab")))
    beam_mi = np.array(json.load(open(os.path.join(beam_dir, "item_feature_mi.json")))["mi"])
    pandas_mi = np.array(json.load(open(os.path.join(pandas_dir, "item_feature_mi.json")))["mi"])
    return {"same_split_counts": same_splits, "same_vocabularies": vocab_same,
            "max_abs_mi_difference": float(np.abs(beam_mi - pandas_mi).max()),
            "same_head_items": beam_stats["head_tail"]["head_items"] == pandas_stats["head_tail"]["head_items"]}


def corpus_statistics_only(features_dir: str) -> dict:
    """The pipeline's vocabulary + MI step alone, on the item corpus of a feature directory.

    Reads ``items-*`` into the pipeline's ``CorpusItem`` s, then runs ``CorpusStatisticsFn``
    (accumulate, then build the vocabularies and the MI matrix) and compares the matrix with the
    directory's ``item_feature_mi.json``.
    """
    import numpy as np
    import tensorflow as tf

    from pipelines.features.corpus_statistics import CorpusStatisticsFn
    from pipelines.features.item_corpus import CorpusItem
    from recsys_ssl import schema as fs

    schema = fs.FeatureSchema.load(features_dir)
    names = schema.item_feature_names[1:]
    started = time.perf_counter()
    items = []
    files = sorted(glob.glob(os.path.join(features_dir, f"{fs.ITEMS_PREFIX}-*{fs.TFRECORD_SUFFIX}")))
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        items.append(CorpusItem(feature[fs.ITEM_ID].bytes_list.value[0].decode(),
                                tuple((n, tuple(v.decode() for v in feature[n].bytes_list.value)) for n in names)))
    read = time.perf_counter() - started
    combine = CorpusStatisticsFn(names, identifier=fs.ITEM_ID)
    started = time.perf_counter()
    accumulator = combine.create_accumulator()
    for item in items:
        accumulator = combine.add_input(accumulator, item)
    accumulate = time.perf_counter() - started
    del items
    started = time.perf_counter()
    output = combine.extract_output(accumulator)
    extract = time.perf_counter() - started
    with open(os.path.join(features_dir, fs.MI_FILE)) as f:
        written = np.array(json.load(f)["mi"])
    return {"num_items": len(output["item_ids"]), "read_seconds": read, "accumulate_seconds": accumulate,
            "vocab_and_mi_seconds": extract,
            "max_abs_mi_difference_to_pipeline": float(np.abs(np.array(output["mutual_information"]["mi"])
                                                              - written).max())}


def runner_flags(run: str) -> list[str]:
    """Beam options of a run name (``direct_N`` or ``portable``).

    Raises:
      ValueError: any other name.
    """
    if run == "portable":
        return ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]
    if run.startswith("direct_") and run[len("direct_"):].isdigit() and int(run[len("direct_"):]) >= 1:
        workers = int(run[len("direct_"):])
        flags = ["--runner=DirectRunner", f"--direct_num_workers={workers}"]
        return flags + (["--direct_running_mode=multi_processing"] if workers > 1 else [])
    raise ValueError(f"unknown run {run!r}: expected direct_N (N >= 1), portable, pandas or corpus_statistics")


def generator_command(args: argparse.Namespace, data: str) -> list[str]:
    return [sys.executable, "-m", "pipelines", args.generator, "--output_dir", data, "--num_users", str(args.users),
            "--num_items", str(args.items), "--num_interactions", str(args.interactions), "--seed", "0",
            "--overwrite=true"]


def _throughput(result: dict, interactions: int) -> None:
    result["interactions_per_second"] = interactions / result["wall_seconds"]
    result["interactions_per_cpu_second"] = interactions / max(result["cpu_seconds"], 1e-9)


def markdown(document: dict) -> str:
    gib = 2 ** 30
    lines = ["| run | wall s | interactions/s | CPU s | peak RSS GiB | peak temp GiB | output GiB | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in document["results"].items():
        if "wall_seconds" not in r:
            continue
        status = " (stopped at the RSS limit)" if r.get("stopped_at_rss_limit") else ""
        temp = max(r.get("peak_dir_bytes", {}).values(), default=0) if name == "generate" else r.get("peak_temp_bytes", 0)
        lines.append(f"| {name}{status} | {r['wall_seconds']:.1f} | {r.get('interactions_per_second', 0):,.0f} | "
                     f"{r['cpu_seconds']:.1f} | {r['peak_rss_bytes'] / gib:.2f} | {temp / gib:.2f} | "
                     f"{r.get('output_bytes', 0) / gib:.2f} | {r['load_average_before'][0]} -> {r['load_average_after'][0]} |")
    for key in ("ratios", "equivalence"):
        if document.get(key):
            lines.append(f"\n{key}: {json.dumps(document[key])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output_dir", default="runs/bench_features",
                        help="input/, one directory per run, logs and result.json go here (re-running resumes)")
    parser.add_argument("--generator", choices=("synthetic", "synthetic_long_tail"), default="synthetic",
                        help="the `python -m pipelines` generator of the input")
    parser.add_argument("--interactions", type=int, default=1_000_000, help="interactions generated")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue items generated")
    parser.add_argument("--users", type=int, default=50_000, help="users generated")
    parser.add_argument("--runs", default=None,
                        help="comma-separated runs in order: direct_N, portable, pandas, corpus_statistics "
                             "(default: direct_<--workers>, then pandas unless --no-pandas_reference)")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner workers of the default Beam run")
    parser.add_argument("--pandas_reference", action=argparse.BooleanOptionalAction, default=True,
                        help="with the default --runs: also run the pandas reference")
    parser.add_argument("--max_rss_gib", type=float, default=20.0,
                        help="stop a run whose process tree exceeds this RSS (recorded, not retried)")
    parser.add_argument("--keep_outputs", action=argparse.BooleanOptionalAction, default=True,
                        help="keep each run's feature directory (off: delete it after its checks, to save disk)")
    parser.add_argument("--pandas_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus_statistics_only", metavar="FEATURES_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pandas_only:
        pandas_features(os.path.join(args.output_dir, "input"), os.path.join(args.output_dir, "pandas"))
        return 0
    if args.corpus_statistics_only:
        print(json.dumps(corpus_statistics_only(args.corpus_statistics_only)))
        return 0
    runs = (args.runs.split(",") if args.runs else
            [f"direct_{args.workers}"] + (["pandas"] if args.pandas_reference else []))
    for run in runs:
        if run not in ("pandas", "corpus_statistics"):
            try:
                runner_flags(run)
            except ValueError as error:
                parser.error(str(error))
    python, data = sys.executable, os.path.join(args.output_dir, "input")
    os.makedirs(args.output_dir, exist_ok=True)
    store = ResultStore(os.path.join(args.output_dir, "result.json"), {
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "interactions": args.interactions, "items": args.items, "users": args.users, "generator": args.generator,
        "cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)})
    if (store.document["interactions"], store.document["items"], store.document["generator"]) != \
            (args.interactions, args.items, args.generator):
        parser.error(f"{store.path} holds results of another input ({store.document['interactions']} interactions, "
                     f"{store.document['items']} items, {store.document['generator']}): use another --output_dir")
    limit = int(args.max_rss_gib * 2 ** 30)
    if not os.path.isfile(os.path.join(data, INPUT_SCHEMA_FILE)) or "generate" not in store:
        store.put("generate", measure(generator_command(args, data), os.path.join(args.output_dir, "generate.log"),
                                      watch_dirs=[data]))
    for run in runs:
        if run in store:
            continue
        log = os.path.join(args.output_dir, f"{run}.log")
        out = os.path.join(args.output_dir, run)
        if run == "corpus_statistics":
            beam_runs = [r for r in runs if r not in ("pandas", "corpus_statistics") and r in store
                         and os.path.isdir(os.path.join(args.output_dir, r))]
            if not beam_runs:
                print("corpus_statistics needs a finished Beam run with its output kept; skipped", file=sys.stderr)
                continue
            result = measure([python, "-m", "benchmarks.feature_pipeline", "--output_dir", args.output_dir,
                              "--corpus_statistics_only", os.path.join(args.output_dir, beam_runs[0])], log,
                             rss_limit_bytes=limit, check=False)
            if result["returncode"] == 0:
                with open(log) as f:
                    result.update(json.loads(f.read().strip().splitlines()[-1]))
            store.put(run, result)
            continue
        shutil.rmtree(out, ignore_errors=True)
        temp = os.path.join(args.output_dir, f"tmp_{run}")
        shutil.rmtree(temp, ignore_errors=True)
        os.makedirs(temp)
        env = dict(os.environ, TMPDIR=os.path.abspath(temp))
        if run == "pandas":
            os.makedirs(out)
            command = [python, "-m", "benchmarks.feature_pipeline", "--output_dir", args.output_dir, "--pandas_only"]
        else:
            command = [python, "-m", "pipelines", "features", "--input_format", "interactions", "--input", data,
                       "--output_dir", out, "--split", "time", *runner_flags(run)]
        result = measure(command, log, env=env, rss_limit_bytes=limit, watch_dirs=[temp, out], check=False)
        result["peak_temp_bytes"] = result["peak_dir_bytes"][temp]
        result["peak_output_dir_bytes"] = result["peak_dir_bytes"][out]
        result["output_bytes"] = directory_bytes(out)
        if result["returncode"] == 0:
            _throughput(result, args.interactions)
        elif not result["stopped_at_rss_limit"]:
            raise RuntimeError(f"{run} failed ({result['returncode']}); see {log}")
        shutil.rmtree(temp, ignore_errors=True)
        store.put(run, result)
    finished = {r: os.path.join(args.output_dir, r) for r in runs if r != "corpus_statistics" and r in store
                and store.results[r].get("returncode") == 0 and os.path.isdir(os.path.join(args.output_dir, r))}
    reference = "pandas" if "pandas" in finished else next(iter(finished), None)
    store.document["equivalence"] = {r: compare(path, finished[reference]) for r, path in finished.items()
                                     if r != reference}
    store.document["equivalence_reference"] = reference
    speeds = {r: store.results[r]["interactions_per_second"] for r in finished}
    store.document["ratios"] = {f"{r}_over_{base}": speeds[r] / speeds[base] for base in ("pandas", "direct_1")
                                if base in speeds for r in speeds if r != base}
    store.document["load_average_end"] = load_average()
    store.save()
    if not args.keep_outputs:
        for path in finished.values():
            shutil.rmtree(path, ignore_errors=True)
    print(markdown(store.document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
