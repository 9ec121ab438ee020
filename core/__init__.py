"""The base of the project's import graph: what every package needs and nothing serving-specific.

- :mod:`core.env`: the process environment (Keras 2 selection before TensorFlow loads, the data
  root ``$SSL_DATA_DIR``).
- :mod:`core.config`: frozen-dataclass configs with ``--set a.b=value`` overrides, dict round
  trips, unknown keys rejected.
- :mod:`core.files`: atomic file writes (JSON documents, arrays).
- :mod:`core.loop`: the resumable training loop of both halves (checkpoints, exact resume,
  selection on validation, early stopping, TensorBoard).

Import rule: ``core`` imports no other package of the project; ``serving``, ``recsys_ssl``,
``text_ood`` and ``pipelines`` may import it. Importing ``core`` selects Keras 2 (see
:func:`core.env.ensure_legacy_keras`).
"""

from core.env import ensure_legacy_keras

ensure_legacy_keras()
