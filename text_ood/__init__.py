"""Text out-of-distribution detection by multi-level knowledge distillation (MLKD, Wu et al. 2023)."""

from core.env import ensure_legacy_keras

ensure_legacy_keras()
