"""OoD detectors behind one contract, and the registry that ``train``/``evaluate``/``export`` use.

Add a detector by registering a factory ``(TrainingContext) -> OODDetector`` under a new name in
:data:`DETECTORS`; the commands then train, evaluate and export it like the built-in ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.detectors.classifier import ClassifierDetector
from text_ood.detectors.embedding import EmbeddingDetector, MissingEncoderError
from text_ood.detectors.hybrid import HybridDetector
from text_ood.detectors.knn import KNNDetector
from text_ood.detectors.mahalanobis import MahalanobisDetector
from text_ood.detectors.perplexity import PerplexityDetector
from text_ood.detectors.selected import SELECTED, selected_detector
from text_ood.workdir import TrainingContext

DetectorFactory = Callable[[TrainingContext], OODDetector]


def _perplexity(stage: str) -> DetectorFactory:
    """A detector on the LM that the training stage ``stage`` leaves in ``WORKDIR/<stage>/best``."""
    return lambda ctx: PerplexityDetector(stage, os.path.join(ctx.stage_dir(stage), "best"), ctx)


DETECTORS: dict[str, DetectorFactory] = {
    "mlkd": _perplexity("mlkd"),
    "mlkd_no_intermediate": _perplexity("mlkd_no_intermediate"),
    "teacher": _perplexity("teacher"),
    "scratch": _perplexity("scratch"),
    # Sentence-encoder detectors (`train --encoder DIR`); settings in config.encoder.
    "knn": lambda ctx: KNNDetector("knn", ctx),
    "mahalanobis": lambda ctx: MahalanobisDetector("mahalanobis", ctx),  # class-conditional w/ labels
    "mahalanobis_one_class": lambda ctx: MahalanobisDetector("mahalanobis_one_class", ctx,
                                                             use_labels=False),
    "classifier": lambda ctx: ClassifierDetector("classifier", ctx),  # softmax; needs ID labels
    "hybrid": lambda ctx: HybridDetector(
        "hybrid", ctx, [create_detector(n, ctx) for n in ctx.config.encoder.hybrid_components]),
    # The detector `python -m text_ood select` chose (WORKDIR/selection.json), with its settings.
    SELECTED: lambda ctx: selected_detector(ctx, create_detector),
}
DEFAULT_DETECTORS = ("teacher", "scratch", "mlkd")
# Detectors whose training distils the fine-tuned teacher (``train`` checks the teacher gate first).
STUDENT_DETECTORS = ("mlkd", "mlkd_no_intermediate")


def create_detector(name: str, context: TrainingContext) -> OODDetector:
    """Builds the registered detector ``name`` for ``context``.

    Raises:
      KeyError: unknown name (the message lists the registered ones).
    """
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; registered: {sorted(DETECTORS)}")
    return DETECTORS[name](context)


__all__ = ["DETECTORS", "DEFAULT_DETECTORS", "SELECTED", "STUDENT_DETECTORS", "ClassifierDetector", "EmbeddingDetector",
           "HybridDetector", "KNNDetector",
           "MahalanobisDetector", "MissingEncoderError", "OODDetector", "PerplexityDetector",
           "RequiresFittingError", "create_detector"]
