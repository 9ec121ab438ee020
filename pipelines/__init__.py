"""Apache Beam pipelines: recommendation features, synthetic data, downloads, batch OoD scoring."""

from serving.env import ensure_legacy_keras

ensure_legacy_keras()
