"""Two-tower retrieval with self-supervised regularisation (Yao et al. 2021): RFM, CFM, feature dropout."""

from core.env import ensure_legacy_keras

ensure_legacy_keras()
