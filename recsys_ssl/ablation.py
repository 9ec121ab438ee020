"""``python -m recsys_ssl ablate``: does the SSL task help on *your* data? Variants x seeds x fractions.

For every data fraction and method: SSL methods first tune alpha (``ssl.weight``) over a small
grid on the **validation** split with seed 0 (the eval split is never looked at while choosing);
then the chosen alpha (and ``none``) is trained with every seed and evaluated on the eval split.
Every run is ``python -m recsys_ssl train`` + ``evaluate`` in a subprocess, in
``OUTPUT_DIR/f<fraction>/<method>/alpha<a>/seed<k>/``; a finished run is never repeated, so an interrupted
ablation resumes where it stopped. After every run ``OUT/ablation.json``, ``OUT/ablation.md``
(mean ± std over seeds of recall@{10,50,100} per slice: overall / head / tail / cold; paired
per-user bootstrap 95% intervals of each method's difference to ``none``, and of method A minus
method B for every ``--versus A:B``) and ``OUT/ablation.png`` are rewritten from what has finished.

Example::

  python -m recsys_ssl ablate --features runs/features --output_dir runs/ablation \\
      --methods none,dropout,rfm,cfm --seeds 0,1,2 --fractions 0.25,0.5,1 --preset movielens --versus cfm:rfm
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

METHODS = {
    "none": ("ssl.method=none",),
    "dropout": ("ssl.method=feature_dropout",),  # whole features dropped per view, not complementary
    "rfm": ("ssl.method=rfm",),
    "cfm": ("ssl.method=cfm",),
}
KS = (10, 50, 100)
SLICES = ("overall", "head", "tail", "cold")
RESULT_FILES = {"eval": "eval.json", "validation": "eval_validation.json"}


def parse_methods(names: str, variants: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Method name -> overrides, from ``--methods a,b`` and ``--variant NAME=k=v,k=v`` specs.

    Raises:
      ValueError: an unknown method name, a malformed variant, or no ``none`` baseline.
    """
    methods = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)} (or define one with --variant)")
        methods[name] = METHODS[name]
    for spec in variants:
        name, _, overrides = spec.partition("=")
        if not name or "=" not in overrides:
            raise ValueError(f"--variant must look like NAME=key=value[,key=value], received {spec!r}")
        methods[name] = tuple(o.strip() for o in overrides.split(",") if o.strip())
    if "none" not in methods:
        raise ValueError("the ablation needs the 'none' baseline in --methods")
    return methods


