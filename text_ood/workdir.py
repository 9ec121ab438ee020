"""A ``text_ood`` workdir: its config, its run record and the context the stages and detectors share.

``pretrain --workdir P`` and ``train --workdir W`` write ``config.json`` (the resolved config;
resuming with different settings in the sections the artefacts depend on is refused) and
``W/run.json`` (data set, teacher and encoder sources, trained detectors, the teacher gate).
Training stages, detectors, evaluation and export reopen a workdir through this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

from core import workdir as core_workdir
from text_ood.config import TextOODConfig
from text_ood.data import OODDataset
from text_ood.tokenizer import HFGPT2Tokenizer, SentencePieceTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

DONE_FILE = "done.json"  # a finished stage (see text_ood.trainer)


CONFIG_FILE, RUN_FILE = core_workdir.CONFIG_FILE, core_workdir.RUN_FILE


PRETRAIN_SECTIONS = ("seed", "model", "tokenizer", "pretrain")
TRAIN_SECTIONS = ("seed", "model", "teacher", "student", "scratch", "distill")


# Config keys removed since earlier workdirs were written (dropped when those are read).
RETIRED_KEYS = ("preset",)


def write_config(workdir: str, config: TextOODConfig, sections: Sequence[str]) -> None:
    """Writes the resolved config; a workdir keeps the config it was created with.

    Args:
      sections: the config sections this workdir's artefacts depend on; resuming with any of
        them changed is refused (other sections may differ, e.g. ``student`` for a pretrain dir).

    Raises:
      ValueError: ``workdir`` already holds a config that differs in ``sections``.
    """
    core_workdir.write_config(workdir, config, sections, retired=RETIRED_KEYS)


def read_config(workdir: str) -> TextOODConfig:
    """The config a ``pretrain`` / ``train`` workdir was created with."""
    return core_workdir.read_config(workdir, TextOODConfig, retired=RETIRED_KEYS)


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
    previous = core_workdir.read_run(workdir)
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
    core_workdir.update_run(workdir, dataset=dataset.kind, dataset_name=dataset.name,
                            data_dir=data_dir and os.path.abspath(data_dir), splits=dataset.summary(),
                            teacher=source, encoder=encoder)
    return TrainingContext(workdir, config, dataset, tokenizer, source, encoder)


def load_context(workdir: str, dataset: OODDataset) -> TrainingContext:
    """Reopens a workdir written by :func:`prepare_training`."""
    run = core_workdir.read_run(workdir)
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
    return TrainingContext(workdir, read_config(workdir), dataset, tokenizer, run.get("teacher"),
                           run.get("encoder"))
