"""``select``: choose the detector to deploy without OoD data (ID validation texts vs proxy outliers).

Criterion: for every candidate (:mod:`text_ood.candidates`: the trained detectors, a k-NN /
Mahalanobis settings grid, hybrids), the AUROC of its scores with the **ID validation texts** as
negatives and the **proxy outliers** (:mod:`text_ood.proxy`: general text held out from
pre-training, length-matched to the ID validation texts) as positives; ties (within
:data:`TIE_AUROC`) go to the lower FAR95 on the same sets, then to fewer components. No test
text and no OoD split is read: the evaluation sets play no part in the choice.

Outputs in the workdir:

- ``selection.json``: the criterion, the proxy set's description, every candidate's proxy
  AUROC / FAR95 (ranked), the choice, and its re-check (the chosen detector built by the
  detectors' own code and re-scored on the same sets);
- ``selection.png``: the ranking;
- ``detectors/selected/``: the chosen detector, fitted and saved; the registry name
  ``selected`` loads it, and ``export`` exports it by default.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from core.config import to_dict
from core.files import write_json_atomic
from text_ood.candidates import (Candidate, CandidateScorer, grid_candidates, hybrid_candidates,
                                 trained_candidates, with_overrides)
from text_ood.detectors import create_detector
from text_ood.detectors.hybrid import HybridDetector
from text_ood.detectors.selected import SELECTED, SELECTION_FILE
from text_ood.metrics import auroc, far95
from text_ood.proxy import build_proxy_outliers, held_out_texts, pretraining_corpus

logger = logging.getLogger(__name__)

SELECTION_PLOT = "selection.png"
TIE_AUROC = 1e-4
CRITERION = ("AUROC with the ID validation texts as negatives and the proxy outliers as positives "
             "(higher is better); ties within 1e-4 go to the lower FAR95, then to fewer components")


def proxy_for(ctx, files: Sequence[str] | None, size: int, seed: int, data_root: str | None):
    """The proxy-outlier texts of a workdir and their description (:mod:`text_ood.proxy`)."""
    if files:
        corpus = {"files": list(files), "holdout": None, "recorded": False}
    else:
        corpus = pretraining_corpus(ctx.teacher_source, data_root)
    per_file = held_out_texts(corpus["files"], corpus["holdout"])
    texts, info = build_proxy_outliers(per_file, ctx.dataset.id_val,
                                       list(ctx.dataset.id_train) + list(ctx.dataset.id_val), size, seed)
    info.update({"files": [os.path.abspath(p) for p in corpus["files"]],
                 "only_texts_held_out_from_pretraining": corpus["holdout"] is not None,
                 "pretraining_split_recorded": corpus["recorded"]})
    return texts, info


def criterion(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """``{"proxy_auroc", "proxy_far95"}`` of one candidate's ``{"val", "proxy"}`` scores."""
    return {"proxy_auroc": auroc(scores["val"], scores["proxy"]),
            "proxy_far95": far95(scores["val"], scores["proxy"])}


def rank(candidates: Sequence[Candidate], metrics: dict[str, dict]) -> list[Candidate]:
    """Candidates best first by the criterion (module docstring); deterministic."""
    ordered = sorted(candidates, key=lambda c: (-metrics[c.label]["proxy_auroc"], c.label))
    out = []
    while ordered:  # within TIE_AUROC of the best left, prefer lower FAR95, then fewer components
        top = metrics[ordered[0].label]["proxy_auroc"]
        tied = [c for c in ordered if top - metrics[c.label]["proxy_auroc"] <= TIE_AUROC]
        tied.sort(key=lambda c: (metrics[c.label]["proxy_far95"], len(c.components), c.label))
        out.append(tied[0])
        ordered.remove(tied[0])
    return out


def materialise(ctx, candidate: Candidate, by_label: dict[str, Candidate]):
    """Builds and fits ``candidate`` with the detectors' own code; returns the fitted detector."""
    if candidate.trained:
        return create_detector(candidate.detector, ctx).restore(ctx.detector_dir(candidate.detector))
    local = with_overrides(ctx, candidate.overrides)
    if candidate.family == "hybrid":
        components = [materialise(ctx, by_label[label], by_label) for label in candidate.components]
        detector = HybridDetector("hybrid", local, components)
    else:
        detector = create_detector(candidate.detector, local)
    logger.info("fitting the chosen candidate %s", candidate.label)
    return detector.fit(ctx.dataset.id_train, ctx.dataset.id_train_labels)


def save_choice(ctx, chosen: Candidate, by_label: dict[str, Candidate]):
    """Fits ``chosen`` and saves it as ``detectors/selected``.

    Returns:
      ``(detector, entry)``: the fitted detector and the ``selection.json`` "selected" entry
      without metrics: the candidate, its encoder config and, for a hybrid, every component's
      (what :func:`text_ood.detectors.selected.selected_detector` rebuilds it from).
    """
    detector = materialise(ctx, chosen, by_label)
    detector.name = SELECTED
    detector.save(ctx.detector_dir(SELECTED))
    return detector, {**chosen.to_dict(),
                      "encoder_config": to_dict(getattr(detector, "context", ctx).config.encoder),
                      "component_encoder_configs": {c.name: to_dict(c.context.config.encoder)
                                                    for c in getattr(detector, "components", ())},
                      "score": getattr(detector, "score_description", "mean next-token NLL")}


