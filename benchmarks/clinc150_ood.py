"""CLINC150 OoD benchmark of MLKD (Wu et al. 2023) against its baselines, with stage wall times.

Protocol (the paper's): ID train = 15,000 in-scope training queries; model selection and threshold
calibration on the 3,000 in-scope validation queries; test = 4,500 in-scope (ID) + 1,000
out-of-scope (OoD) queries. Detectors: fine-tuned teacher, from-scratch LM, MLKD student, and MLKD
without the intermediate term, all scored by mean token NLL (perplexity). The teacher is
pre-trained once (seed-independent) on ../shared/data/text/general + sst2 (never CLINC; CLINC's
ID training texts only join the tokenizer's training data), then every seed fine-tunes it and
trains the students. After the first seed, the MLKD student is exported and the SavedModel's
scoring throughput is measured in a fresh process at batch 256.

Results go to ``WORKDIR/results.json`` and ``WORKDIR/results.md`` after every step, so an
interrupted run keeps what finished. A seed is only started if the time left before
``--deadline_minutes`` is at least the duration of the previous seed.

Third round (BENCHMARKS.md, issue 12): the 3-pass pre-training reused, the `cpu` preset's budget
(5 epochs each; student with the LM term) and the paper's recipe as a student option::

  SSL_DATA_DIR=../shared/data nohup python -m benchmarks.clinc150_ood \
      --workdir runs/mlkd_v3 --pretrain_dir runs/pt_q4x256 --seeds 0,1,2 \
      --detectors teacher,scratch,mlkd --student_option mlkd_paper=distill.lm_weight=0 \
      > runs/mlkd_v3.log 2>&1 &

Usage (CPU preset, about an hour per seed on 2 cores plus the pre-training)::

  SSL_DATA_DIR=../shared/data nohup python -m benchmarks.clinc150_ood \
      --workdir runs/bench_clinc150 --seeds 0,1,2 > runs/bench_clinc150.log 2>&1 &

Second run (BENCHMARKS.md, "v2"): the first run's pre-training reused, a teacher fine-tuned for 8
epochs, students and from-scratch model 8 epochs each, the student with the ground-truth LM term::

  SSL_DATA_DIR=../shared/data nohup python -m benchmarks.clinc150_ood \
      --workdir runs/bench_clinc150_v2 --pretrain_dir runs/bench_clinc150/pretrain --seeds 0,1,2 \
      --detectors teacher,scratch,mlkd,mlkd_no_intermediate \
      --set teacher.epochs=8 --set distill.lm_weight=1 > runs/bench_clinc150_v2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time

import text_ood  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from core.env import data_root
from text_ood.__main__ import main as text_ood_main
from text_ood.data import default_corpus

PAPER = {  # Wu et al. 2023, CLINC150, GPT-2 small, mean of 5 seeds: AUROC / AUPR(-OUT) / FAR95.
    "teacher": (89.76, 62.39, 33.77),
    "scratch": (91.73, 68.78, 28.31),
    "mlkd": (92.51, 70.94, 27.16),
    "mlkd_no_intermediate": (None, None, None),
}
DETECTORS = ("teacher", "scratch", "mlkd", "mlkd_no_intermediate")
LABELS = {"teacher": "fine-tuned teacher", "scratch": "from scratch", "mlkd": "MLKD",
          "mlkd_no_intermediate": "MLKD w/o intermediate"}

THROUGHPUT_CODE = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the SentencePiece ops of the SavedModel
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
texts = json.load(open(sys.argv[2]))
batch = int(sys.argv[3])
batches = [tf.constant(texts[i:i + batch]) for i in range(0, len(texts), batch)]
serve(text=batches[0])  # warm-up
start = time.perf_counter()
n = 0
for b in batches:
    n += int(serve(text=b)["ood_score"].shape[0])
elapsed = time.perf_counter() - start
print(json.dumps({"texts": n, "seconds": elapsed, "texts_per_s": n / elapsed, "batch": batch}))
"""

logger = logging.getLogger("benchmark")


def _run(argv: list[str]) -> None:
    logger.info("python -m text_ood %s", " ".join(argv))
    code = text_ood_main(argv)
    if code != 0:
        raise RuntimeError(f"text_ood {argv[0]} failed with exit code {code}")


