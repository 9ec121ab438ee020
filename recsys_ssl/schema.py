"""The one feature schema of the recommendation half, shared by pipelines, training and serving.

Training/serving skew is the classic bug of this field, so every producer and consumer of
recommendation features reads feature names, kinds and files from here:

- ``pipelines.features.job`` writes ``schema.json`` with :meth:`FeatureSchema.to_json` and
  serialises tf.Examples with :func:`example_to_proto` / :func:`item_to_proto`;
- ``recsys_ssl`` training reads ``schema.json`` with :meth:`FeatureSchema.load` and parses the
  TFRecords with :meth:`FeatureSchema.example_parse_spec`;
- exported models take the query features named here as raw strings.

Interaction examples (``train-*``, ``validation-*``, ``eval-*``) hold the query features and the
target item's id only; item features live once in the item corpus (``items-*``) and training
looks them up by id, so an item looks the same to training, evaluation and serving.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from tensorflow.core.example import example_pb2

USER_ID = "user_id"
HISTORY = "history"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
WEIGHT = "weight"
RESERVED_NAMES = frozenset({USER_ID, HISTORY, TIMESTAMP, WEIGHT})

SPLITS = ("train", "validation", "eval")
ITEMS_PREFIX = "items"
TFRECORD_SUFFIX = ".tfrecord.gz"
VOCAB_DIR = "vocab"
SCHEMA_FILE = "schema.json"
STATS_FILE = "stats.json"
MI_FILE = "item_feature_mi.json"
DEAD_LETTER_DIR = "dead_letter"


class SchemaError(ValueError):
    """A schema file or a feature definition that does not fit the contract."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One categorical feature.

    Attributes:
      name: the tf.Example key, and the name of the vocabulary file ``vocab/<vocab_name>.txt``.
      multivalent: whether an example holds a list of values (genres, tags, history) or one.
      identifier: whether the feature identifies the entity (item_id, user_id). Identifier
        features carry no shared structure between entities; CFM treats them specially.
      vocab_name: vocabulary file stem; defaults to ``name`` (``history`` uses ``item_id``'s).
    """

    name: str
    multivalent: bool = False
    identifier: bool = False
    vocab_name: str = ""

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise SchemaError(f"feature names must be non-empty [A-Za-z0-9_], received {self.name!r}")
        if not self.vocab_name:
            object.__setattr__(self, "vocab_name", self.name)

    def vocab_path(self, features_dir: str) -> str:
        return os.path.join(features_dir, VOCAB_DIR, f"{self.vocab_name}.txt")


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
    """Query and item features of a feature-pipeline output directory.

    Attributes:
      item_features: the item tower's features; the first is the item identifier ``item_id``.
      history_length: the maximum number of previous items in the ``history`` query feature.
      has_weight: whether examples carry the interaction weight (e.g. the rating).
    """

    item_features: tuple[FeatureSpec, ...]
    history_length: int = 20
    has_weight: bool = False

    def __post_init__(self):
        if not self.item_features or self.item_features[0].name != ITEM_ID:
            raise SchemaError(f"the first item feature must be {ITEM_ID!r}, received {self.item_features!r}")
        names = [f.name for f in self.item_features]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate item feature names in {names}")
        clash = RESERVED_NAMES.intersection(names)
        if clash:
            raise SchemaError(f"item features may not use the reserved names {sorted(clash)}")
        if self.history_length < 1:
            raise SchemaError(f"history_length must be >= 1, received {self.history_length}")

    @property
    def query_features(self) -> tuple[FeatureSpec, ...]:
        return (
            FeatureSpec(USER_ID, multivalent=False, identifier=True),
            FeatureSpec(HISTORY, multivalent=True, identifier=True, vocab_name=ITEM_ID),
        )

    @property
    def item_feature_names(self) -> list[str]:
        return [f.name for f in self.item_features]

    def example_parse_spec(self) -> dict:
        """``tf.io.parse_example`` spec of interaction examples (user_id, history, item_id, ...)."""
        import tensorflow as tf

        spec = {
            USER_ID: tf.io.FixedLenFeature([], tf.string),
            HISTORY: tf.io.VarLenFeature(tf.string),
            ITEM_ID: tf.io.FixedLenFeature([], tf.string),
            TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
        }
        if self.has_weight:
            spec[WEIGHT] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0)
        return spec

    def to_json(self) -> dict:
        return {
            "version": 1,
            "history_length": self.history_length,
            "has_weight": self.has_weight,
            "query_features": [dataclasses.asdict(f) for f in self.query_features],
            "item_features": [dataclasses.asdict(f) for f in self.item_features],
            "files": {
                "examples": {split: f"{split}-*{TFRECORD_SUFFIX}" for split in SPLITS},
                "items": f"{ITEMS_PREFIX}-*{TFRECORD_SUFFIX}",
                "vocab": f"{VOCAB_DIR}/<vocab_name>.txt (value<TAB>count, most frequent first)",
                "stats": STATS_FILE,
                "mutual_information": MI_FILE,
                "dead_letter": f"{DEAD_LETTER_DIR}/",
            },
            "example_features": {
                USER_ID: "bytes, the querying user",
                HISTORY: "bytes list, the user's previous item ids strictly before this interaction, oldest first",
                ITEM_ID: "bytes, the interacted (target) item; its features are in the item corpus",
                TIMESTAMP: "int64, seconds",
                **({WEIGHT: "float, the interaction weight (e.g. rating)"} if self.has_weight else {}),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping) -> "FeatureSchema":
        try:
            features = tuple(FeatureSpec(**f) for f in data["item_features"])
            return cls(item_features=features, history_length=int(data["history_length"]),
                       has_weight=bool(data.get("has_weight", False)))
        except (KeyError, TypeError) as error:
            raise SchemaError(f"malformed schema.json: {error!r}") from error

    @classmethod
    def load(cls, features_dir: str) -> "FeatureSchema":
        path = os.path.join(features_dir, SCHEMA_FILE)
        if not os.path.isfile(path):
            raise SchemaError(f"{path} not found: is {features_dir!r} a feature-pipeline output directory?")
        with open(path) as f:
            return cls.from_json(json.load(f))


def read_vocab(path: str) -> tuple[list[str], list[int]]:
    """Reads a ``value<TAB>count`` vocabulary file; returns (values, counts), file order."""
    values, counts = [], []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            value, sep, count = line.rpartition("\t")
            if not sep:
                raise SchemaError(f"{path}:{line_number}: expected 'value<TAB>count', received {line!r}")
            values.append(value)
            counts.append(int(count))
    return values, counts


def example_to_proto(user_id: str, history: Sequence[str], item_id: str, timestamp: int,
                     weight: float | None = None) -> bytes:
    """Serialises one interaction example (see the module docstring for the keys)."""
    example = example_pb2.Example()
    feature = example.features.feature
    feature[USER_ID].bytes_list.value.append(user_id.encode("utf-8"))
    feature[HISTORY].bytes_list.SetInParent()  # an empty history is an empty list, not a missing feature
    feature[HISTORY].bytes_list.value.extend([h.encode("utf-8") for h in history])
    feature[ITEM_ID].bytes_list.value.append(item_id.encode("utf-8"))
    feature[TIMESTAMP].int64_list.value.append(int(timestamp))
    if weight is not None:
        feature[WEIGHT].float_list.value.append(float(weight))
    return example.SerializeToString()


def item_to_proto(item_id: str, features: Mapping[str, Sequence[str]]) -> bytes:
    """Serialises one item of the corpus: ``item_id`` plus each feature's values (possibly none)."""
    example = example_pb2.Example()
    feature = example.features.feature
    feature[ITEM_ID].bytes_list.value.append(item_id.encode("utf-8"))
    for name, values in features.items():
        feature[name].bytes_list.SetInParent()  # no values: an empty list, not a missing feature
        feature[name].bytes_list.value.extend([v.encode("utf-8") for v in values])
    return example.SerializeToString()
