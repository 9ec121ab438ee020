"""Presets of the ``pipelines`` package: the main job's schedules and the benchmark data sets.

Like big_vision's config files, each preset says the command that runs it and what it costs on
this project's machine (2 CPU cores, 24 GiB). Commands are argv lists of ``python -m pipelines``
(``tests/pipelines/test_presets.py`` parses every one of them, so they cannot rot).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MainJobPreset:
    """What ``python -m pipelines main_job --preset NAME`` trains (every other step is fixed).

    Attributes:
      recsys_preset: the ``recsys_ssl`` config preset of the two-tower model.
      recsys_overrides: ``--set`` overrides on top of it.
      text_preset: the ``text_ood`` config preset of pre-training and the three ID stages.
      pretrain_overrides / train_overrides: ``--set`` overrides of ``text_ood pretrain`` / ``train``.
      corpus_lines: 0 = the default pre-training corpus; N = its first two files' first N lines.
      encoder: also train the all-MiniLM-L6-v2 k-NN detector (a `select` candidate, alone and in
        hybrids); False in ``smoke``: MiniLM over 15k texts would double its run (the LMs are ranked).
      select_flags: flags of ``text_ood select`` (the detector to deploy, chosen without OoD data).
      cost: wall time measured on 2 idle cores (BENCHMARKS.md, "The main job").
    """

    recsys_preset: str
    recsys_overrides: tuple[str, ...]
    text_preset: str
    pretrain_overrides: tuple[str, ...]
    train_overrides: tuple[str, ...]
    corpus_lines: int
    cost: str
    encoder: bool = True
    select_flags: tuple[str, ...] = ("--grid=false",)


MAIN_JOB_PRESETS = {
    # python -m pipelines main_job [--preset default]
    "default": MainJobPreset(
        recsys_preset="movielens", # The mission's CFM model on the tuned preset, with the id history (3x cheaper per epoch
        # than the preset's history through the item tower) and 4 epochs: a demo, not the best model.
        recsys_overrides=("ssl.method=cfm", "train.epochs=4", "model.query_history=ids"),
        text_preset="cpu",
        pretrain_overrides=("pretrain.max_steps=600", "tokenizer.max_sentences=60000"),
        train_overrides=("teacher.epochs=1", "scratch.epochs=1", "student.epochs=1"),
        corpus_lines=0, select_flags=("--grid=false", "--proxy_texts", "1000"),
        cost="23.7 min on 2 idle cores (2026-11-30, before the k-NN and `select` steps were added; not "
             "re-measured); short schedules, not the benchmarks' quality"),
    # python -m pipelines main_job --preset smoke  (what CI runs: tests/pipelines/test_main_job.py)
    "smoke": MainJobPreset(
        recsys_preset="tiny",
        recsys_overrides=("ssl.method=cfm", "train.batch_size=256", "train.train_fraction=0.1", "train.epochs=1",
                          "train.checkpoint_every_steps=1000"),
        text_preset="tiny", pretrain_overrides=(), train_overrides=(), corpus_lines=3000,
        encoder=False, select_flags=("--grid=false", "--proxy_texts", "200"),
        cost="about 3 min: tiny models, a few steps; checks the wiring, its numbers are not quality figures"),
}


@dataclasses.dataclass(frozen=True)
class DataPreset:
    """A benchmark data set: the commands that make its feature directory, and what they cost.

    Attributes:
      commands: argv lists of ``python -m pipelines``, run in order (paths relative to the repo).
      features: the feature directory the last command writes.
      recsys_preset: the ``recsys_ssl`` preset its benchmarks train with.
      cost: time and size, measured (BENCHMARKS.md).
    """

    commands: tuple[tuple[str, ...], ...]
    features: str
    recsys_preset: str
    cost: str


DATA_PRESETS = {
    # MovieLens ml-latest-small from $SSL_DATA_DIR: 9,742 items, 82,184 train / 9,818 eval examples.
    "movielens": DataPreset(
        commands=(("features", "--input_format", "movielens", "--output_dir", "runs/ml/features",
                   "--split", "user_time", "--runner=DirectRunner"),),
        features="runs/ml/features", recsys_preset="movielens", cost="about 25 s"),
    # The SSL positive control (regime long_tail_features): 100k items, 50k users, 1.2M interactions,
    # time split; 972,000 train / 108,000 validation / 120,000 eval examples.
    "long_tail": DataPreset(
        commands=(("synthetic_long_tail", "--output_dir", "runs/lt/data", "--num_users", "50000",
                   "--num_items", "100000", "--num_interactions", "1200000"),
                  ("features", "--input_format", "interactions", "--input", "runs/lt/data",
                   "--output_dir", "runs/lt/features", "--split", "time", "--runner=DirectRunner",
                   "--direct_num_workers=2", "--direct_running_mode=multi_processing")),
        features="runs/lt/features", recsys_preset="synthetic_ablation",
        cost="generation ~10 s; features ~2-3 min on 2 cores; 1.2M examples"),
    # The earlier synthetic set (groups regime, brand-level preferences): 100k items, 1M interactions.
    "synthetic_brand": DataPreset(
        commands=(("synthetic", "--output_dir", "runs/synth_brand/raw", "--num_users", "50000",
                   "--num_items", "100000", "--num_interactions", "1000000", "--brands_per_subcategory", "25",
                   "--preference_level", "brand", "--seed", "0"),
                  ("features", "--input_format", "interactions", "--input", "runs/synth_brand/raw",
                   "--output_dir", "runs/synth_brand/features", "--split", "time", "--runner=DirectRunner",
                   "--direct_num_workers=2", "--direct_running_mode=multi_processing")),
        features="runs/synth_brand/features", recsys_preset="synthetic_ablation",
        cost="generation ~8 s; features ~2 min on 2 cores"),
}


def main_job_preset(name: str) -> MainJobPreset:
    """The main-job preset ``name``.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in MAIN_JOB_PRESETS:
        raise ValueError(f"unknown main-job preset {name!r}; valid: {sorted(MAIN_JOB_PRESETS)}")
    return MAIN_JOB_PRESETS[name]
