"""Apache Beam pipelines: recommendation features, synthetic data, downloads, batch OoD scoring."""

from core.env import ensure_legacy_keras

ensure_legacy_keras()
