"""A ``text_ood`` workdir: its config, its run record and the context the stages and detectors share.

``pretrain --workdir P`` and ``train --workdir W`` write ``config.json`` (the resolved config;
resuming with different settings in the sections the artefacts depend on is refused) and
``W/run.json`` (data set, teacher and encoder sources, trained detectors, the teacher gate).
Training stages, detectors, evaluation and export reopen a workdir through this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

from core.config import from_dict, to_dict
from text_ood.config import TextOODConfig
from text_ood.data import OODDataset
from text_ood.tokenizer import HFGPT2Tokenizer, SentencePieceTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"  # a finished stage (see text_ood.trainer)


CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


PRETRAIN_SECTIONS = ("seed", "model", "tokenizer", "pretrain")
TRAIN_SECTIONS = ("seed", "model", "teacher", "student", "scratch", "distill")


def write_config(workdir: str, config: TextOODConfig, sections: Sequence[str]) -> None:
    """Writes (and logs) the resolved config; a workdir keeps the config it was created with.

    Args:
      sections: the config sections this workdir's artefacts depend on; resuming with any of
        them changed is refused (other sections may differ, e.g. ``student`` for a pretrain dir).

    Raises:
      ValueError: ``workdir`` already holds a config that differs in ``sections`` (resuming it
        with other settings would mix two runs); the message lists the differing keys.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            # Through the dataclasses: fields added since the workdir was created take their
            # defaults (the values the old code used), so they do not count as changes.
            old_values = to_dict(from_dict(TextOODConfig, json.load(f)))
        new_values = to_dict(config)
        existing = _flatten({k: old_values.get(k) for k in sections})
        new = _flatten({k: new_values.get(k) for k in sections})
        changed = sorted(k for k in set(existing) | set(new) if existing.get(k) != new.get(k))
        if changed:
            raise ValueError(
                f"{workdir} was created with a different config ({', '.join(changed[:8])} differ: "
                f"{[(k, existing.get(k), new.get(k)) for k in changed[:3]]}); use a new --workdir "
                "or the original settings to resume")
    with open(path, "w") as f:
        json.dump(to_dict(config), f, indent=2)
    logger.info("config: %s", json.dumps(to_dict(config)))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def read_config(workdir: str) -> TextOODConfig:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE}: run `python -m text_ood train` "
                                "(or `pretrain`) with this --workdir first")
    with open(path) as f:
        return from_dict(TextOODConfig, json.load(f))


@dataclasses.dataclass
class TrainingContext:
    """Everything the ``train`` stages and the detectors share for one workdir."""

    workdir: str
    config: TextOODConfig
    dataset: OODDataset
    tokenizer: SentencePieceTokenizer | HFGPT2Tokenizer | None  # None: encoder-only workdir
    teacher_source: dict | None  # {"kind": "pretrained" | "hf", "path": ...}; None: no LMs
    encoder_source: dict | None = None  # {"path": ENCODER_DIR} (`train --encoder`), or None

    def stage_dir(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def detector_dir(self, name: str) -> str:
        """Where ``train`` saves the fitted detector ``name`` (``evaluate`` and ``export`` load it)."""
        return os.path.join(self.workdir, "detectors", name)

    @property
    def max_length(self) -> int:
        return self.config.model.max_length

    def require_language_models(self, name: str) -> None:
        """Raises ValueError unless this workdir has a teacher (and so a tokenizer) for ``name``."""
        if self.teacher_source is None or self.tokenizer is None:
            raise ValueError(f"detector {name!r} needs a teacher language model: train this workdir "
                             "with --teacher PRETRAIN_DIR or --teacher_hf HF_DIR")


def prepare_training(workdir: str, config: TextOODConfig, dataset: OODDataset,
                     teacher_dir: str | None = None, teacher_hf: str | None = None,
                     teacher_pass: int | None = None,
                     data_dir: str | None = None, encoder_dir: str | None = None) -> TrainingContext:
    """Sets up ``W``: config, run.json and the tokenizer (the teacher's, copied).

    The language-model detectors need a teacher, the embedding detectors an encoder
    (``encoder_dir``); a workdir may have both. Sources not given now keep what ``W/run.json``
    recorded earlier (so ``train --encoder DIR`` adds embedding detectors to an MLKD workdir).
    """
    run_path = os.path.join(workdir, RUN_FILE)
    previous = {}
    if os.path.isfile(run_path):
        with open(run_path) as f:
            previous = json.load(f)
    if teacher_pass is not None and teacher_dir is None:
        raise ValueError("--teacher_pass selects a pass of a `pretrain` workdir: give --teacher PRETRAIN_DIR")
    if teacher_dir is not None and teacher_hf is not None:
        raise ValueError("give one teacher: --teacher PRETRAIN_DIR (from `pretrain`) or "
                         "--teacher_hf HF_DIR (a local Hugging Face GPT-2-family checkpoint)")
    if encoder_dir is not None and not os.path.isfile(os.path.join(encoder_dir, "config.json")):
        raise FileNotFoundError(f"--encoder {encoder_dir}: not a Hugging Face model directory "
                                "(no config.json)")
    encoder = {"path": os.path.abspath(encoder_dir)} if encoder_dir else previous.get("encoder")
    if teacher_dir is None and teacher_hf is None:
        if previous.get("teacher") is None and encoder is None:
            raise ValueError("give a teacher (--teacher PRETRAIN_DIR from `pretrain`, or "
                             "--teacher_hf HF_DIR) for the language-model detectors, and/or "
                             "--encoder DIR for the sentence-embedding detectors")
        tokenizer_dir = os.path.join(workdir, "tokenizer")
        tokenizer = load_tokenizer(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
        source = previous.get("teacher")
    elif teacher_dir is not None:
        if not os.path.isfile(os.path.join(teacher_dir, "pretrain", DONE_FILE)):
            raise FileNotFoundError(f"--teacher {teacher_dir}: no finished pre-training there "
                                    "(expected pretrain/done.json); run `python -m text_ood pretrain`")
        source = {"kind": "pretrained", "path": os.path.abspath(teacher_dir)}
        if teacher_pass is not None:
            snapshot = os.path.join(teacher_dir, "pretrain", "epochs", str(teacher_pass))
            if not os.path.isdir(snapshot):
                raise FileNotFoundError(f"--teacher_pass {teacher_pass}: {snapshot} does not exist (passes "
                                        "kept by `pretrain` are P/pretrain/epochs/<n>/)")
            source["pass"] = teacher_pass
        tokenizer = load_tokenizer(os.path.join(teacher_dir, "tokenizer"))
    else:
        source = {"kind": "hf", "path": os.path.abspath(teacher_hf)}
        tokenizer = HFGPT2Tokenizer(teacher_hf)
    write_config(workdir, config, TRAIN_SECTIONS)
    if teacher_dir is not None or teacher_hf is not None:
        tokenizer.save(os.path.join(workdir, "tokenizer"))
    with open(run_path, "w") as f:
        json.dump({**previous, "dataset": dataset.kind, "dataset_name": dataset.name,
                   "data_dir": data_dir and os.path.abspath(data_dir), "splits": dataset.summary(),
                   "teacher": source, "encoder": encoder}, f, indent=2)
    return TrainingContext(workdir, config, dataset, tokenizer, source, encoder)


def load_context(workdir: str, dataset: OODDataset) -> TrainingContext:
    """Reopens a workdir written by :func:`prepare_training`."""
    with open(os.path.join(workdir, RUN_FILE)) as f:
        run = json.load(f)
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
    return TrainingContext(workdir, read_config(workdir), dataset, tokenizer, run.get("teacher"),
                           run.get("encoder"))