def _stage_times(workdir: str, stages=DETECTORS, rename: dict | None = None) -> dict:
    out = {}
    for stage in stages:
        path = os.path.join(workdir, stage, "done.json")
        if os.path.isfile(path):
            with open(path) as f:
                done = json.load(f)
            out[(rename or {}).get(stage, stage)] = {"wall_time_s": done["wall_time_s"], "epochs": done["epochs_run"],
                          "selected_epoch": done["selected_epoch"],
                          "best_val_perplexity": done["best_val_perplexity"],
                          "val_perplexity_per_epoch": [h["val_perplexity"] for h in done["history"]]}
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def write_markdown(results: dict, path: str) -> None:
    seeds = results["seeds"]
    lines = [f"Seeds: {', '.join(str(s['seed']) + ('' if s.get('complete') else ' (partial)') for s in seeds) or 'none'}", ""]
    if seeds:
        lines += ["| detector | AUROC | AUPR-OUT | AUPR-IN | FAR95 | ID-val perplexity | "
                  "paper AUROC / AUPR / FAR95 |", "|---|---|---|---|---|---|---|"]
        names = list(DETECTORS) + sorted({n for s in seeds for n in s["metrics"]} - set(DETECTORS))
        for name in names:
            rows = [s["metrics"][name] for s in seeds if name in s["metrics"]]
            if not rows:
                continue
            cells = []
            for key in ("auroc", "aupr_out", "aupr_in", "far95"):
                mean, std = _mean_std([100 * r[key] for r in rows])
                cells.append(f"{mean:.2f} ± {std:.2f}" if len(rows) > 1 else f"{mean:.2f}")
            perplexities = [s["stages"][name]["best_val_perplexity"] for s in seeds
                            if name in s["metrics"] and name in s["stages"]]
            mean, std = _mean_std(perplexities) if perplexities else (float("nan"), 0.0)
            cells.append(f"{mean:.2f} ± {std:.2f}" if len(perplexities) > 1 else f"{mean:.2f}")
            paper = PAPER.get(name, (None,))
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) if paper[0] is not None else "n/a"
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + f" | {paper_cell} |")
        lines += ["", "Per seed (AUROC): " + "; ".join(
            f"seed {s['seed']}: " + ", ".join(f"{n} {100 * s['metrics'][n]['auroc']:.2f}"
                                               for n in names if n in s["metrics"])
            for s in seeds), ""]
        gates = [(s["seed"], s["teacher_gate"]) for s in seeds if s.get("teacher_gate")]
        if gates:
            lines += ["Teacher gate (ID-validation perplexity, fine-tuned teacher vs from scratch): " + "; ".join(
                f"seed {seed}: {g['teacher_val_perplexity']:.2f} vs {g['scratch_val_perplexity']:.2f} "
                f"({'passed' if g['teacher_better'] else 'FAILED'})" for seed, g in gates), ""]
        lines += ["| stage wall time (min) | " + " | ".join(f"seed {s['seed']}" for s in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        reused = results["pretrain"].get("reused_from")
        lines.append(f"| pre-training (once{', reused from ' + reused if reused else ''}) | " +
                     " | ".join(f"{results['pretrain']['wall_time_s'] / 60:.1f}" if i == 0 else "-"
                                for i in range(len(seeds))) + " |")
        for name in names:
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(
                f"{s['stages'][name]['wall_time_s'] / 60:.1f} ({s['stages'][name]['epochs']} ep, "
                f"best {s['stages'][name]['selected_epoch']})" if name in s["stages"] else "-"
                for s in seeds) + " |")
        lines.append("| evaluation (all detectors) | " + " | ".join(
            f"{s['evaluate_s'] / 60:.1f}" for s in seeds) + " |")
    if "throughput" in results:
        t = results["throughput"]
        lines += ["", f"Exported SavedModel scoring throughput (fresh process, batch {t['batch']}, "
                      f"{t['texts']} CLINC150 test texts): {t['texts_per_s']:.0f} texts/s"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--workdir", default="runs/bench_clinc150", help="output directory (one workdir per seed; resumable)")
    parser.add_argument("--data_dir", default=None, help="default: $SSL_DATA_DIR")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--preset", default="cpu", help="text_ood config preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config overrides for pretrain and train (repeatable); each workdir "
                             "only checks the sections it depends on when resumed")
    parser.add_argument("--deadline_minutes", type=float, default=0,
                        help="do not start a seed that would likely end after this many minutes")
    parser.add_argument("--throughput_batch", type=int, default=256, help="batch size of the throughput measurement")
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="detectors to train and evaluate per seed, in this order")
    parser.add_argument("--student_option", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                        help="an MLKD student variant trained per seed after the detectors, in "
                             "WORKDIR/seedN/options/NAME/ with the seed's teacher and from-scratch stages "
                             "(linked, not retrained), e.g. mlkd_lm=distill.lm_weight=1 (repeatable)")
    parser.add_argument("--pretrain_dir", default=None,
                        help="reuse this finished `pretrain` workdir (read only; e.g. an earlier "
                             "benchmark's WORKDIR/pretrain) instead of pre-training in "
                             "WORKDIR/pretrain; its pretrain/tokenizer settings apply")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.time()
    root = data_root(args.data_dir)
    if root is None:
        parser.error("pass --data_dir or set $SSL_DATA_DIR")
    clinc = os.path.join(root, "text", "clinc150")
    corpus = default_corpus(root)
    os.makedirs(args.workdir, exist_ok=True)
    results_path = os.path.join(args.workdir, "results.json")
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "preset": args.preset,
               "overrides": args.overrides, "seeds": []}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)
        write_markdown(results, os.path.join(args.workdir, "results.md"))

    config_flags = ["--preset", args.preset] + [x for o in args.overrides for x in ("--set", o)]
    if args.pretrain_dir:
        pretrain_dir = args.pretrain_dir
        if not os.path.isfile(os.path.join(pretrain_dir, "pretrain", "done.json")):
            parser.error(f"--pretrain_dir {pretrain_dir}: no finished pre-training there "
                         "(pretrain/done.json)")
    else:
        pretrain_dir = os.path.join(args.workdir, "pretrain")
        _run(["pretrain", "--workdir", pretrain_dir, "--corpus", ",".join(corpus), "--dataset", "clinc150",
              "--data_dir", root, *config_flags])
    with open(os.path.join(pretrain_dir, "pretrain", "done.json")) as f:
        done = json.load(f)
    results["pretrain"] = {"wall_time_s": done["wall_time_s"], "steps": done["steps"],
                           "val_perplexity": done["best_val_perplexity"],
                           "reused_from": args.pretrain_dir}
    save()
    option_names = [o.partition("=")[0] for o in args.student_option]
    finished = {s["seed"] for s in results["seeds"]
                if s.get("complete") and all(n in s["metrics"] for n in option_names)}
    last_seed_s = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        if seed in finished:
            continue
        elapsed_min = (time.time() - start) / 60
        if args.deadline_minutes and last_seed_s is not None and \
                elapsed_min + last_seed_s / 60 > args.deadline_minutes:
            logger.warning("stopping before seed %d: %.0f min elapsed, a seed takes %.0f min, "
                           "deadline %.0f min", seed, elapsed_min, last_seed_s / 60,
                           args.deadline_minutes)
            results["stopped_early"] = (f"seed {seed} not started: a seed takes "
                                        f"{last_seed_s / 60:.0f} min, deadline {args.deadline_minutes} min")
            save()
            break
        seed_start = time.time()
        workdir = os.path.join(args.workdir, f"seed{seed}")
        entry = next((s for s in results["seeds"] if s["seed"] == seed), None) or {
            "seed": seed, "metrics": {}, "stages": {}, "evaluate_s": 0.0}
        entry["complete"] = False
        results["seeds"] = [s for s in results["seeds"] if s["seed"] != seed] + [entry]
        for name in args.detectors.split(","):  # one at a time: an interrupted run keeps what finished
            if name in entry["metrics"]:
                continue
            _run(["train", "--dataset", "clinc150", "--data_dir", root, "--workdir", workdir,
                  "--teacher", pretrain_dir, "--detectors", name, *config_flags, "--set", f"seed={seed}"])
            eval_start = time.time()
            _run(["evaluate", "--workdir", workdir, "--detectors", name])
            entry["evaluate_s"] += time.time() - eval_start
            with open(os.path.join(workdir, "eval.json")) as f:
                entry["metrics"].update(json.load(f)["detectors"])
            entry["stages"].update(_stage_times(workdir))
            entry["seed_wall_time_s"] = time.time() - seed_start
            save()
        with open(os.path.join(workdir, "run.json")) as f:
            entry["teacher_gate"] = json.load(f).get("teacher_gate")
        for option in args.student_option:
            name, _, overrides = option.partition("=")
            if name in entry["metrics"]:
                continue
            option_dir = os.path.join(workdir, "options", name)
            for stage in ("teacher", "scratch"):  # shared with the seed's base workdir
                link = os.path.join(option_dir, stage)
                if not os.path.exists(link):
                    os.makedirs(option_dir, exist_ok=True)
                    os.symlink(os.path.abspath(os.path.join(workdir, stage)), link)
            option_flags = [x for o in overrides.split(",") if o for x in ("--set", o)]
            _run(["train", "--dataset", "clinc150", "--data_dir", root, "--workdir", option_dir,
                  "--teacher", pretrain_dir, "--detectors", "mlkd", *config_flags, *option_flags,
                  "--set", f"seed={seed}"])
            eval_start = time.time()
            _run(["evaluate", "--workdir", option_dir, "--detectors", "mlkd"])
            entry["evaluate_s"] += time.time() - eval_start
            with open(os.path.join(option_dir, "eval.json")) as f:
                entry["metrics"][name] = json.load(f)["detectors"]["mlkd"]
            entry["stages"].update(_stage_times(option_dir, ("mlkd",), {"mlkd": name}))
            entry["seed_wall_time_s"] = time.time() - seed_start
            save()
        entry["complete"] = True
        last_seed_s = time.time() - seed_start
        save()
        if "throughput" not in results:
            export_dir = os.path.join(args.workdir, "export")
            _run(["export", "--workdir", workdir, "--export_dir", export_dir])
            version = max(int(v) for v in os.listdir(export_dir) if v.isdigit())
            from text_ood.data import load_clinc150

            dataset = load_clinc150(clinc)
            texts_path = os.path.join(args.workdir, "throughput_texts.json")
            with open(texts_path, "w") as f:
                json.dump(dataset.id_test + dataset.ood_test, f)
            out = subprocess.run([sys.executable, "-c", THROUGHPUT_CODE,
                                  os.path.join(export_dir, str(version)), texts_path,
                                  str(args.throughput_batch)],
                                 capture_output=True, text=True, check=True)
            results["throughput"] = json.loads(out.stdout.strip().splitlines()[-1])
            save()
    results["total_wall_time_s"] = results.get("total_wall_time_s", 0) + time.time() - start
    save()
    with open(os.path.join(args.workdir, "results.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