def parse_pairs(specs: Sequence[str], methods: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """``--versus A:B`` specs -> [(A, B)]: two different methods of this ablation.

    Raises:
      ValueError: a malformed spec or a name that is not one of ``methods``.
    """
    pairs = []
    for spec in specs:
        first, separator, second = spec.partition(":")
        if not separator or not first or not second or first == second:
            raise ValueError(f"--versus must look like A:B with two different methods, received {spec!r}")
        for name in (first, second):
            if name not in methods:
                raise ValueError(f"--versus {spec!r}: {name!r} is not a method of this ablation ({sorted(methods)})")
        pairs.append((first, second))
    return pairs


def run_one(features: str, workdir: str, preset: str, overrides: Sequence[str], split: str) -> dict:
    """Trains (resuming) and evaluates one configuration on ``split``; skipped when done.

    Training runs in a subprocess (its memory is returned when it ends; a crash names its log);
    evaluation runs in this process.

    Returns:
      The evaluation document (``eval.json`` / ``eval_validation.json``) plus ``train_seconds``.
    """
    result_path = os.path.join(workdir, RESULT_FILES[split])
    if not os.path.isfile(result_path):
        os.makedirs(workdir, exist_ok=True)
        command = [sys.executable, "-m", "recsys_ssl", "train", "--features", features, "--workdir", workdir,
                   "--preset", preset] + [x for o in overrides for x in ("--set", o)]
        started = time.time()
        with open(os.path.join(workdir, "ablation.log"), "a") as log:
            if not os.path.isfile(os.path.join(workdir, "train_summary.json")):
                logging.info("training %s", workdir)
                process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
                if process.returncode:
                    raise RuntimeError(f"training failed (exit {process.returncode}); see {log.name}")
                with open(os.path.join(workdir, "wall_seconds.json"), "w") as f:
                    json.dump({"train_seconds": time.time() - started}, f)
        from recsys_ssl.evaluate import evaluate

        evaluate(workdir, split)
    with open(result_path) as f:
        result = json.load(f)
    seconds_path = os.path.join(workdir, "wall_seconds.json")
    if os.path.isfile(seconds_path):
        with open(seconds_path) as f:
            result["train_seconds"] = json.load(f)["train_seconds"]
    return result


def _format_alpha(alpha: float) -> str:
    return f"{alpha:g}"


class Ablation:
    """Runs and reports one ablation (see the module docstring)."""

    def __init__(self, features: str, out: str, methods: dict[str, tuple[str, ...]], seeds: Sequence[int],
                 fractions: Sequence[float], alphas: Sequence[float], preset: str, overrides: Sequence[str],
                 tune_metric: str = "overall", pairs: Sequence[tuple[str, str]] = ()):
        if not seeds or not fractions or not alphas:
            raise ValueError("--seeds, --fractions and --alphas must not be empty")
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"fractions must be in (0, 1], received {list(fractions)}")
        if tune_metric not in ("overall", "tail"):
            raise ValueError(f"tune_metric must be overall or tail, received {tune_metric!r}")
        self.features, self.out, self.methods = features, out, methods
        self.seeds, self.fractions, self.alphas = list(seeds), list(fractions), list(alphas)
        self.preset, self.overrides, self.tune_metric = preset, list(overrides), tune_metric
        self.pairs = list(pairs)
        self.document = {"features": os.path.abspath(features), "preset": preset, "overrides": self.overrides,
                         "methods": {k: list(v) for k, v in methods.items()}, "alphas": self.alphas,
                         "tune_metric": tune_metric, "fractions": {}}

    def _workdir(self, fraction: float, method: str, alpha: float | None, seed: int) -> str:
        tag = "base" if alpha is None else f"alpha{_format_alpha(alpha)}"
        return os.path.join(self.out, f"f{_format_alpha(fraction)}", method, tag, f"seed{seed}")

    def _overrides(self, fraction: float, method: str, alpha: float | None, seed: int) -> list[str]:
        extra = [f"train.seed={seed}", f"train.train_fraction={fraction}"]
        if alpha is not None:
            extra.append(f"ssl.weight={alpha}")
        return list(self.methods[method]) + self.overrides + extra

    def _is_ssl(self, method: str) -> bool:
        return not any(o.replace(" ", "") == "ssl.method=none" for o in self.methods[method])

    def _fixed_alpha(self, method: str) -> float | None:
        """The alpha a variant sets itself (``ssl.weight=...`` in its overrides): not tuned."""
        values = [o.split("=", 1)[1] for o in self.methods[method] if o.replace(" ", "").startswith("ssl.weight=")]
        return float(values[-1]) if values else None

    def run(self) -> dict:
        """Runs everything not yet finished; returns (and writes) the ablation document."""
        for fraction in self.fractions:
            entry = self.document["fractions"].setdefault(_format_alpha(fraction), {})
            for method in self.methods:
                record = entry.setdefault(method, {"tuning": {}, "alpha": None, "runs": []})
                alpha = self._fixed_alpha(method)
                if self._is_ssl(method) and alpha is None:
                    for candidate in self.alphas:
                        result = run_one(self.features, self._workdir(fraction, method, candidate, 0), self.preset,
                                         self._overrides(fraction, method, candidate, 0), "validation")
                        record["tuning"][_format_alpha(candidate)] = result["metrics"]
                        self.write()
                    alpha = max(self.alphas, key=lambda a: (
                        record["tuning"][_format_alpha(a)][self.tune_metric]["recall@100"], -a))
                record["alpha"] = alpha
                for seed in self.seeds:
                    workdir = self._workdir(fraction, method, alpha, seed)
                    result = run_one(self.features, workdir, self.preset,
                                     self._overrides(fraction, method, alpha, seed), "eval")
                    record["runs"] = [r for r in record["runs"] if r["seed"] != seed] + [
                        {"seed": seed, "workdir": workdir, "metrics": result["metrics"],
                         "train_seconds": result.get("train_seconds")}]
                    self.write()
        return self.document

    # -- reporting ---------------------------------------------------------------------------------
    def compare(self, fraction: float, pairs: Sequence[tuple[str, str]]) -> dict:
        """Paired per-user bootstrap of method A minus method B at ``fraction``, for every (A, B) in
        ``pairs`` whose runs exist: {(A, B): {slice: {"recall@K": {difference, interval95, ratio}}}}.
        Each method's hits are read once, however many pairs it appears in."""
        entry = self.document["fractions"].get(_format_alpha(fraction), {})
        runs = {m: [r["workdir"] for r in entry.get(m, {}).get("runs", [])] for pair in pairs for m in pair}
        hits = {m: _mean_hits(workdirs) for m, workdirs in runs.items() if workdirs}
        return {(a, b): paired_difference(hits[a], hits[b]) for a, b in pairs if a in hits and b in hits}

    def write(self) -> None:
        for fraction in self.fractions:
            entry = self.document["fractions"].get(_format_alpha(fraction))
            if entry:
                to_none = [(m, "none") for m in entry if m != "none" and not m.startswith("_")]
                differences = self.compare(fraction, to_none + self.pairs)
                entry["_vs_none"] = {a: differences[(a, b)] for a, b in to_none if (a, b) in differences}
                if self.pairs:
                    entry["_pairs"] = {f"{a} - {b}": differences[(a, b)] for a, b in self.pairs
                                       if (a, b) in differences}
        os.makedirs(self.out, exist_ok=True)
        tmp = os.path.join(self.out, "ablation.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.document, f, indent=1)
        os.replace(tmp, os.path.join(self.out, "ablation.json"))
        with open(os.path.join(self.out, "ablation.md"), "w") as f:
            f.write(markdown(self.document))
        plot(self.document, os.path.join(self.out, "ablation.png"))


def paired_difference(ours: dict, theirs: dict) -> dict:
    """Recall differences ``ours - theirs`` with paired per-user bootstrap 95% intervals.

    Args:
      ours, theirs: ``_mean_hits`` of two methods (the same eval examples, in the same order).

    Returns:
      {slice: {"recall@K": {"difference", "interval95": [low, high], "ratio" (None if theirs is 0)}}}
      for the slices with examples.
    """
    from recsys_ssl.metrics import paired_bootstrap  # TensorFlow: only when there is something to compare

    result = {}
    for name in SLICES:
        mask = theirs["slices"][name]
        if not mask.any():
            continue
        result[name] = {}
        for column, k in enumerate(KS):
            a, b = ours["hits"][mask, column].mean(), theirs["hits"][mask, column].mean()
            low, high = paired_bootstrap(theirs["users"], mask, ours["hits"][:, column], theirs["hits"][:, column])
            result[name][f"recall@{k}"] = {"difference": float(a - b), "interval95": [low, high],
                                           "ratio": float(a / b) if b > 0 else None}
    return result


def _mean_hits(workdirs: Sequence[str]) -> dict:
    """Hits at KS averaged over seeds (the eval examples are identical across runs), with slices."""
    loaded = [np.load(os.path.join(w, "eval_hits.npz")) for w in workdirs]
    columns = [list(loaded[0]["ks"]).index(k) for k in KS]
    head = loaded[0]["head"]
    cold = loaded[0]["cold"] if "cold" in loaded[0] else np.zeros_like(head)
    return {"users": loaded[0]["users"], "hits": np.mean([d["hits"][:, columns] for d in loaded], axis=0),
            "slices": {"overall": np.ones_like(head), "head": head, "tail": ~head, "cold": cold}}


def _runs_table(entry: dict) -> list[str]:
    lines = ["| method | alpha | seeds | " + " | ".join(f"{s} R@{k}" for s in SLICES for k in KS) + " |",
             "|---|---|---|" + "---|" * (len(SLICES) * len(KS))]
    for method, record in entry.items():
        if method.startswith("_") or not record["runs"]:
            continue
        cells = []
        for name in SLICES:
            for k in KS:
                values = np.array([r["metrics"].get(name, {}).get(f"recall@{k}", np.nan) for r in record["runs"]])
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append("n/a" if np.isnan(values).all() else f"{values.mean():.4f} ± {std:.4f}")
        alpha = "-" if record["alpha"] is None else _format_alpha(record["alpha"])
        lines.append(f"| {method} | {alpha} | {len(record['runs'])} | " + " | ".join(cells) + " |")
    return lines


def _difference_table(comparison: dict) -> list[str]:
    lines = ["| method | " + " | ".join(SLICES) + " |", "|---|" + "---|" * len(SLICES)]
    for method, slices in comparison.items():
        cells = []
        for name in SLICES:
            cell = slices.get(name, {}).get("recall@100")
            cells.append("n/a" if cell is None else
                         f"{cell['difference']:+.4f} [{cell['interval95'][0]:+.4f}, {cell['interval95'][1]:+.4f}]"
                         + (f" ({cell['ratio']:.3f}x)" if cell["ratio"] is not None else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(document: dict) -> str:
    """The ablation's tables (eval split) and the alpha tuning (validation split)."""
    lines = [f"Features: `{document['features']}`; preset `{document['preset']}`; overrides "
             f"{document['overrides'] or 'none'}; alpha grid {document['alphas']} tuned on validation "
             f"{document['tune_metric']} recall@100 with seed 0.", ""]
    for fraction, entry in document["fractions"].items():
        lines += [f"### {float(fraction):.0%} of the training examples", "", "Eval split, mean ± std over seeds:", ""]
        lines += _runs_table(entry)
        for key, title in (("_vs_none", "Difference to `none`"), ("_pairs", "Method A minus method B")):
            if entry.get(key):
                lines += ["", f"{title} at R@100, paired per-user bootstrap (2,000 resamples), 95% interval, "
                              "ratio:", ""] + _difference_table(entry[key])
        tuning = [(m, r) for m, r in entry.items() if not m.startswith("_") and r["tuning"]]
        if tuning:
            lines += ["", "Alpha tuning (validation split, seed 0), overall / tail R@100:", ""]
            for method, record in tuning:
                lines.append(f"- {method}: " + ", ".join(
                    f"alpha {a}: {m['overall']['recall@100']:.4f} / {m['tail']['recall@100']:.4f}"
                    for a, m in record["tuning"].items()))
        lines.append("")
    return "\n".join(lines)


def plot(document: dict, path: str) -> None:
    """Recall@100 per slice and method (mean over seeds, error bar = std), one panel per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [(f, e) for f, e in document["fractions"].items() if any(
        not m.startswith("_") and r["runs"] for m, r in e.items())]
    if not fractions:
        return
    figure, axes = plt.subplots(1, len(fractions), figsize=(6 * len(fractions), 4.2), squeeze=False)
    for axis, (fraction, entry) in zip(axes[0], fractions):
        methods = [m for m, r in entry.items() if not m.startswith("_") and r["runs"]]
        width = 0.8 / max(len(methods), 1)
        for index, method in enumerate(methods):
            runs = entry[method]["runs"]
            means, stds = [], []
            for name in SLICES:
                values = np.array([r["metrics"].get(name, {}).get("recall@100", np.nan) for r in runs], dtype=float)
                means.append(np.nanmean(values) if not np.isnan(values).all() else 0.0)
                stds.append(np.nanstd(values) if len(values) > 1 else 0.0)
            positions = np.arange(len(SLICES)) + (index - (len(methods) - 1) / 2) * width
            axis.bar(positions, means, width, yerr=stds, capsize=3, label=f"{method} ({len(runs)} seeds)")
        axis.set_xticks(np.arange(len(SLICES)), SLICES)
        axis.set_ylabel("eval recall@100")
        axis.set_title(f"{float(fraction):.0%} of the training examples")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main_ablate(args) -> int:
    """The ``ablate`` command (``recsys_ssl.__main__.AblateOptions``)."""
    methods = parse_methods(",".join(args.methods), args.variant)
    pairs = parse_pairs(args.versus, methods)
    ablation = Ablation(args.features, args.output_dir, methods, args.seeds, args.fractions, args.alphas,
                        args.preset, args.overrides, args.tune_metric, pairs)
    ablation.run()
    logging.info("ablation written to %s (ablation.json, ablation.md, ablation.png)", args.output_dir)
    print(markdown(ablation.document))
    return 0
