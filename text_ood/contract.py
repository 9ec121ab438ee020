"""The OoD export contract that consumers of an exported detector rely on (no TensorFlow here).

An exported detector (``python -m text_ood export``) is ``EXPORT_DIR/<n>/``, a SavedModel whose
``serving_default`` signature takes ``text`` (tf.string [batch]) and returns ``ood_score``
(float32 [batch], higher = more OoD), ``is_ood`` (bool [batch]) and the scorer's other outputs;
``assets.extra/detector.json`` holds the calibrated threshold and the metadata. Batch scoring
(``pipelines.scoring.batch_ood_scoring``) reads these names from here without importing the training code.
"""

SIGNATURE = "serving_default"
TEXT_INPUT = "text"
SCORE_OUTPUT = "ood_score"
DECISION_OUTPUT = "is_ood"
DETECTOR_JSON = "detector.json"  # in the SavedModel's assets.extra/

# Longest text (UTF-8 bytes) an export accepts: the served model answers longer ones with 400 and
# batch scoring rejects them (``text_too_long``), instead of tokenising megabytes of which the
# scorer only reads its first max_text_tokens tokens. Both are recorded in detector.json at export
# (max_text_bytes also in the server's assets.extra/serving_limits.json).
MAX_TEXT_BYTES_FIELD = "max_text_bytes"
MAX_TEXT_TOKENS_FIELD = "max_text_tokens"
DEFAULT_MAX_TEXT_BYTES = 100_000
