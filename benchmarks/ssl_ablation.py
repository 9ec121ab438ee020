"""SSL ablation for the two-tower retrieval model: none / dropout-only / RFM / CFM (+ CFM variants).

Every run is ``python -m recsys_ssl train`` + ``evaluate`` in a subprocess, into
``OUT/<variant>/seed<k>/``; finished runs are skipped, so an interrupted benchmark resumes.

Commands::

  # Tuning on the validation split (never the eval split): a grid over --set values.
  python benchmarks/ssl_ablation.py tune --features F --out OUT --base ssl.method=cfm \\
      --grid ssl.weight=0.1,0.3,1.0 --grid ssl.temperature=0.1,0.2
  # The ablation: variants x seeds, eval split, recall@{10,50,100} overall/head/tail, paired
  # per-user bootstrap intervals against "none", training step times.
  python benchmarks/ssl_ablation.py ablation --features F --out OUT --seeds 0 1 2 [--set k=v ...]
  # Data scarcity: none vs CFM on 25 / 50 / 100 % of the training examples.
  python benchmarks/ssl_ablation.py scarcity --features F --out OUT --fractions 0.25 0.5 1.0
  # Markdown tables of what has finished.
  python benchmarks/ssl_ablation.py report --out OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np

VARIANTS = {
    "none": ["ssl.method=none"],
    "dropout": ["ssl.method=none", "train.feature_dropout=0.2"],
    "rfm": ["ssl.method=rfm"],
    "cfm": ["ssl.method=cfm"],
    "cfm_raw_grouped": ["ssl.method=cfm", "ssl.affinity=raw_mi", "ssl.identifiers=grouped"],
}
KS = (10, 50, 100)
SLICES = ("overall", "head", "tail")


def run_one(features: str, workdir: str, overrides: list[str], preset: str, split: str) -> dict:
    """Trains and evaluates one configuration (skipped when its result exists)."""
    result_path = os.path.join(workdir, "eval.json" if split == "eval" else f"eval_{split}.json")
    if os.path.isfile(result_path):
        return json.load(open(result_path))
    os.makedirs(workdir, exist_ok=True)
    log = open(os.path.join(workdir, "benchmark.log"), "a")
    command = [sys.executable, "-m", "recsys_ssl", "train", "--features", features, "--workdir", workdir,
               "--preset", preset]
    for override in overrides:
        command += ["--set", override]
    started = time.time()
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    train_seconds = time.time() - started
    subprocess.run([sys.executable, "-m", "recsys_ssl", "evaluate", "--workdir", workdir, "--split", split],
                   check=True, stdout=log, stderr=subprocess.STDOUT)
    result = json.load(open(result_path))
    with open(os.path.join(workdir, "wall_seconds.json"), "w") as f:
        json.dump({"train_seconds": train_seconds}, f)
    print(f"{workdir}: {json.dumps(result['metrics']['overall'])}", flush=True)
    return result


def tune(args) -> None:
    names = [g.split("=", 1)[0] for g in args.grid]
    values = [g.split("=", 1)[1].split(",") for g in args.grid]
    rows = []
    for combination in itertools.product(*values):
        overrides = args.base + [f"{n}={v}" for n, v in zip(names, combination)] + args.set
        tag = "_".join(f"{n.split('.')[-1]}{v}" for n, v in zip(names, combination)) or "base"
        workdir = os.path.join(args.out, "tune", "_".join(a.replace("ssl.method=", "") for a in args.base) + "_" + tag)
        result = run_one(args.features, workdir, overrides + [f"train.seed={args.seed}"], args.preset, "validation")
        rows.append((tag, result["metrics"]))
    print("\n| setting | " + " | ".join(f"{s} R@100" for s in SLICES) + " |")
    print("|---|" + "---|" * len(SLICES))
    for tag, metrics in sorted(rows, key=lambda r: -r[1]["overall"]["recall@100"]):
        print(f"| {tag} | " + " | ".join(f"{metrics[s]['recall@100']:.4f}" for s in SLICES) + " |")


def _hits(workdir: str) -> dict:
    data = np.load(os.path.join(workdir, "eval_hits.npz"))
    columns = [list(data["ks"]).index(k) for k in KS]
    return {"users": data["users"], "head": data["head"], "hits": data["hits"][:, columns].astype(np.float64)}


def paired_bootstrap(users: np.ndarray, mask: np.ndarray, hits_a: np.ndarray, hits_b: np.ndarray,
                     samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of recall(a) - recall(b) when users are resampled with replacement.

    hits_*: float [examples] (mean over seeds); mask selects the slice's examples.
    """
    unique, user_index = np.unique(users[mask], return_inverse=True)
    diff_per_user = np.bincount(user_index, weights=hits_a[mask] - hits_b[mask], minlength=len(unique))
    count_per_user = np.bincount(user_index, minlength=len(unique)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(unique), size=(samples, len(unique)))
    weights = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])
    diffs = (weights @ diff_per_user) / (weights @ count_per_user)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def ablation(args) -> None:
    for variant in args.variants:
        for seed in args.seeds:
            workdir = os.path.join(args.out, "ablation", variant, f"seed{seed}")
            run_one(args.features, workdir, VARIANTS[variant] + args.set + [f"train.seed={seed}"], args.preset, "eval")


