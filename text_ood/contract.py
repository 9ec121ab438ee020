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
