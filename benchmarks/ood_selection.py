"""Issue 22: does ``select`` (no OoD data) choose a detector close to the best one, on three data sets?

For every configuration (CLINC150; AG News with one class as ID; 20 Newsgroups with one group
set as ID, ``benchmarks/ood_datasets.py``) a workdir gets the project's detectors through its
own commands, then ``select`` chooses, then the test split judges:

1. ``train --encoder``: k-NN (a-priori default settings), Mahalanobis one-class, and
   class-conditional Mahalanobis and the softmax classifier when the ID texts have labels;
2. with ``--pretrain_dir``: the fine-tuned teacher, the from-scratch LM and the MLKD student
   (``cpu`` preset; on the small AG News / 20NG sets warm-up 20 steps, and 30 epochs on 20NG as
   in the paper), and the default hybrid (MLKD + k-NN). For CLINC150, ``--clinc_runs`` reuses
   finished MLKD runs (``benchmarks/clinc150_ood.py`` workdirs, one per seed) instead;
3. ``evaluate`` (every trained detector), ``select``, ``evaluate --detectors selected``;
4. analysis only (after the choice is written): every candidate ``select`` ranked is scored on
   the test split, to place the choice between the best and the worst candidate and to measure
   how well the proxy AUROC ranks the candidates (Spearman correlation with the test AUROC).

Results: ``WORKDIR/results.{json,md}`` (rewritten after every configuration; finished ones are
skipped on a re-run) and ``WORKDIR/proxy_vs_test.png``.

Usage (encoder detectors only; minutes per configuration)::

  SSL_DATA_DIR=../shared/data .venv/bin/python -m benchmarks.ood_selection --workdir runs/selection_enc

With the language models (AG News and 20NG fine-tune the pre-trained teacher; CLINC150 reuses
the 3 seeds of the MLKD benchmark)::

  SSL_DATA_DIR=../shared/data nohup .venv/bin/python -m benchmarks.ood_selection --workdir runs/selection \\
      --pretrain_dir runs/pt_q4x256 --clinc_runs runs/mlkd_v3_s0,runs/mlkd_v3_s1,runs/mlkd_v3_s2 \\
      > runs/selection.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time

import numpy as np

import text_ood  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from benchmarks.ood_datasets import CONFIGS, write_config
from core.env import data_root
from text_ood.__main__ import main as text_ood_main
from text_ood.metrics import auroc, far95

logger = logging.getLogger("benchmark")

SMALL_DATA = ["--set", "teacher.warmup_steps=20", "--set", "student.warmup_steps=20",
              "--set", "scratch.warmup_steps=20"]
BUDGETS = {"ag_news": SMALL_DATA,
           "20ng": SMALL_DATA + ["--set", "teacher.epochs=30", "--set", "student.epochs=30",
                                 "--set", "scratch.epochs=30"]}


def _run(argv: list[str]) -> None:
    logger.info("python -m text_ood %s", " ".join(argv))
    if text_ood_main(argv) != 0:
        raise RuntimeError(f"text_ood {argv[0]} failed")


def _trained(workdir: str) -> list[str]:
    """Detectors ``train`` saved in ``workdir`` (``detectors/<name>/detector.json``)."""
    directory = os.path.join(workdir, "detectors")
    return [n for n in (os.listdir(directory) if os.path.isdir(directory) else [])
            if os.path.isfile(os.path.join(directory, n, "detector.json"))]


def train_config(workdir, data_flags, encoder, has_labels, pretrain_dir, budget) -> None:
    """Steps 1-2 of the module docstring (each skipped when already done)."""
    embedding = ["knn", "mahalanobis_one_class"] + (["mahalanobis", "classifier"] if has_labels else [])
    missing = [d for d in embedding if d not in _trained(workdir)]
    if missing:
        _run(["train", *data_flags, "--workdir", workdir, "--encoder", encoder,
              "--detectors", ",".join(missing), *budget])
    if pretrain_dir and not {"teacher", "scratch", "mlkd"} <= set(_trained(workdir)):
        _run(["train", *data_flags, "--workdir", workdir, "--teacher", pretrain_dir,
              "--detectors", "teacher,scratch,mlkd", *budget])
    if {"mlkd", "knn"} <= set(_trained(workdir)) and "hybrid" not in _trained(workdir):
        _run(["train", *data_flags, "--workdir", workdir, "--detectors", "hybrid", *budget])


def test_analysis(workdir: str, dataset) -> dict:
    """Test AUROC / FAR95 of every candidate in selection.json (analysis only, after the choice)."""
    from text_ood.candidates import Candidate, CandidateScorer
    from text_ood.workdir import load_context

    ctx = load_context(workdir, dataset)
    with open(os.path.join(workdir, "selection.json")) as f:
        document = json.load(f)
    candidates = [Candidate.from_dict(c) for c in document["candidates"]]
    sets = {"val": list(ctx.dataset.id_val), "id_test": list(ctx.dataset.id_test),
            "ood_test": list(ctx.dataset.ood_test)}
    scorer = CandidateScorer(ctx)
    scores = scorer.score([c for c in candidates if c.family != "hybrid" or c.trained], sets)
    scores = scorer.score([c for c in candidates if c.family == "hybrid" and not c.trained], sets,
                          known=scores)
    rows = []
    for entry, c in zip(document["candidates"], candidates):
        s = scores[c.label]
        rows.append({"label": c.label, "family": c.family, "trained": c.trained,
                     "proxy_auroc": entry["proxy_auroc"], "proxy_far95": entry["proxy_far95"],
                     "test_auroc": auroc(s["id_test"], s["ood_test"]),
                     "test_far95": far95(s["id_test"], s["ood_test"])})
    return {"rows": rows, "spearman": _spearman([r["proxy_auroc"] for r in rows],
                                                [r["test_auroc"] for r in rows])}


def _spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def summarise(name: str, workdir: str, analysis: dict) -> dict:
    """The choice next to the best / worst candidate and trained detector on the test split."""
    with open(os.path.join(workdir, "eval.json")) as f:
        evaluation = json.load(f)["detectors"]
    with open(os.path.join(workdir, "selection.json")) as f:
        chosen = json.load(f)["selected"]
    rows = analysis["rows"]
    named = [r for r in rows if r["trained"]]
    by_test = sorted(rows, key=lambda r: -r["test_auroc"])

    def pick(r):
        return {"label": r["label"], "auroc": r["test_auroc"], "far95": r["test_far95"]}

    selected = evaluation["selected"]
    return {
        "config": name, "selected": {"label": chosen["label"], "proxy_auroc": chosen["proxy_auroc"],
                                     "auroc": selected["auroc"], "far95": selected["far95"],
                                     "aupr_out": selected["aupr_out"], "aupr_in": selected["aupr_in"]},
        "best_candidate": pick(by_test[0]), "worst_candidate": pick(by_test[-1]),
        "best_trained": pick(max(named, key=lambda r: r["test_auroc"])),
        "worst_trained": pick(min(named, key=lambda r: r["test_auroc"])),
        "selected_test_rank": 1 + [r["label"] for r in by_test].index(chosen["label"]),
        "candidates": len(rows), "spearman_proxy_vs_test": analysis["spearman"],
        "trained_detectors": {k: {m: v[m] for m in ("auroc", "far95")} for k, v in evaluation.items()},
    }


def write_markdown(results: dict, path: str) -> None:
    lines = ["| configuration | selected (no OoD data) | AUROC | FAR95 | best candidate on test | AUROC | "
             "gap | worst candidate | AUROC | best trained detector | AUROC | rank | Spearman |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["configs"].values():
        sel, best, worst, bt = s["selected"], s["best_candidate"], s["worst_candidate"], s["best_trained"]
        lines.append(f"| {s['config']} | {sel['label']} | {100 * sel['auroc']:.2f} | {100 * sel['far95']:.2f} | "
                     f"{best['label']} | {100 * best['auroc']:.2f} | {100 * (best['auroc'] - sel['auroc']):.2f} | "
                     f"{worst['label']} | {100 * worst['auroc']:.2f} | {bt['label']} | {100 * bt['auroc']:.2f} | "
                     f"{s['selected_test_rank']}/{s['candidates']} | {s['spearman_proxy_vs_test']:.2f} |")
    lines += ["", "Trained detectors (test AUROC / FAR95):", ""]
    names = sorted({n for s in results["configs"].values() for n in s["trained_detectors"]})
    lines += ["| configuration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in results["configs"].values():
        cells = [f"{100 * s['trained_detectors'][n]['auroc']:.2f} / {100 * s['trained_detectors'][n]['far95']:.2f}"
                 if n in s["trained_detectors"] else "-" for n in names]
        lines.append(f"| {s['config']} | " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_proxy_vs_test(analyses: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from text_ood.selection import FAMILY_COLOURS

    n = len(analyses)
    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.6 * cols, 3.3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (name, (analysis, selected)) in zip(axes.ravel(), analyses.items()):
        for r in analysis["rows"]:
            ax.scatter(100 * r["proxy_auroc"], 100 * r["test_auroc"], s=9 if not r["trained"] else 22,
                       color=FAMILY_COLOURS.get(r["family"], "grey"), alpha=0.7)
            if r["label"] == selected:
                ax.scatter(100 * r["proxy_auroc"], 100 * r["test_auroc"], s=90, facecolors="none",
                           edgecolors="black")
        ax.set_title(f"{name} (Spearman {analysis['spearman']:.2f})", fontsize=8)
        ax.set_xlabel("proxy AUROC (ID val vs proxy)", fontsize=7)
        ax.set_ylabel("test AUROC", fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("select: proxy criterion vs test AUROC per candidate (circle = chosen)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/selection",
                        help="one workdir per configuration, results.{json,md}, proxy_vs_test.png (re-running "
                             "skips finished configurations; default: runs/selection)")
    parser.add_argument("--data_dir", default=None, help="data root (default: $SSL_DATA_DIR)")
    parser.add_argument("--configs", default=",".join(["clinc150"] + CONFIGS),
                        help="comma-separated configurations: clinc150 and those of benchmarks/ood_datasets.py "
                             "(default: all)")
    parser.add_argument("--encoder", default=None, help="default: DATA_DIR/models/all-MiniLM-L6-v2")
    parser.add_argument("--pretrain_dir", default=None,
                        help="a finished `pretrain` workdir: also train teacher / from scratch / MLKD")
    parser.add_argument("--clinc_runs", default=None,
                        help="comma-separated finished MLKD workdirs (seeds) reused for CLINC150")
    parser.add_argument("--start_from", default=None,
                        help="an earlier WORKDIR of this benchmark (e.g. encoder detectors only): each "
                             "configuration starts from a copy of its workdir there (trained "
                             "detectors and embedding caches; not its selection or evaluation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = data_root(args.data_dir)
    if root is None:
        parser.error("pass --data_dir or set $SSL_DATA_DIR")
    from benchmarks.clinc150_encoders import prepare_hybrid_workdir
    from text_ood.data import load_dataset

    encoder = args.encoder or os.path.join(root, "models", "all-MiniLM-L6-v2")
    results_path = os.path.join(args.workdir, "results.json")
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "configs": {}, "analyses": {}}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
    jobs = []
    for name in args.configs.split(","):
        if name == "clinc150":
            sources = args.clinc_runs.split(",") if args.clinc_runs else [None]
            for source in sources:
                label = f"clinc150_{os.path.basename(os.path.normpath(source))}" if source else "clinc150"
                jobs.append((label, ["--dataset", "clinc150", "--data_dir", root], True, source, []))
        else:
            directory = write_config(name, os.path.join(args.workdir, "data"), root)
            jobs.append((name, ["--dataset", "files", "--input", directory], name.startswith("20ng"),
                         None, BUDGETS["ag_news" if name.startswith("ag_news") else "20ng"]))
    for label, data_flags, has_labels, source, budget in jobs:
        if label in results["configs"]:
            continue
        start = time.time()
        workdir = os.path.join(args.workdir, label)
        earlier = os.path.join(args.start_from, label) if args.start_from else None
        if source and args.start_from and not os.path.isdir(workdir):  # CLINC150 seeds: the caches
            cache = os.path.join(args.start_from, "clinc150", "embeddings")
            if os.path.isdir(cache):
                shutil.copytree(cache, os.path.join(workdir, "embeddings"), copy_function=os.link)
        elif earlier and os.path.isdir(earlier) and not os.path.isdir(workdir):
            shutil.copytree(earlier, workdir, ignore=shutil.ignore_patterns(
                "selection.*", "selected", "scores", "eval.json", "roc.png"))
            with open(os.path.join(workdir, "run.json")) as f:
                run = json.load(f)
            run["detectors"] = [d for d in run.get("detectors", []) if d != "selected"]
            with open(os.path.join(workdir, "run.json"), "w") as f:
                json.dump(run, f, indent=2)
        if source:
            prepare_hybrid_workdir(source, workdir)  # the finished MLKD student (and tokenizer)
            for stage in ("teacher", "scratch"):
                if not os.path.isdir(os.path.join(workdir, stage)):
                    shutil.copytree(os.path.join(source, stage), os.path.join(workdir, stage),
                                    ignore=shutil.ignore_patterns("ckpt"))
        train_config(workdir, data_flags, encoder, has_labels, None if source else args.pretrain_dir, budget)
        if source:
            missing = [d for d in ("teacher", "scratch", "mlkd") if d not in _trained(workdir)]
            if missing:  # detectors on the copied stages (nothing is retrained: the stages are done)
                _run(["train", *data_flags, "--workdir", workdir, "--detectors", ",".join(missing)])
            if "hybrid" not in _trained(workdir):
                _run(["train", *data_flags, "--workdir", workdir, "--detectors", "hybrid"])
        _run(["evaluate", "--workdir", workdir])
        select_start = time.time()
        _run(["select", "--workdir", workdir])
        select_s = time.time() - select_start
        _run(["evaluate", "--workdir", workdir, "--detectors", "selected"])
        with open(os.path.join(workdir, "run.json")) as f:
            run = json.load(f)
        analysis = test_analysis(workdir, load_dataset(run["dataset"], run["data_dir"]))
        summary = summarise(label, workdir, analysis)
        with open("/proc/loadavg") as f:
            summary.update({"wall_s": time.time() - start, "select_s": select_s,
                            "load_average": f.read().split()[:3]})
        results["configs"][label] = summary
        results["analyses"][label] = analysis
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)
        write_markdown(results, os.path.join(args.workdir, "results.md"))
        plot_proxy_vs_test({k: (v, results["configs"][k]["selected"]["label"])
                            for k, v in results["analyses"].items()},
                           os.path.join(args.workdir, "proxy_vs_test.png"))
    with open(os.path.join(args.workdir, "results.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
