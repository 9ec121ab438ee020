"""``export``: a detector as a versioned SavedModel taking raw strings, with its threshold.

``EXPORT_DIR/<n>/`` (written atomically by :func:`serving.export.atomic_version_dir`) holds a
SavedModel whose ``serving_default(text: tf.string [batch])`` returns ``ood_score`` (float32
[batch]; higher = more OoD: mean token NLL for the LM detectors), ``is_ood`` (bool [batch],
``ood_score > threshold``) and the scorer's other outputs (``perplexity`` for the LM detectors,
``<component>_score`` for the hybrid). The threshold is calibrated on the ID validation texts
(95% of them score at or below it) and saved both as the variable ``threshold`` and in
``assets.extra/detector.json`` with the metadata (TF Serving ignores ``assets.extra``).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from serving.export import atomic_version_dir, write_serving_limits
from text_ood.contract import DEFAULT_MAX_TEXT_BYTES, DETECTOR_JSON, MAX_TEXT_BYTES_FIELD, MAX_TEXT_TOKENS_FIELD
from text_ood.detectors import OODDetector

logger = logging.getLogger(__name__)

CALIBRATION_QUANTILE = 0.95


class ExportedDetector(tf.Module):
    """The exported module: a scorer plus the calibrated decision threshold."""

    def __init__(self, scorer: tf.Module, threshold: float):
        super().__init__(name="exported_detector")
        self.scorer = scorer
        self.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="threshold")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        """``text`` tf.string [B] -> ood_score float32 [B], is_ood bool [B], scorer outputs [B]."""
        out = self.scorer.score_texts(text)
        return {**out, "is_ood": out["ood_score"] > self.threshold}


def score_in_batches(function, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Calls ``function(tf.string [B]) -> {"ood_score": ...}`` over ``texts``: float64 [N]."""
    out = [function(tf.constant(list(texts[i:i + batch_size]), tf.string))["ood_score"].numpy()
           for i in range(0, len(texts), batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def export_detector(detector: OODDetector, calibration_texts: Sequence[str], export_dir: str,
                    metadata: dict | None = None, check_texts: Sequence[str] = (),
                    tolerance: float = 1e-3, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """Exports a fitted detector; returns the new version directory.

    Args:
      detector: a fitted detector with a :meth:`~OODDetector.serving_scorer`.
      calibration_texts: ID validation texts for the threshold (never test texts).
      export_dir: the model's base path; the version is the next free integer.
      metadata: extra fields for ``detector.json``.
      check_texts: texts whose in-graph scores must match ``detector.score`` within
        ``tolerance`` (training/serving skew check) before anything is written.
      max_text_bytes: the longest text (UTF-8 bytes) the export accepts: the server answers
        longer ones with 400 and batch scoring rejects them (``text_too_long``); recorded in
        ``detector.json`` with ``max_text_tokens`` (the scorer's token window, when it has one)
        and in ``assets.extra/serving_limits.json``.

    Raises:
      NotImplementedError / ExportError: the detector cannot be exported.
      AssertionError: the in-graph scores differ from the Python ones.
    """
    if not calibration_texts:
        raise ValueError("threshold calibration needs at least one ID validation text")
    scorer = detector.serving_scorer()
    val_scores = score_in_batches(scorer.score_texts, calibration_texts)
    threshold = float(np.quantile(val_scores, CALIBRATION_QUANTILE, method="higher"))
    if check_texts:
        graph = score_in_batches(scorer.score_texts, check_texts)
        python = detector.score(list(check_texts))
        gap = float(np.max(np.abs(graph - python)))
        if gap > tolerance:
            raise AssertionError(f"in-graph scores differ from {detector.name}.score by {gap:.2e} "
                                 f"(> {tolerance}): tokenisation or model skew")
        logger.info("in-graph vs Python scores on %d texts: max |diff| %.2e", len(check_texts), gap)
    module = ExportedDetector(scorer, threshold)
    outputs = {name: f"{spec.dtype.name} [batch]" for name, spec in
               module.serve.get_concrete_function().structured_outputs.items()}
    info = {"detector": detector.name, "threshold": threshold,
            "score": getattr(detector, "score_description",
                             "mean next-token NLL (log perplexity); higher = more OoD"),
            "calibration": {"split": "id_val", "texts": len(calibration_texts),
                            "quantile": CALIBRATION_QUANTILE,
                            "share_at_or_below": float(np.mean(val_scores <= threshold))},
            "signature": {"inputs": {"text": "string [batch]"}, "outputs": dict(sorted(outputs.items()))},
            "load_requires": "import tensorflow_text before tf.saved_model.load (tokenizer ops)",
            MAX_TEXT_BYTES_FIELD: int(max_text_bytes),
            MAX_TEXT_TOKENS_FIELD: getattr(scorer, "max_length", None),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            **(metadata or {})}
    with atomic_version_dir(export_dir) as target:
        tf.saved_model.save(module, target.tmp_path, signatures={"serving_default": module.serve})
        extra = os.path.join(target.tmp_path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, DETECTOR_JSON), "w") as f:
            json.dump(info, f, indent=2)
        write_serving_limits(target.tmp_path, max_text_bytes)
    logger.info("exported %s to %s (threshold %.4f)", detector.name, target.path, threshold)
    return target.path
