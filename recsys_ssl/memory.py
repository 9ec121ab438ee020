"""What a two-tower model's embedding tables and item corpus cost in memory, before building it.

``python -m recsys_ssl memory --features DIR [--preset NAME] [--set model.item_id_buckets=1000000 ...]``

The model holds, per catalogue size N (items) and U (users), with ``d = model.embedding_dim``:

- ``query_tower/user_embedding``: (U + 2) x d;
- ``query_tower/history_embedding``: (N + 2) x d, or (B + 2) x d with ``model.item_id_buckets = B``;
  absent with ``model.query_history = item_tower``;
- ``item_tower/<feature>_embedding`` per item feature: (values + 2) x d; ``item_id``'s is
  (N + 2) x d, or (B + 2) x d hashed; absent with ``model.item_tower_identifiers = false``;
- the in-memory item corpus: int32 ids, N per single-valued feature and N x ``max_values`` per
  multivalent one (the SSL batch and the main items are gathered from it);

all float32. Training adds the optimizer's slots per weight (:data:`OPTIMIZER_SLOTS`: Adam keeps
two moments, Adagrad one accumulator), so an id table costs 3x its weights under Adam. Not
counted: the string->id hash tables of the ``StringLookup`` layers (user and item ids; measured
by ``benchmarks/id_tables.py``), the MLPs (small), TensorFlow's own working memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from recsys_ssl import schema as fs
from recsys_ssl.config import Config
BYTES_PER_VALUE = 4  # float32 weights and slots, int32 corpus ids
# Optimizer slots per trainable float (``train.optimizer``): Adam's two moments, Adagrad's accumulator.
OPTIMIZER_SLOTS = {"adam": 2, "lazy_adam": 2, "adagrad": 1}


@dataclasses.dataclass(frozen=True)
class EmbeddingTable:
    """One embedding table of the model: ``rows x dim`` float32 (layer ``name`` in ``tower``)."""

    tower: str
    name: str
    rows: int
    dim: int

    @property
    def weight_bytes(self) -> int:
        return self.rows * self.dim * BYTES_PER_VALUE

    def training_bytes(self, optimizer: str) -> int:
        """Weights plus the optimizer's slots."""
        return self.weight_bytes * (1 + OPTIMIZER_SLOTS[optimizer])


def embedding_tables(schema: fs.FeatureSchema, vocabulary_sizes: Mapping[str, int],
                     config: Config) -> list[EmbeddingTable]:
    """The model's embedding tables, in the order the towers create them.

    Args:
      schema: the feature schema.
      vocabulary_sizes: vocab name -> number of values after ``model.min_count`` (``user_id``,
        ``item_id`` and every item feature's).
      config: the run config (``model.*`` decides which tables exist and their rows).
    """
    model = config.model
    items = vocabulary_sizes[fs.ITEM_ID]
    item_id_rows = model.item_id_buckets or items
    tables = [EmbeddingTable("query_tower", "user_embedding", vocabulary_sizes[fs.USER_ID] + 2, model.embedding_dim)]
    if model.query_history == "ids":
        tables.append(EmbeddingTable("query_tower", "history_embedding", item_id_rows + 2, model.embedding_dim))
    for feature in schema.item_features:
        if feature.identifier and not model.item_tower_identifiers:
            continue
        rows = item_id_rows if feature.name == fs.ITEM_ID else vocabulary_sizes[feature.vocab_name]
        tables.append(EmbeddingTable("item_tower", f"{feature.name}_embedding", rows + 2, model.embedding_dim))
    return tables


def corpus_bytes(schema: fs.FeatureSchema, num_items: int, config: Config) -> int:
    """The in-memory item corpus: int32 ids per item and feature (``max_values`` per multivalent one)."""
    model = config.model
    widths = [model.max_values if f.multivalent else (model.item_id_hashes if f.name == fs.ITEM_ID else 1)
              for f in schema.item_features]
    return num_items * sum(widths) * BYTES_PER_VALUE


def memory_report(schema: fs.FeatureSchema, vocabulary_sizes: Mapping[str, int], config: Config) -> dict:
    """Per table and in total: rows, weights and weights + optimizer slots (bytes), plus the corpus.

    Returns:
      ``{"optimizer", "tables": [{"tower", "name", "rows", "dim", "weight_bytes", "training_bytes"}],
      "weight_bytes", "training_bytes", "corpus_bytes", "total_training_bytes"}``.
    """
    optimizer = config.train.optimizer
    tables = embedding_tables(schema, vocabulary_sizes, config)
    rows = [dict(dataclasses.asdict(t), weight_bytes=t.weight_bytes, training_bytes=t.training_bytes(optimizer))
            for t in tables]
    weights = sum(t.weight_bytes for t in tables)
    training = sum(t.training_bytes(optimizer) for t in tables)
    corpus = corpus_bytes(schema, vocabulary_sizes[fs.ITEM_ID], config)
    return {"optimizer": optimizer, "tables": rows, "weight_bytes": weights, "training_bytes": training,
            "corpus_bytes": corpus, "total_training_bytes": training + corpus}


def markdown(report: dict) -> str:
    """The report as a table (MiB)."""
    mib = 2 ** 20
    lines = [f"| table | rows | dim | weights MiB | + {report['optimizer']} slots MiB |", "|---|---|---|---|---|"]
    for t in report["tables"]:
        lines.append(f"| {t['tower']}/{t['name']} | {t['rows']:,} | {t['dim']} | {t['weight_bytes'] / mib:,.1f} | "
                     f"{t['training_bytes'] / mib:,.1f} |")
    lines.append(f"| **all tables** | | | {report['weight_bytes'] / mib:,.1f} | {report['training_bytes'] / mib:,.1f} |")
    lines.append(f"| item corpus (int32 ids) | | | {report['corpus_bytes'] / mib:,.1f} | {report['corpus_bytes'] / mib:,.1f} |")
    lines.append(f"| **total** | | | | **{report['total_training_bytes'] / mib:,.1f}** |")
    return "\n".join(lines)
