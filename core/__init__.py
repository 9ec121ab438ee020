"""The base of the project's import graph: what every package needs and nothing serving-specific.

- :mod:`core.files`: atomic file writes (JSON documents, arrays).
- :mod:`core.loop`: the resumable training loop of both halves (checkpoints, exact resume,
  selection on validation, early stopping, TensorBoard).

Import rule: ``core`` imports no other package of the project; ``serving``, ``recsys_ssl``,
``text_ood`` and ``pipelines`` may import it.
"""
