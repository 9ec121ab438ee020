"""The candidates ``select`` ranks: the workdir's trained detectors, a settings grid, and hybrids.

A :class:`Candidate` names a detector and the config overrides that build it:

- **trained**: every detector ``train`` saved in the workdir, scored as saved;
- **grid** (needs the workdir's sentence encoder): k-NN over ``pool_layers`` x ``knn_k`` x
  {k-th, mean} x {uncentred, centred} (:data:`GRID_POOL_LAYERS`, :data:`GRID_K`), Mahalanobis
  (one-class, and class-conditional when the ID training texts have labels) and, with labels,
  the softmax classifier's three scores, per ``pool_layers``;
- **hybrids** (:func:`hybrid_candidates`), built after the others are ranked: every trained
  language-model detector with the best candidate of each embedding family, and the best
  candidates of every two embedding families; each with both normalisations and both
  combination rules of :mod:`text_ood.detectors.hybrid`. A hybrid's components keep their own
  settings (e.g. a classifier on the last layer with a k-NN on the last three).

:class:`CandidateScorer` scores candidates on named text sets (the ID validation texts and the
proxy outliers for ``select``; test splits for a benchmark's analysis). Grid candidates are
scored from every-layer embeddings computed once per text set (cached in ``WORKDIR/embeddings``);
the chosen candidate is then built and fitted by the detectors' own code
(:func:`text_ood.selection.materialise`), which re-checks its scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from text_ood.detectors import create_detector
from text_ood.detectors.embedding import EmbeddingDetector, load_encoder
from text_ood.detectors.hybrid import combination_weights, combine
from text_ood.embedding_cache import EmbeddingCache, pool_layer_embeddings as pooled
from text_ood.normalisation import NORMALISATIONS, ScoreNormaliser

logger = logging.getLogger(__name__)

GRID_POOL_LAYERS = (1, 2, 3, 4)
GRID_K = (1, 3, 5, 10)
LM_DETECTORS = ("teacher", "scratch", "mlkd", "mlkd_no_intermediate")
FAMILIES = {"knn": "k-NN", "mahalanobis": "Mahalanobis", "mahalanobis_one_class": "Mahalanobis",
            "classifier": "classifier", "hybrid": "hybrid", **{name: "language model" for name in LM_DETECTORS}}
EMBEDDING_FAMILIES = ("k-NN", "Mahalanobis", "classifier")
CLASSIFIER_SCORES = ("entropy", "msp", "energy")
QUERY_CHUNK = 1024  # query embeddings per k-NN similarity block


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One detector setting ``select`` can choose.

    Attributes:
      label: unique, readable name, e.g. ``knn[pool=3,k=5,mean,centred]``.
      detector: the registry name the chosen candidate is built with.
      family: "language model", "k-NN", "Mahalanobis", "hybrid" or "other".
      overrides: ``--set``-style config overrides (``encoder.*``) on top of the workdir's config.
      trained: True = the detector as ``train`` saved it in ``detectors/<detector>/``.
      components: for hybrids, the labels of the component candidates.
    """

    label: str
    detector: str
    family: str
    overrides: tuple[str, ...] = ()
    trained: bool = False
    components: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "overrides": list(self.overrides),
                "components": list(self.components)}

    @classmethod
    def from_dict(cls, values: dict) -> Candidate:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


def with_overrides(ctx, overrides: Sequence[str]):
    """A copy of the ``TrainingContext`` whose config has ``overrides`` applied."""
    from core.config import apply_overrides

    return dataclasses.replace(ctx, config=apply_overrides(ctx.config, list(overrides))) if overrides else ctx


def trained_candidates(names: Sequence[str]) -> list[Candidate]:
    """Candidates for the detectors ``train`` saved (``run.json``'s list; ``selected`` excluded)."""
    return [Candidate(name, name, FAMILIES.get(name, "other"), trained=True)
            for name in names if name != "selected"]


def knn_label(pool: int, k: int, aggregation: str, center: bool) -> str:
    return f"knn[pool={pool},k={k},{aggregation}{',centred' if center else ''}]"


