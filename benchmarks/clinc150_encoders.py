"""CLINC150: sentence-encoder OoD detectors (k-NN, Mahalanobis) and the MLKD + k-NN hybrid (issue 7).

Protocol as ``benchmarks/clinc150_ood.py`` (the paper's): fit on the 15,000 in-scope training
queries, standardise / calibrate on the 3,000 in-scope validation queries, test on 4,500 in-scope
(ID) + 1,000 out-of-scope (OoD) queries; OoD is the positive class. Every number comes from the
project's own path: ``python -m text_ood train --encoder ...`` then ``evaluate``.

Rows:
- ``knn``: the a-priori default (sentence-transformers embedding = last layer, k = 1).
- ``knn_mean10``: the issue's measured peer (mean similarity of the 10 nearest), reproduced.
- ``mahalanobis`` (class-conditional: uses the intent labels) and ``mahalanobis_one_class``.
- ``knn_selected``: k-NN with ``pool_layers`` / ``knn_k`` / ``knn_aggregation`` / ``knn_center``
  chosen *without any OoD text* by held-out-intent validation: ``--heldout_repeats`` times,
  ``--heldout_intents`` of the 150 intents are removed from the bank (ID training texts) and their
  ID validation texts play OoD against the validation texts of the other intents (with
  ``knn_center`` the mean of that reduced bank is subtracted, as ``fit`` would); the setting with
  the best mean AUROC wins. The detector itself is label-free; the intent labels are used for
  this selection only (stated as such in BENCHMARKS.md).
- ``hybrid`` (MLKD student + k-NN, default and selected k-NN), one row per MLKD seed: finished
  MLKD students are reused from ``--mlkd_runs`` (``benchmarks/clinc150_ood.py``'s workdir; read
  only, copied); for a seed without one, the teacher is fine-tuned and the student distilled here
  (``WORKDIR/mlkd_seed<N>``) from ``--mlkd_runs``' pre-trained LM, with the configuration of that
  workdir's first finished seed, so every seed uses the same recipe.

Finally the selected k-NN (and a hybrid) are exported and their SavedModel scoring throughput is
measured in a fresh process at ``--throughput_batch`` (``--knn_only`` stops after the k-NN /
Mahalanobis rows: no hybrids, no exports). Results: ``WORKDIR/results.{json,md}``
(rewritten after every step; a rerun skips finished steps), ``WORKDIR/selection.png``.

Usage (about an hour on 2 shared CPU cores, most of it embedding and exporting)::

  SSL_DATA_DIR=../shared/data python -m benchmarks.clinc150_encoders \
      --workdir runs/bench_encoders --mlkd_runs runs/bench_clinc150 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

import text_ood  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from benchmarks.clinc150_ood import PAPER, _mean_std
from core.env import data_root
from text_ood.__main__ import main as text_ood_main
from text_ood.metrics import ood_metrics

# Measured by the session that filed issue 7 (same protocol, all-MiniLM-L6-v2 embeddings).
PEERS = {"k-NN, mean similarity of 10 nearest (label-free)": (96.35, 84.56, 16.4),
         "logistic-regression entropy (uses intent labels)": (97.20, 89.31, 12.4)}
VARIANTS = {  # workdir -> (detectors, encoder overrides); "selected" gets its overrides later
    "default": ("knn,mahalanobis,mahalanobis_one_class", []),
    "mean10": ("knn", ["encoder.knn_k=10", "encoder.knn_aggregation=mean"]),
}
ROWS = [("knn", "default", "knn", "k-NN (last layer, k=1; label-free)"),
        ("knn_mean10", "mean10", "knn", "k-NN mean of 10 nearest (the peer, reproduced)"),
        ("mahalanobis", "default", "mahalanobis", "Mahalanobis, class-conditional (labels)"),
        ("mahalanobis_one_class", "default", "mahalanobis_one_class", "Mahalanobis, one-class"),
        ("knn_selected", "selected", "knn", "k-NN, selected on held-out intents (label-free)")]
GRID_K = (1, 2, 3, 5, 10)
TRAIN_SECTIONS = ("seed", "model", "teacher", "student", "scratch", "distill")
# Like clinc150_ood.py's THROUGHPUT_CODE, plus the process CPU seconds of the timed loop: on the
# shared 2-core machine wall time depends on the other jobs, CPU time per text much less.
THROUGHPUT_CODE = r"""
import json, sys, time
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops of the SavedModel
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
texts = json.load(open(sys.argv[2]))
batch = int(sys.argv[3])
batches = [tf.constant(texts[i:i + batch]) for i in range(0, len(texts), batch)]
serve(text=batches[0])  # warm-up
wall, cpu = time.perf_counter(), time.process_time()
n = sum(int(serve(text=b)["ood_score"].shape[0]) for b in batches)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"texts": n, "seconds": wall, "texts_per_s": n / wall, "cpu_seconds": cpu,
                  "texts_per_cpu_s": n / cpu, "batch": batch}))
