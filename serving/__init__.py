"""TF-Serving-compatible serving of the project's SavedModels (REST and gRPC), and export conventions."""

from serving.env import ensure_legacy_keras

ensure_legacy_keras()
