"""Batch OoD scoring throughput: the Beam job against the raw SavedModel call, in one run.

``python -m benchmarks.batch_scoring --export_dir EXPORT_DIR [--texts 100000] [--output_dir runs/bench_batch_scoring]``

Builds a JSONL file of ``--texts`` real English texts (CLINC150 queries, SST-2 phrases, news
sentences and captions from ``$SSL_DATA_DIR``, cycled if needed), then measures in the same run:

1. the raw call: ``serving_default`` of the SavedModel on batches of ``--batch_size`` texts, in
   file order, in this process (model load excluded, one warm-up batch);
2. ``python -m pipelines.scoring.batch_ood_scoring`` on the file (DirectRunner, in-process; wall time of
   the whole command, including Python start-up and the model load).

Reports texts/s of both and their ratio (target: the pipeline at >= 0.8x the raw call).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import time



def collect_texts(data_dir: str, count: int) -> list[str]:
    texts = []
    with open(os.path.join(data_dir, "text", "clinc150", "data_full.json")) as f:
        for rows in json.load(f).values():
            texts.extend(text for text, _ in rows)
    with open(os.path.join(data_dir, "text", "sst2", "train.tsv"), newline="", encoding="utf-8") as f:
        texts.extend(row["sentence"] for row in csv.DictReader(f, delimiter="\t"))
    for path in sorted(glob.glob(os.path.join(data_dir, "text", "general", "*.txt"))):
        with open(path, encoding="utf-8") as f:
            texts.extend(line.strip() for line in f if line.strip())
    return [texts[i % len(texts)] for i in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--export_dir", required=True, help="export base dir or version dir")
    parser.add_argument("--texts", type=int, default=100_000, help="texts scored (sampled with replacement from the data)")
    parser.add_argument("--batch_size", type=int, default=256, help="texts per SavedModel call")
    parser.add_argument("--output_dir", default="runs/bench_batch_scoring", help="where the export, inputs, scores and result.json go")
    parser.add_argument("--data_dir", default=os.environ.get("SSL_DATA_DIR", "../shared/data"), help="the data root (default $SSL_DATA_DIR)")
    parser.add_argument("--beam_args", default="--runner=DirectRunner", help="extra flags for the Beam job")
    args = parser.parse_args(argv)

    import pipelines  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from pipelines.scoring.batch_ood_scoring import resolve_model_dir
    from serving.servable import read_meta_graph, register_custom_ops

    os.makedirs(args.output_dir, exist_ok=True)
    texts = collect_texts(args.data_dir, args.texts)
    input_path = os.path.join(args.output_dir, "texts.jsonl")
    with open(input_path, "w") as f:
        for index, text in enumerate(texts):
            f.write(json.dumps({"id": index, "text": text}) + "\n")
    model_dir = resolve_model_dir(args.export_dir)
    results = {"model": os.path.abspath(model_dir), "texts": len(texts), "batch_size": args.batch_size,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_before": os.getloadavg()}

    register_custom_ops(read_meta_graph(model_dir))
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    encoded = [t.encode("utf-8") for t in texts]
    serve(text=tf.constant(encoded[: args.batch_size]))  # warm-up (tracing, kernels)
    started = time.perf_counter()
    for start in range(0, len(encoded), args.batch_size):
        serve(text=tf.constant(encoded[start: start + args.batch_size]))["ood_score"].numpy()
    raw_seconds = time.perf_counter() - started
    results["raw"] = {"seconds": raw_seconds, "texts_per_second": len(texts) / raw_seconds}
    print(json.dumps(results["raw"]), flush=True)

    scored = os.path.join(args.output_dir, "scored")
    started = time.perf_counter()
    with open(os.path.join(args.output_dir, "pipeline.log"), "w") as log:
        subprocess.run([sys.executable, "-m", "pipelines", "batch_score", "--export_dir", model_dir, "--input",
                        input_path, "--output_dir", scored, "--batch_size", str(args.batch_size),
                        *args.beam_args.split()], check=True, stdout=log, stderr=subprocess.STDOUT)
    pipeline_seconds = time.perf_counter() - started
    with open(os.path.join(scored, "summary.json")) as f:
        summary = json.load(f)
    results["pipeline"] = {"seconds": pipeline_seconds, "texts_per_second": len(texts) / pipeline_seconds,
                           "summary": summary, "beam_args": args.beam_args}
    results["pipeline_over_raw"] = results["pipeline"]["texts_per_second"] / results["raw"]["texts_per_second"]
    results["load_average_after"] = os.getloadavg()
    with open(os.path.join(args.output_dir, "result.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
