"""``evaluate``: every detector's metrics on the test split (``eval.json``) and a ROC plot."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from text_ood.detectors import create_detector
from text_ood.metrics import ood_metrics, roc_curve
from text_ood.workdir import TrainingContext

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
ROC_FILE = "roc.png"


def evaluate_detectors(ctx: TrainingContext, names: Sequence[str]) -> dict:
    """Loads each named detector as ``train`` saved it and scores the test split.

    ``score_texts_per_s`` is measured the same way for every detector: raw test texts in, scores
    out (tokenisation or embedding included, no cache), in this process.

    Detectors evaluated earlier in the same workdir and not named now keep their rows (a stage
    directory is never retrained, so their scores stay valid); the ROC plot shows them all.

    Returns:
      ``{"dataset", "splits", "detectors": {name: {auroc, aupr_out, aupr_in, far95, ...}}}``;
      metrics are fractions in [0, 1] with OoD as the positive class. Also writes
      ``WORKDIR/eval.json``, ``WORKDIR/scores/<name>.npz`` and ``WORKDIR/roc.png``.
    """
    dataset = ctx.dataset
    results, curves = _previous_results(ctx.workdir, names)
    os.makedirs(os.path.join(ctx.workdir, "scores"), exist_ok=True)
    for name in names:
        detector = create_detector(name, ctx).restore(ctx.detector_dir(name))
        start = time.time()
        id_scores = detector.score(dataset.id_test)
        ood_scores = detector.score(dataset.ood_test)
        elapsed = time.time() - start
        metrics = ood_metrics(id_scores, ood_scores)
        metrics["score_texts_per_s"] = (len(id_scores) + len(ood_scores)) / max(elapsed, 1e-9)
        results[name] = metrics
        curves[name] = roc_curve(id_scores, ood_scores)
        np.savez(os.path.join(ctx.workdir, "scores", f"{name}.npz"), id=id_scores, ood=ood_scores)
        logger.info("%s: AUROC %.2f  AUPR-OUT %.2f  AUPR-IN %.2f  FAR95 %.2f", name,
                    100 * metrics["auroc"], 100 * metrics["aupr_out"], 100 * metrics["aupr_in"],
                    100 * metrics["far95"])
    report = {"dataset": dataset.name, "splits": dataset.summary(),
              "metrics": "fractions in [0, 1]; OoD is the positive class; higher score = more OoD",
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "detectors": results}
    run_path = os.path.join(ctx.workdir, "run.json")
    if os.path.isfile(run_path):
        with open(run_path) as f:
            gate = json.load(f).get("teacher_gate")
        if gate:
            report["teacher_gate"] = gate
    with open(os.path.join(ctx.workdir, EVAL_FILE), "w") as f:
        json.dump(report, f, indent=2)
    plot_roc(curves, results, os.path.join(ctx.workdir, ROC_FILE), title=f"{dataset.name}: ROC")
    return report


def _previous_results(workdir: str, names: Sequence[str]) -> tuple[dict, dict]:
    path = os.path.join(workdir, EVAL_FILE)
    if not os.path.isfile(path):
        return {}, {}
    with open(path) as f:
        previous = json.load(f).get("detectors", {})
    results, curves = {}, {}
    for name, metrics in previous.items():
        scores_path = os.path.join(workdir, "scores", f"{name}.npz")
        if name in names or not os.path.isfile(scores_path):
            continue
        scores = np.load(scores_path)
        results[name] = metrics
        curves[name] = roc_curve(scores["id"], scores["ood"])
    return results, curves


def plot_roc(curves: dict, results: dict, path: str, title: str) -> None:
    """Writes one ROC curve per detector (OoD positive) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * results[name]['auroc']:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (ID flagged as OoD)")
    ax.set_ylabel("true-positive rate (OoD detected)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