"""

logger = logging.getLogger("benchmark")


def _run(argv: list[str]) -> None:
    logger.info("python -m text_ood %s", " ".join(argv))
    if text_ood_main(argv) != 0:
        raise RuntimeError(f"text_ood {argv[0]} failed")


def _flat_overrides(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flat_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out


def _evaluate_workdir(workdir, detectors, root, encoder, config_flags, shared_cache) -> dict:
    """``train`` + ``evaluate`` of ``detectors`` in ``workdir``; returns eval.json's rows."""
    os.makedirs(workdir, exist_ok=True)
    link = os.path.join(workdir, "embeddings")
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(shared_cache), link)  # the cache is keyed by encoder + texts
    start = time.time()
    _run(["train", "--dataset", "clinc150", "--data_dir", root, "--workdir", workdir, "--encoder",
          encoder, "--detectors", detectors, *config_flags])
    fit_s = time.time() - start
    _run(["evaluate", "--workdir", workdir, "--detectors", detectors])
    with open(os.path.join(workdir, "eval.json")) as f:
        rows = json.load(f)["detectors"]
    return {name: {**rows[name], "train_s": fit_s} for name in detectors.split(",")}


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of float32 [N, D] scaled to unit L2 norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def heldout_intent_selection(encoder_dir, dataset_path, n_intents, repeats, cache_path) -> dict:
    """Chooses pool_layers, k, aggregation and centring of k-NN on ID data only (module docstring).

    ``cache_path`` (.npz) holds the unit-norm pooled states of every layer, float32 [N, L + 1, D],
    of the ID training (``train``) and validation (``val``) texts; computed if missing.
    """
    from text_ood.encoder import SentenceEncoder

    with open(dataset_path) as f:
        raw = json.load(f)
    train_labels = np.array([r[1] for r in raw["train"]])
    val_labels = np.array([r[1] for r in raw["val"]])
    if os.path.isfile(cache_path):
        layers = np.load(cache_path)
        train_layers, val_layers = layers["train"], layers["val"]
    else:
        encoder = SentenceEncoder.from_directory(encoder_dir)
        train_layers = encoder.embed([r[0] for r in raw["train"]], all_layers=True)
        val_layers = encoder.embed([r[0] for r in raw["val"]], all_layers=True)
        np.savez(cache_path, train=train_layers, val=val_layers)
    intents = np.unique(train_labels)
    rng = np.random.default_rng(0)
    splits = [rng.choice(intents, n_intents, replace=False) for _ in range(repeats)]
    table = []
    for pool, center in itertools.product(range(1, train_layers.shape[1] + 1), (False, True)):
        pooled_train = _unit(train_layers[:, -pool:].mean(axis=1))  # [N_train, D]
        pooled_val = _unit(val_layers[:, -pool:].mean(axis=1))  # [N_val, D]
        sorted_sims = []
        for held in splits:
            bank, queries = pooled_train[~np.isin(train_labels, held)], pooled_val
            if center:  # KNNHead(center=True) on this bank
                mean = bank.mean(axis=0)
                bank, queries = _unit(bank - mean), _unit(queries - mean)
            similarity = queries @ bank.T  # [N_val, N_bank]
            nearest = np.partition(similarity, -max(GRID_K), axis=1)[:, -max(GRID_K):]
            sorted_sims.append((np.sort(nearest, axis=1)[:, ::-1], np.isin(val_labels, held)))
        for k in GRID_K:
            for aggregation in (("kth",) if k == 1 else ("kth", "mean")):
                metrics = []
                for top, is_held in sorted_sims:
                    score = 1 - (top[:, k - 1] if aggregation == "kth" else top[:, :k].mean(1))
                    metrics.append(ood_metrics(score[~is_held], score[is_held]))
                table.append({"pool_layers": pool, "knn_k": k, "knn_aggregation": aggregation,
                              "knn_center": center,
                              **{m: float(np.mean([x[m] for x in metrics]))
                                 for m in ("auroc", "far95")}})
    best = max(table, key=lambda row: (row["auroc"], -row["far95"]))
    return {"table": table, "selected": best, "held_out_intents": n_intents, "repeats": repeats}


