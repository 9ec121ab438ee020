"""Run configuration of the SSL-regularised two-tower model: frozen dataclasses and presets.

Every field can be overridden from the command line with ``--set section.field=value``; the
resolved config is written to ``WORKDIR/config.json`` and logged at the start of training.
Presets are functions; their docstrings say what they are for.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

SSL_METHODS = ("none", "rfm", "cfm", "feature_dropout")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Tower shapes."""

    embedding_dim: int = 32  # width of every feature embedding
    query_hidden: tuple[int, ...] = (128,)  # query-tower MLP hidden layers
    item_hidden: tuple[int, ...] = (128,)  # item-tower MLP hidden layers
    output_dim: int = 64  # width of the L2-normalised tower outputs
    max_values: int = 16  # values kept per multivalent item feature (first ones)
    min_count: int = 1  # feature values on fewer corpus items map to the OOV bucket
    # False: the item tower never sees identifier features (item_id): they always take their default
    # embedding, so items are represented by their features only (a diagnostic of id memorisation).
    item_tower_identifiers: bool = True
    # How the query tower represents the history: "ids" = its own embedding table of item ids;
    # "item_tower" = the (shared) item tower's embeddings of the history items, so the query side
    # sees the items' features (and the SSL task on the item tower shapes the queries too).
    query_history: Literal["ids", "item_tower"] = "ids"
    # 0: one embedding row per catalogue item (exact ids). B > 0: item ids hashed into B rows
    # (FarmHash of the id string), for the item tower's item_id table and the query tower's history
    # table: memory O(B) instead of O(items) for catalogues whose id tables do not fit
    # (`python -m recsys_ssl memory` computes them). Items that share a bucket share its embedding;
    # unknown history items hash into a bucket too (exact ids send them to one OOV row).
    item_id_buckets: int = 0
    # With item_id_buckets: each id takes the mean of this many buckets (independent hashes of one
    # table, "hash embeddings"): with B = items / 10 and 2 hashes, almost no two items share both.
    item_id_hashes: int = 1

    def __post_init__(self):
        for name in ("embedding_dim", "output_dim", "max_values", "min_count", "item_id_hashes"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, received {getattr(self, name)}")
        if self.item_id_buckets < 0:
            raise ValueError(f"model.item_id_buckets must be >= 0 (0 = exact ids), received {self.item_id_buckets}")
        if self.item_id_hashes > 1 and not self.item_id_buckets:
            raise ValueError(f"model.item_id_hashes={self.item_id_hashes} needs model.item_id_buckets > 0 "
                             "(exact ids have one row per item)")
        if any(h < 1 for h in self.query_hidden + self.item_hidden):
            raise ValueError("hidden layer sizes must be >= 1")
        if self.query_history not in ("ids", "item_tower"):
            raise ValueError(f"model.query_history must be ids or item_tower, received {self.query_history!r}")


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """The self-supervised task on the item tower (Yao et al. 2021, section 3)."""

    # none | random feature masking | correlated feature masking | feature dropout (two views
    # with independently dropped whole features, the non-complementary baseline)
    method: Literal["none", "rfm", "cfm", "feature_dropout"] = "cfm"
    weight: float = 0.3  # alpha in L = L_main + alpha * L_ssl
    temperature: float = 0.1  # InfoNCE temperature of the SSL task
    dropout: float = 0.2  # drop rate of the remaining values of multivalent features in each view
    batch_size: int = 128  # items per SSL batch, sampled uniformly from the corpus
    # CFM's feature affinity: "raw_mi" is the paper's MI; "normalized_mi" divides by sqrt(H_i H_j).
    affinity: Literal["raw_mi", "normalized_mi"] = "normalized_mi"
    # Identifier features (item_id) in CFM: "grouped" treats them like any feature; "random_view"
    # keeps them out of the MI grouping and gives each to one view at random every batch.
    # "both_masked" masks them in both views (the views agree through the other features only).
    identifiers: Literal["grouped", "random_view", "both_masked"] = "random_view"
    # "batch": one masking split per SSL batch; "example": every SSL row draws its own.
    mask_granularity: Literal["batch", "example"] = "batch"
    feature_drop_rate: float = 0.5  # method=feature_dropout: drop probability of each feature per view
    # Width of an MLP head (Dense(h, relu) -> Dense(output_dim), L2-normalised) applied to both
    # views before the InfoNCE only (SimCLR's projection head); 0 = none, the paper's setting.
    projection_head: int = 0

    def __post_init__(self):
        if self.method not in SSL_METHODS:
            raise ValueError(f"ssl.method must be one of {SSL_METHODS}, received {self.method!r}")
        if self.weight < 0 or self.temperature <= 0 or self.batch_size < 2:
            raise ValueError("ssl.weight must be >= 0, ssl.temperature > 0 and ssl.batch_size >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ssl.dropout must be in [0, 1), received {self.dropout}")
        if not 0.0 < self.feature_drop_rate < 1.0:
            raise ValueError(f"ssl.feature_drop_rate must be in (0, 1), received {self.feature_drop_rate}")
        if self.projection_head < 0:
            raise ValueError(f"ssl.projection_head must be >= 0, received {self.projection_head}")
        if self.identifiers not in ("grouped", "random_view", "both_masked"):
            raise ValueError(f"ssl.identifiers must be grouped, random_view or both_masked, "
                             f"received {self.identifiers!r}")
        if self.mask_granularity not in ("batch", "example"):
            raise ValueError(f"ssl.mask_granularity must be batch or example, received {self.mask_granularity!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, the main retrieval task, checkpoints and model selection."""

    batch_size: int = 256  # interactions per batch (in-batch negatives)
    epochs: int = 8  # maximum epochs; early stopping usually ends sooner
    # adam: tf.keras Adam, whose sparse update still decays and applies to every row of every embedding
    # table each step (O(table) per step); lazy_adam: Adam on the rows a batch touched only (O(batch));
    # adagrad: one slot instead of two, sparse updates.
    optimizer: Literal["adam", "lazy_adam", "adagrad"] = "adam"
    learning_rate: float = 0.003
    temperature: float = 0.1  # softmax temperature of the main task (cosine scores / temperature)
    logq_correction: bool = True  # subtract log(item sampling probability) from logits
    # logits - logq_strength * log(q): 1 = the full (consistent) correction, 0 = none; between
    # them the trained scores keep part of the items' popularity (head vs tail trade-off).
    # logq_correction=false is the same as logq_strength=0 (kept: earlier runs' configs use it).
    logq_strength: float = 1.0
    remove_accidental_hits: bool = True
    feature_dropout: float = 0.0  # value dropout on the main task's items (the dropout-only baseline)
    train_fraction: float = 1.0  # share of training examples used (data-scarcity experiments)
    early_stopping_patience: int = 2  # epochs without validation improvement before stopping
    selection_k: int = 100  # model selection on validation recall@selection_k
    validation_max_examples: int = 20_000  # validation examples scored each epoch (a fixed sample)
    checkpoint_every_steps: int = 500
    log_every_steps: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 2 or self.epochs < 1 or self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("train.batch_size >= 2, train.epochs >= 1, learning_rate > 0, temperature > 0")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train.train_fraction must be in (0, 1], received {self.train_fraction}")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"train.feature_dropout must be in [0, 1), received {self.feature_dropout}")
        if not 0.0 <= self.logq_strength <= 2.0:
            raise ValueError(f"train.logq_strength must be in [0, 2], received {self.logq_strength}")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    ssl: SSLConfig = SSLConfig()
    train: TrainConfig = TrainConfig()


def movielens() -> Config:
    """ml-latest-small with ``--split user_time``: CFM two-tower model, the project default.

    ``python -m recsys_ssl train --features runs/features --workdir runs/cfm --preset movielens``
    trains in about a minute per epoch on 2 CPU cores; early stopping picks the best epoch on
    validation recall@100. Results are in BENCHMARKS.md (ssl_ablation).
    """
    return Config()


def synthetic() -> Config:
    """The synthetic data set of ``pipelines.synthetic`` at the paper's regime (200k items).

    Larger batches for more in-batch negatives over a long tail; the ablations use ``synthetic_ablation``.
    """
    return Config(
        model=ModelConfig(embedding_dim=32, query_hidden=(128,), item_hidden=(128,), output_dim=64),
        ssl=SSLConfig(batch_size=256),
        train=TrainConfig(batch_size=512, epochs=6, checkpoint_every_steps=1000, validation_max_examples=20_000),
    )


def synthetic_ablation() -> Config:
    """The SSL ablations on the synthetic sets (``pipelines/presets.py``: ``long_tail``, ``synthetic_brand``).

    ``synthetic`` with 3 epochs and SSL temperature 0.2, the settings of BENCHMARKS.md's long-tail
    control and synthetic-brand tables::

      python -m recsys_ssl ablate --features runs/lt/features --output_dir runs/lt/ablation \\
          --preset synthetic_ablation --methods none,cfm,rfm,feature_dropout --alphas 0.03,0.1,0.3

    About 15 minutes per run on 2 cores for the long-tail control (1 epoch trains in ~5 min; the
    exact evaluation of 120k eval examples against 100k items takes ~8 min).
    """
    base = synthetic()
    return dataclasses.replace(base, ssl=dataclasses.replace(base.ssl, temperature=0.2),
                               train=dataclasses.replace(base.train, epochs=3))


def tiny() -> Config:
    """Tests: minimal towers, two epochs, frequent checkpoints."""
    return Config(
        model=ModelConfig(embedding_dim=8, query_hidden=(16,), item_hidden=(16,), output_dim=8, max_values=4),
        ssl=SSLConfig(batch_size=8),
        train=TrainConfig(batch_size=16, epochs=2, checkpoint_every_steps=5, log_every_steps=2,
                          validation_max_examples=200),
    )


PRESETS = {"movielens": movielens, "synthetic": synthetic, "synthetic_ablation": synthetic_ablation, "tiny": tiny}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]()
