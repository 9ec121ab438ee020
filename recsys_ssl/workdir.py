"""A training workdir of the two-tower model: its config, its model rebuilt, its best weights.

``python -m recsys_ssl train`` writes ``WORKDIR/config.json`` (the resolved config),
``WORKDIR/run.json`` (the features directory; :mod:`core.workdir`), ``WORKDIR/checkpoints/`` and
``WORKDIR/best/``; evaluation, export and the diagnostics reopen a workdir through this module,
without the training code.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from core import workdir as core_workdir
from recsys_ssl import schema as fs
from recsys_ssl.config import Config
from recsys_ssl.data import FeatureSet
from recsys_ssl.model import SSLTwoTowerModel

def load_run(workdir: str) -> tuple[Config, str]:
    """The resolved config and features directory of a training workdir."""
    config = core_workdir.read_config(workdir, Config)
    features_dir = core_workdir.read_run(workdir).get("features_dir")
    if features_dir is None:  # workdirs written before run.json kept it in config.json
        with open(os.path.join(workdir, core_workdir.CONFIG_FILE)) as f:
            features_dir = json.load(f).get("features_dir")
    if features_dir is None:
        raise FileNotFoundError(f"{workdir}: no features directory recorded (run.json); was it trained by "
                                "`python -m recsys_ssl train`?")
    return config, features_dir


def build_model(feature_set: FeatureSet, config: Config) -> SSLTwoTowerModel:
    """The model of ``config`` with every variable created (so that checkpoints restore eagerly)."""
    model = SSLTwoTowerModel(feature_set, config)
    # Create every variable (Keras builds lazily) so that checkpoints restore eagerly.
    history = tf.fill([1, feature_set.schema.history_length], "")
    model.query_tower({fs.USER_ID: tf.constant([""]), fs.HISTORY: history})
    model.item_embeddings(tf.constant([0]))
    if model.ssl_head is not None:
        model.ssl_head(tf.zeros([1, config.model.output_dim]))
    return model


def restore_best(workdir: str) -> tuple[SSLTwoTowerModel, FeatureSet, Config]:
    """Rebuilds the model of a workdir and loads its best weights (for evaluate and export)."""
    config, features_dir = load_run(workdir)
    feature_set = FeatureSet.load(features_dir, config.model.max_values, config.model.min_count)
    model = build_model(feature_set, config)
    best = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    if best is None:
        raise FileNotFoundError(f"no best checkpoint in {workdir}/best: has training finished an epoch?")
    tf.train.Checkpoint(model=model).restore(best).expect_partial()
    return model, feature_set, config