def plot_selection(selection: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, center in zip(axes, (False, True)):
        for k in GRID_K:
            for aggregation, style in (("kth", "-"), ("mean", "--")):
                rows = [r for r in selection["table"] if r["knn_k"] == k and r.get(
                    "knn_center", False) == center and r["knn_aggregation"] == aggregation]
                if rows:
                    ax.plot([r["pool_layers"] for r in rows], [100 * r["auroc"] for r in rows],
                            style, marker="o", markersize=3, label=f"k={k} {aggregation}")
        ax.set_xlabel("pool_layers (last n hidden layers averaged)")
        ax.set_title(f"k-NN, {'centred' if center else 'uncentred'} embeddings")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out-intent AUROC (ID data only)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("k-NN setting selection without OoD texts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _config_flags(source: str) -> list[str]:
    """``--preset`` / ``--set`` flags reproducing the training sections of ``source/config.json``."""
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    return ["--preset", config.get("preset", "cpu")] + [
        x for o in _flat_overrides({k: config[k] for k in TRAIN_SECTIONS}) for x in ("--set", o)]


def prepare_hybrid_workdir(source: str, target: str) -> list[str]:
    """Copies an MLKD run's finished student (not its checkpoints); returns its config flags."""
    os.makedirs(target, exist_ok=True)
    for name in ("config.json", "run.json"):
        shutil.copy(os.path.join(source, name), target)
    for name in ("tokenizer", "mlkd"):
        if not os.path.isdir(os.path.join(target, name)):
            shutil.copytree(os.path.join(source, name), os.path.join(target, name),
                            ignore=shutil.ignore_patterns("ckpt"))
    return _config_flags(source)


def train_missing_student(mlkd_runs: str, seed: int, target: str, root: str) -> str:
    """Trains seed ``seed``'s MLKD student like ``mlkd_runs``' finished seeds; returns its workdir."""
    finished = sorted(d for d in os.listdir(mlkd_runs) if d.startswith("seed") and d[4:].isdigit()
                      and os.path.isfile(os.path.join(mlkd_runs, d, "mlkd", "done.json")))
    if not finished:
        raise FileNotFoundError(f"no finished MLKD seed in {mlkd_runs} to copy the recipe from")
    flags = _config_flags(os.path.join(mlkd_runs, finished[0]))
    _run(["train", "--dataset", "clinc150", "--data_dir", root, "--workdir", target,
          "--teacher", os.path.join(mlkd_runs, "pretrain"), "--detectors", "mlkd", *flags,
          "--set", f"seed={seed}"])
    return target


def hybrid_analysis(workdir: str, clinc: str) -> dict:
    """ID-validation correlation of the components, and (test-set, analysis only) weight sweep."""
    from text_ood.data import load_clinc150
    from text_ood.detectors import create_detector
    from text_ood.workdir import load_context

    ctx = load_context(workdir, load_clinc150(clinc))
    hybrid = create_detector("hybrid", ctx).restore(ctx.detector_dir("hybrid"))  # as `train` saved it
    val = np.stack([c.score(ctx.dataset.id_val) for c in hybrid.components], axis=1)
    test = {name: np.load(os.path.join(workdir, "scores", f"{name}.npz"))
            for name in ("mlkd", "knn")}
    sweep = {}
    for w in (0.0, 0.1, 0.2, 0.3, 0.5):
        z = {s: sum(wi * (test[n][s] - m) / sd for wi, n, m, sd in
                    zip((w, 1 - w), ("mlkd", "knn"), hybrid.means, hybrid.scales))
             for s in ("id", "ood")}
        sweep[str(w)] = ood_metrics(z["id"], z["ood"])
    return {"val_correlation": float(np.corrcoef(val, rowvar=False)[0, 1]),
            "weights": hybrid.weights.tolist(), "test_weight_sweep_analysis_only": sweep}


def measure_throughput(workdir, detector, export_dir, texts_path, batch) -> dict:
    """Exports ``detector`` (once) and times its SavedModel in a fresh process."""
    if not any(v.isdigit() for v in (os.listdir(export_dir) if os.path.isdir(export_dir) else [])):
        _run(["export", "--workdir", workdir, "--export_dir", export_dir, "--detector", detector])
    version = max(int(v) for v in os.listdir(export_dir) if v.isdigit())
    out = subprocess.run([sys.executable, "-c", THROUGHPUT_CODE,
                          os.path.join(export_dir, str(version)), texts_path, str(batch)],
                         capture_output=True, text=True, check=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load_average": load}


def _cells(rows: list[dict]) -> list[str]:
    cells = []
    for key in ("auroc", "aupr_out", "aupr_in", "far95"):
        mean, std = _mean_std([100 * r[key] for r in rows])
        cells.append(f"{mean:.2f} ± {std:.2f}" if len(rows) > 1 else f"{mean:.2f}")
    return cells


def write_markdown(results: dict, path: str) -> None:
    lines = ["| detector | AUROC | AUPR-OUT | AUPR-IN | FAR95 |", "|---|---|---|---|---|"]
    for key, _, _, label in ROWS:
        if key in results["rows"]:
            lines.append(f"| {label} | " + " | ".join(_cells([results["rows"][key]])) + " |")
    for variant in ("default", "selected"):
        runs = [s for s in results.get("hybrid", {}).get(variant, {}).values() if "hybrid" in s]
        if runs:
            seeds = ",".join(str(s["seed"]) for s in runs)
            for name, label in (("mlkd", "MLKD student alone"), ("hybrid", "hybrid MLKD + k-NN")):
                lines.append(f"| {label} ({variant} k-NN; seeds {seeds}) | " +
                             " | ".join(_cells([s[name] for s in runs])) + " |")
    for label, (a, p, f) in PEERS.items():
        lines.append(f"| peer (issue 7): {label} | {a:.2f} | {p:.2f} | n/a | {f:.2f} |")
    a, p, f = PAPER["mlkd"]
    lines.append(f"| paper: MLKD (GPT-2 small, 5 seeds) | {a:.2f} | {p:.2f} | n/a | {f:.2f} |")
    for variant, seeds in results.get("hybrid", {}).items():
        for s in seeds.values():
            if "analysis" in s:
                a = s["analysis"]
                sweep = ", ".join(f"w={w}: {100 * m['auroc']:.2f} / {100 * m['far95']:.2f}"
                                  for w, m in a["test_weight_sweep_analysis_only"].items())
                lines.append(f"\nHybrid ({variant} k-NN, seed {s['seed']}): ID-validation "
                             f"correlation of the components {a['val_correlation']:.3f}, weights "
                             f"{a['weights']}; test AUROC / FAR95 if MLKD had weight w (analysis "
                             f"only, not a detector): {sweep}")
    if "selection" in results:
        s = results["selection"]["selected"]
        lines += ["", (f"Selected on held-out intents ({results['selection']['held_out_intents']} "
                       f"intents x {results['selection']['repeats']} repeats, ID data only): "
                       f"pool_layers={s['pool_layers']}, knn_k={s['knn_k']}, "
                       f"knn_aggregation={s['knn_aggregation']}, "
                       f"knn_center={s.get('knn_center', False)} (held-out AUROC "
                       f"{100 * s['auroc']:.2f}, FAR95 {100 * s['far95']:.2f})")]
    for name, t in results.get("throughput", {}).items():
        lines.append(f"\nExported `{name}` SavedModel, fresh process, batch {t['batch']}, "
                     f"{t['texts']} CLINC150 test texts: {t['texts_per_s']:.0f} texts/s wall "
                     f"({t['texts_per_cpu_s']:.0f} texts per CPU second; load average "
                     f"{' / '.join(t['load_average'])} on 2 cores)")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--workdir", default="runs/bench_encoders", help="output directory (one workdir per seed; resumable)")
    parser.add_argument("--data_dir", default=None, help="default: $SSL_DATA_DIR")
    parser.add_argument("--encoder", default=None,
                        help="default: DATA_DIR/models/all-MiniLM-L6-v2")
    parser.add_argument("--mlkd_runs", default="runs/bench_clinc150",
                        help="clinc150_ood.py workdir with seed<N>/mlkd students (read only)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--heldout_intents", type=int, default=30, help="intents held out per repeat in the held-out-class analysis")
    parser.add_argument("--heldout_repeats", type=int, default=10, help="repeats of the held-out-class analysis")
    parser.add_argument("--throughput_batch", type=int, default=256, help="batch size of the throughput measurement")
    parser.add_argument("--knn_only", action="store_true",
                        help="stop after the selection and the k-NN / Mahalanobis rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = data_root(args.data_dir)
    if root is None:
        parser.error("pass --data_dir or set $SSL_DATA_DIR")
    clinc = os.path.join(root, "text", "clinc150")
    encoder = args.encoder or os.path.join(root, "models", "all-MiniLM-L6-v2")
    cache = os.path.join(args.workdir, "embeddings")  # shared by every workdir below
    os.makedirs(cache, exist_ok=True)
    results_path = os.path.join(args.workdir, "results.json")
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "rows": {}}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)
        write_markdown(results, os.path.join(args.workdir, "results.md"))

    if "selection" not in results:
        results["selection"] = heldout_intent_selection(
            encoder, os.path.join(clinc, "data_full.json"), args.heldout_intents,
            args.heldout_repeats, os.path.join(args.workdir, "selection_layers.npz"))
        plot_selection(results["selection"], os.path.join(args.workdir, "selection.png"))
        save()
    # Selections made before knn_center was a grid dimension did not centre.
    chosen = {"knn_center": False, **results["selection"]["selected"]}
    selected = [f"encoder.{k}={chosen[k]}"
                for k in ("pool_layers", "knn_k", "knn_aggregation", "knn_center")]
    variants = {**VARIANTS, "selected": ("knn", selected)}
    for key, variant, detector, _ in ROWS:
        if key not in results["rows"]:
            detectors, overrides = variants[variant]
            flags = ["--preset", "cpu"] + [x for o in overrides for x in ("--set", o)]
            rows = _evaluate_workdir(os.path.join(args.workdir, variant), detectors, root,
                                     encoder, flags, cache)
            results["rows"].update({k: rows[d] for k, v, d, _ in ROWS if v == variant})
            save()
    if args.knn_only:
        with open(os.path.join(args.workdir, "results.md")) as f:
            print(f.read())
        return 0
    hybrids = results.setdefault("hybrid", {})
    for variant, overrides in (("default", []), ("selected", selected)):
        for seed in [int(s) for s in args.seeds.split(",")]:
            entry = hybrids.setdefault(variant, {}).get(str(seed), {})
            if "hybrid" in entry:
                continue
            source = os.path.join(args.mlkd_runs, f"seed{seed}")
            if not os.path.isfile(os.path.join(source, "mlkd", "done.json")):
                source = train_missing_student(args.mlkd_runs, seed, os.path.join(
                    args.workdir, f"mlkd_seed{seed}"), root)
            workdir = os.path.join(args.workdir, f"hybrid_{variant}_seed{seed}")
            flags = prepare_hybrid_workdir(source, workdir) + [
                x for o in overrides for x in ("--set", o)]
            rows = _evaluate_workdir(workdir, "mlkd,knn,hybrid", root, encoder, flags, cache)
            hybrids[variant][str(seed)] = {"seed": seed, "student_from": source, **rows,
                                           "analysis": hybrid_analysis(workdir, clinc)}
            save()
    throughput = results.setdefault("throughput", {})
    texts_path = os.path.join(args.workdir, "throughput_texts.json")
    if not os.path.isfile(texts_path):
        with open(os.path.join(clinc, "data_full.json")) as f:
            raw = json.load(f)
        with open(texts_path, "w") as f:
            json.dump([r[0] for r in raw["test"] + raw["oos_test"]], f)
    exports = [("knn_selected", os.path.join(args.workdir, "selected"), "knn")]
    done_hybrids = [s for s in hybrids.get("selected", {}).values() if "hybrid" in s]
    if done_hybrids:
        exports.append(("hybrid", os.path.join(
            args.workdir, f"hybrid_selected_seed{done_hybrids[0]['seed']}"), "hybrid"))
    for name, workdir, detector in exports:
        if name not in throughput:
            throughput[name] = measure_throughput(workdir, detector,
                                                  os.path.join(args.workdir, "export", name),
                                                  texts_path, args.throughput_batch)
            save()
    with open(os.path.join(args.workdir, "results.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