def scarcity(args) -> None:
    for fraction in args.fractions:
        for variant in ("none", "cfm"):
            for seed in args.seeds:
                workdir = os.path.join(args.out, "scarcity", f"{variant}_f{fraction}", f"seed{seed}")
                overrides = VARIANTS[variant] + args.set + [f"train.seed={seed}", f"train.train_fraction={fraction}"]
                run_one(args.features, workdir, overrides, args.preset, "eval")


def _group_table(root: str, groups: list[str], baseline: str) -> list[str]:
    lines = []
    summaries = {}
    for group in groups:
        seeds = sorted(d for d in os.listdir(os.path.join(root, group)) if os.path.isfile(os.path.join(root, group, d, "eval.json")))
        if seeds:
            summaries[group] = [os.path.join(root, group, s) for s in seeds]
    if not summaries:
        return lines
    header = "| variant | seeds | " + " | ".join(f"{s} R@{k}" for s in SLICES for k in KS) + " | step s | step ratio |"
    lines += [header, "|---|---|" + "---|" * (len(SLICES) * len(KS) + 2)]
    step = {}
    for group, runs in summaries.items():
        step[group] = np.mean([json.load(open(os.path.join(r, "train_summary.json")))["median_step_seconds"] for r in runs])
    for group, runs in summaries.items():
        metrics = [json.load(open(os.path.join(r, "eval.json")))["metrics"] for r in runs]
        cells = []
        for s in SLICES:
            for k in KS:
                values = np.array([m[s][f"recall@{k}"] for m in metrics])
                cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}")
        ratio = step[group] / step[baseline] if baseline in step else float("nan")
        lines.append(f"| {group} | {len(runs)} | " + " | ".join(cells) + f" | {step[group] * 1000:.1f} ms | {ratio:.2f}x |")
    if baseline in summaries:
        base_hits = [_hits(r) for r in summaries[baseline]]
        base_mean = np.mean([h["hits"] for h in base_hits], axis=0)
        users, head = base_hits[0]["users"], base_hits[0]["head"]
        lines += ["", f"Paired per-user bootstrap (2,000 resamples of users), 95% interval of the difference to "
                      f"`{baseline}` (recall averaged over seeds first):", "",
                  "| variant | " + " | ".join(f"{s} ΔR@100 (ratio)" for s in SLICES) + " |", "|---|" + "---|" * len(SLICES)]
        for group, runs in summaries.items():
            if group == baseline:
                continue
            hits = np.mean([_hits(r)["hits"] for r in runs], axis=0)
            cells = []
            for s in SLICES:
                mask = np.ones(len(users), bool) if s == "overall" else (head if s == "head" else ~head)
                low, high = paired_bootstrap(users, mask, hits[:, 2], base_mean[:, 2])
                delta = hits[mask, 2].mean() - base_mean[mask, 2].mean()
                cells.append(f"{delta:+.4f} [{low:+.4f}, {high:+.4f}] ({hits[mask, 2].mean() / base_mean[mask, 2].mean():.3f}x)")
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def report(args) -> None:
    lines = []
    ablation_root = os.path.join(args.out, "ablation")
    if os.path.isdir(ablation_root):
        groups = [v for v in VARIANTS if os.path.isdir(os.path.join(ablation_root, v))]
        lines += ["### Ablation (eval split)", ""] + _group_table(ablation_root, groups, "none") + [""]
    scarcity_root = os.path.join(args.out, "scarcity")
    if os.path.isdir(scarcity_root):
        fractions = sorted({g.split("_f")[1] for g in os.listdir(scarcity_root)}, key=float)
        for fraction in fractions:
            groups = [g for g in (f"none_f{fraction}", f"cfm_f{fraction}") if os.path.isdir(os.path.join(scarcity_root, g))]
            table = _group_table(scarcity_root, groups, f"none_f{fraction}")
            if table:
                lines += [f"### Data scarcity: {float(fraction):.0%} of the training examples", ""] + table + [""]
        if all(os.path.isdir(os.path.join(ablation_root, v)) for v in ("none", "cfm")):
            lines += ["### Data scarcity: 100% of the training examples (the ablation's runs)", ""]
            lines += _group_table(ablation_root, ["none", "cfm"], "none") + [""]
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("tune", "ablation", "scarcity", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", required=True)
        if name == "report":
            continue
        sub.add_argument("--features", required=True)
        sub.add_argument("--preset", default="movielens")
        sub.add_argument("--set", action="append", default=[], help="override for every run")
        if name == "tune":
            sub.add_argument("--base", action="append", default=[])
            sub.add_argument("--grid", action="append", default=[])
            sub.add_argument("--seed", type=int, default=0)
        else:
            sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        if name == "ablation":
            sub.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
        if name == "scarcity":
            sub.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    args = parser.parse_args(argv)
    {"tune": tune, "ablation": ablation, "scarcity": scarcity, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