def grid_candidates(ctx, pool_layers: Sequence[int] = GRID_POOL_LAYERS) -> list[Candidate]:
    """The k-NN and Mahalanobis settings grid (module docstring); empty without an encoder.

    ``pool_layers`` beyond the encoder's hidden states (layers + 1) are left out.
    """
    if not ctx.encoder_source:
        return []
    with open(os.path.join(ctx.encoder_source["path"], "config.json")) as f:
        hidden_states = int(json.load(f)["num_hidden_layers"]) + 1
    out = []
    for pool in (p for p in pool_layers if p <= hidden_states):
        for center in (False, True):
            for k in GRID_K:
                for aggregation in (("kth",) if k == 1 else ("kth", "mean")):
                    out.append(Candidate(knn_label(pool, k, aggregation, center), "knn", "k-NN", (
                        f"encoder.pool_layers={pool}", f"encoder.knn_k={k}",
                        f"encoder.knn_aggregation={aggregation}", f"encoder.knn_center={center}")))
        names = (("mahalanobis_one_class", "mahalanobis") if ctx.dataset.id_train_labels
                 else ("mahalanobis_one_class",))
        for name in names:
            out.append(Candidate(f"{name}[pool={pool}]", name, "Mahalanobis", (f"encoder.pool_layers={pool}",)))
        if ctx.dataset.id_train_labels and len(set(ctx.dataset.id_train_labels)) > 1:
            for kind in CLASSIFIER_SCORES:
                out.append(Candidate(f"classifier[pool={pool},{kind}]", "classifier", "classifier",
                                     (f"encoder.pool_layers={pool}", f"encoder.classifier_score={kind}")))
    return out