def select_detector(ctx, proxy_files: Sequence[str] | None = None, proxy_size: int = 0,
                    grid: bool = True, seed: int = 0, data_root: str | None = None,
                    choose: str | None = None) -> dict:
    """Ranks every candidate by the ID-only criterion, saves the best as ``detectors/selected``.

    Args:
      ctx: a ``train`` workdir's context (its ``run.json`` lists the trained detectors).
      proxy_files: proxy-outlier files instead of the teacher's held-out pre-training corpus.
      proxy_size: proxy texts to draw (length-matched to the ID validation texts); 0 = as many
        as ID validation texts, clipped to [500, 2000] (the criterion's precision is bounded by
        the smaller of the two sets; long texts are expensive to embed).
      grid: also rank the k-NN / Mahalanobis settings grid and hybrids of the best settings
        (False: the trained detectors and hybrids of them only).
      seed: the proxy draw's seed.
      data_root: where the default corpus lives (``$SSL_DATA_DIR``).
      choose: save this candidate (a label of the ranking) instead of the best one; recorded as
        ``"overridden_by_user"`` in ``selection.json``.

    Returns:
      The ``selection.json`` document.

    Raises:
      ValueError: the workdir has no trained detector, or ``choose`` is not a candidate.
    """
    with open(os.path.join(ctx.workdir, "run.json")) as f:
        trained = [n for n in json.load(f).get("detectors", [])
                   if os.path.isfile(os.path.join(ctx.detector_dir(n), "detector.json"))]
    candidates = trained_candidates(trained) + (grid_candidates(ctx) if grid else [])
    if not candidates:
        raise ValueError(f"{ctx.workdir}: no trained detector to select from; run `train` first")
    proxy_size = proxy_size or min(max(len(ctx.dataset.id_val), 500), 2000)
    proxy, proxy_info = proxy_for(ctx, proxy_files, proxy_size, seed, data_root)
    logger.info("proxy outliers: %d texts (%s), mean %.1f words (ID validation %.1f)", len(proxy),
                proxy_info["per_source"], proxy_info["mean_words"], proxy_info["id_val_mean_words"])
    sets = {"val": list(ctx.dataset.id_val), "proxy": proxy}
    scorer = CandidateScorer(ctx)
    scores = scorer.score(candidates, sets)
    metrics = {label: criterion(s) for label, s in scores.items()}
    if grid or len(trained_candidates(trained)) > 1:
        hybrids = hybrid_candidates(candidates, {k: v["proxy_auroc"] for k, v in metrics.items()})
        scores = scorer.score(hybrids, sets, known=scores)
        metrics.update({c.label: criterion(scores[c.label]) for c in hybrids})
        candidates += hybrids
    ranking = rank(candidates, metrics)
    by_label = {c.label: c for c in candidates}
    if choose is not None and choose not in by_label:
        raise ValueError(f"--choose {choose!r} is not a candidate; the best five: "
                         f"{[c.label for c in ranking[:5]]} (all in selection.json of a run without --choose)")
    chosen = by_label[choose] if choose else ranking[0]
    detector, entry = save_choice(ctx, chosen, by_label)
    check = {"val": detector.score(sets["val"]), "proxy": detector.score(proxy)}
    recheck = criterion(check)
    gap = float(max(np.max(np.abs(check[k] - scores[chosen.label][k])) for k in check))
    logger.info("selected %s: proxy AUROC %.2f, FAR95 %.2f (re-checked with the fitted detector: "
                "%.2f; max |score difference| %.2e)", chosen.label, 100 * metrics[chosen.label]["proxy_auroc"],
                100 * metrics[chosen.label]["proxy_far95"], 100 * recheck["proxy_auroc"], gap)
    document = {
        "criterion": CRITERION, "proxy": proxy_info, "id_val_texts": len(sets["val"]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "candidates": [{**c.to_dict(), **metrics[c.label]} for c in ranking],
        "selected": {**entry, **metrics[chosen.label]},
        "recheck": {**recheck, "max_abs_score_difference": gap},
        "overridden_by_user": choose is not None,
    }
    write_json_atomic(os.path.join(ctx.workdir, SELECTION_FILE), document, indent=2, sort_keys=False)
    plot_selection(document, os.path.join(ctx.workdir, SELECTION_PLOT))
    return document


FAMILY_COLOURS = {"language model": "tab:orange", "k-NN": "tab:blue", "Mahalanobis": "tab:green",
                  "hybrid": "tab:purple", "other": "tab:grey"}


def plot_selection(document: dict, path: str, top: int = 30) -> None:
    """Horizontal bars of the proxy AUROC: the best ``top`` candidates plus every trained one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for i, c in enumerate(document["candidates"]) if i < top or c["trained"]][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.2))
    values = [100 * c["proxy_auroc"] for c in rows]
    ax.barh(range(len(rows)), values, color=[FAMILY_COLOURS.get(c["family"], "tab:grey") for c in rows],
            edgecolor=["black" if c["label"] == document["selected"]["label"] else "none" for c in rows])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([("-> " if c["label"] == document["selected"]["label"] else "") + c["label"]
                        for c in rows], fontsize=6)
    low = min(values)
    ax.set_xlim(max(0.0, low - 0.05 * (100 - low) - 1), 100)
    ax.set_xlabel("AUROC, ID validation vs proxy outliers (no OoD data)")
    handles = [matplotlib.patches.Patch(color=c, label=f) for f, c in FAMILY_COLOURS.items()
               if any(r["family"] == f for r in rows)]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_title(f"select: {len(document['candidates'])} candidates; chosen {document['selected']['label']}",
                 fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