def hybrid_candidates(candidates: Sequence[Candidate], criterion: dict[str, float]) -> list[Candidate]:
    """Hybrids of the ranked candidates (module docstring); ``criterion``: label -> higher is better.

    Pairs: every trained language-model detector with the best candidate of each embedding family
    (:data:`EMBEDDING_FAMILIES`), and the best candidates of every two embedding families. Each
    component keeps its own settings (``pool_layers`` may differ): the hybrid's overrides set only
    the ``encoder.hybrid_*`` fields, and ``select`` records every component's encoder config.
    """
    def best(family):
        ranked = [c for c in candidates if c.family == family and c.label in criterion]
        return max(ranked, key=lambda c: (criterion[c.label], c.label)) if ranked else None

    embedding = [c for c in (best(f) for f in EMBEDDING_FAMILIES) if c is not None]
    pairs = [(lm, e) for lm in candidates if lm.family == "language model" and lm.trained
             for e in embedding]
    pairs += [(a, b) for i, a in enumerate(embedding) for b in embedding[i + 1:]]
    out = []
    for first, second in pairs:
        for normalisation in NORMALISATIONS:
            for combination in ("weighted_sum", "max"):
                out.append(Candidate(
                    f"hybrid[{first.label}+{second.label};{normalisation};{combination}]", "hybrid",
                    "hybrid", (f"encoder.hybrid_components={first.detector},{second.detector}",
                               f"encoder.hybrid_normalisation={normalisation}",
                               f"encoder.hybrid_combination={combination}"),
                    components=(first.label, second.label)))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_similarities(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest cosine similarities of unit-norm float [M, D] queries to [N, D]: [M, k], descending."""
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        similarity = queries[start:start + QUERY_CHUNK] @ bank.T
        top = np.partition(similarity, -k, axis=1)[:, -k:]
        out.append(np.sort(top, axis=1)[:, ::-1])
    return np.concatenate(out) if out else np.zeros((0, k), np.float32)


class CandidateScorer:
    """Scores candidates on named text sets (see the module docstring).

    Args:
      ctx: the workdir's ``TrainingContext``.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self._cache = None
        self._layers = {}

    def layers(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [N, L + 1, D] every-layer embeddings of ``texts`` (disk-cached)."""
        key = id(texts)
        if key not in self._layers:
            if self._cache is None:
                cfg = self.ctx.config.encoder
                encoder = load_encoder(self.ctx.encoder_source["path"], cfg.max_length, 1)
                self._cache = EmbeddingCache(encoder, f"{self.ctx.workdir}/embeddings", cfg.batch_size)
            self._layers[key] = (texts, self._cache.embed(texts, all_layers=True))
        return self._layers[key][1]

    def score(self, candidates: Sequence[Candidate], text_sets: dict[str, Sequence[str]],
              known: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Scores of every candidate on every set: ``{label: {set name: float64 [N_set]}}``.

        Hybrids need their components among ``candidates`` or ``known`` and a ``"val"`` set (the
        ID validation texts, which fit their normalisation).
        """
        scores = dict(known or {})
        grid = [c for c in candidates if not c.trained and c.family in EMBEDDING_FAMILIES]
        for candidate in candidates:
            if candidate.trained:
                scores[candidate.label] = self._score_trained(candidate, text_sets)
        if grid:
            scores.update(self._score_grid(grid, text_sets))
        for candidate in candidates:
            if candidate.family == "hybrid" and not candidate.trained:
                scores[candidate.label] = self._score_hybrid(candidate, scores)
        return scores

    def _score_trained(self, candidate, text_sets):
        detector = create_detector(candidate.detector, self.ctx).restore(
            self.ctx.detector_dir(candidate.detector))
        logger.info("scoring %s on %s", candidate.label, ", ".join(
            f"{name} ({len(texts)})" for name, texts in text_sets.items()))
        if isinstance(detector, EmbeddingDetector):  # the saved head on cached embeddings
            pool = self.ctx.config.encoder.pool_layers
            return {name: detector.score_embeddings(pooled(self.layers(texts), pool))
                    for name, texts in text_sets.items()}
        return {name: detector.score(list(texts)) for name, texts in text_sets.items()}

    def _score_grid(self, grid, text_sets):
        from text_ood.detectors.classifier import classifier_scores, fit_softmax
        from text_ood.detectors.mahalanobis import MahalanobisHead, fit_gaussians

        train = self.layers(self.ctx.dataset.id_train)
        labels = self.ctx.dataset.id_train_labels
        shrinkage = self.ctx.config.encoder.mahalanobis_shrinkage
        out = {}
        settings = {c.label: dict(o.split("=", 1) for o in c.overrides) for c in grid}
        for pool in sorted({int(s["encoder.pool_layers"]) for s in settings.values()}):
            at_pool = [c for c in grid if int(settings[c.label]["encoder.pool_layers"]) == pool]
            bank = pooled(train, pool)
            sets = {name: pooled(self.layers(texts), pool) for name, texts in text_sets.items()}
            knn = [c for c in at_pool if c.family == "k-NN"]
            for center in sorted({settings[c.label]["encoder.knn_center"] == "True" for c in knn}):
                mean = bank.mean(axis=0) if center else 0.0
                top = {name: top_similarities(_unit(x - mean), _unit(bank - mean), max(GRID_K))
                       for name, x in sets.items()}
                for c in knn:
                    s = settings[c.label]
                    if (s["encoder.knn_center"] == "True") != center:
                        continue
                    k = int(s["encoder.knn_k"])
                    out[c.label] = {name: 1.0 - (t[:, k - 1] if s["encoder.knn_aggregation"] == "kth"
                                                 else t[:, :k].mean(axis=1)).astype(np.float64)
                                    for name, t in top.items()}
            classifiers = [c for c in at_pool if c.family == "classifier"]
            if classifiers:
                cfg = self.ctx.config.encoder
                weights, bias, _ = fit_softmax(bank, labels, cfg.classifier_c, cfg.classifier_steps)
                for c in classifiers:
                    kind = settings[c.label]["encoder.classifier_score"]
                    out[c.label] = {name: classifier_scores(x @ weights + bias, kind).numpy().astype(np.float64)
                                    for name, x in sets.items()}
            for c in (c for c in at_pool if c.family == "Mahalanobis"):
                head = MahalanobisHead(*fit_gaussians(
                    bank, labels if c.detector == "mahalanobis" else None, shrinkage))
                out[c.label] = {name: np.concatenate([head(x[i:i + QUERY_CHUNK]).numpy() for i in range(
                    0, len(x), QUERY_CHUNK)]).astype(np.float64) for name, x in sets.items()}
        return out

    @staticmethod
    def _score_hybrid(candidate, scores):
        settings = dict(o.split("=", 1) for o in candidate.overrides)
        columns = [scores[label] for label in candidate.components]
        normaliser = ScoreNormaliser(settings["encoder.hybrid_normalisation"]).fit(
            np.stack([c["val"] for c in columns], axis=1))
        weights = combination_weights(normaliser.transform(np.stack([c["val"] for c in columns], axis=1)))
        return {name: combine(normaliser.transform(np.stack([c[name] for c in columns], axis=1)), weights,
                              settings["encoder.hybrid_combination"]) for name in columns[0]}
