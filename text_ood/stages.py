"""The training stages of MLKD: pre-training, teacher fine-tuning, distillation, from scratch.

Workdir layouts (each stage is a :mod:`text_ood.trainer` stage directory, resumable):

``pretrain --workdir P``: ``P/config.json``, ``P/corpus.json`` (corpus files and the held-out
split's fraction and seed), ``P/tokenizer/``, ``P/pretrain/best/`` (the general-English LM),
``P/logs/pretrain/``.

``train --workdir W``: ``W/config.json``, ``W/run.json`` (data set, teacher source),
``W/tokenizer/``, ``W/teacher/`` (fine-tuned teacher), ``W/scratch/``, ``W/mlkd/``,
``W/mlkd_no_intermediate/`` (students), ``W/logs/<stage>/``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence

import tensorflow as tf

from core.files import write_json_atomic
from text_ood.config import TextOODConfig, default_student_layers
from text_ood.data import CORPUS_FILE, PRETRAIN_HOLDOUT, read_corpus, split_holdout
from text_ood.lm import build_lm, load_hf_lm, load_lm
from text_ood.losses import causal_lm_loss, intermediate_distillation_loss, mlkd_student_loss
from text_ood.tokenizer import SentencePieceTokenizer, load_tokenizer
from text_ood.trainer import Stage, is_done, read_summary, run_stage
from text_ood.workdir import PRETRAIN_SECTIONS, TrainingContext, write_config

logger = logging.getLogger(__name__)


def pretrain(corpus_paths: Sequence[str], workdir: str, config: TextOODConfig,
             tokenizer_extra_texts: Sequence[str] = (),
             monitor_texts: Sequence[str] = ()) -> dict:
    """Trains the SentencePiece tokenizer and a general-English LM (the offline stand-in for GPT-2).

    Args:
      corpus_paths: pre-training corpus files (never the evaluation data set).
      workdir: the pre-training directory ``P``.
      config: its ``tokenizer``, ``model`` and ``pretrain`` sections are used.
      tokenizer_extra_texts: ID training texts added to the tokenizer's training data only.
      monitor_texts: ID validation texts whose perplexity is logged after every pass
        (``id_val_perplexity``; never used for training or selection).

    Every pass (epoch) leaves its LM in ``P/pretrain/epochs/<n>/`` as well, so a teacher can be
    fine-tuned from any pass.

    Returns:
      The pre-training stage summary.
    """
    write_config(workdir, config, PRETRAIN_SECTIONS)
    corpus = read_corpus(corpus_paths)
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if os.path.isdir(tokenizer_dir):
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tc = config.tokenizer
        tokenizer = SentencePieceTokenizer.train(
            list(corpus) + list(tokenizer_extra_texts), tc.vocab_size, tc.model_type,
            tc.character_coverage, tc.max_sentences, seed=config.seed)
        tokenizer.save(tokenizer_dir)
    train_texts, val_texts = split_holdout(corpus, PRETRAIN_HOLDOUT, seed=config.seed)
    write_json_atomic(os.path.join(workdir, CORPUS_FILE), {  # what `select` may use as outliers
        "files": [os.path.abspath(p) for p in corpus_paths], "holdout_fraction": PRETRAIN_HOLDOUT,
        "seed": config.seed, "texts": len(corpus), "held_out": len(val_texts)})
    tf.keras.utils.set_random_seed(config.seed)  # initial weights follow the config's seed
    lm = build_lm(config.model, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    monitor = {"id_val": tokenizer.encode(monitor_texts, config.model.max_length)} \
        if monitor_texts else {}
    return _run_lm_stage("pretrain", workdir, config, config.pretrain, lm, tokenizer,
                         train_texts, val_texts, monitor_ids=monitor, snapshot_epochs=True)


def _run_lm_stage(name, workdir, config, stage_config, lm, tokenizer, train_texts, val_texts,
                  monitor_ids=None, snapshot_epochs=False):
    max_length = lm.config.n_positions

    def loss_fn(ids, mask):
        loss = causal_lm_loss(lm(input_ids=ids, attention_mask=mask, training=True).logits, ids, mask)
        return loss, {}

    stage = Stage(name=name, directory=os.path.join(workdir, name),
                  log_dir=os.path.join(workdir, "logs", name), config=stage_config,
                  seed=config.seed, loss_fn=loss_fn, trainables={"model": lm}, selected_lm=lm,
                  train_ids=tokenizer.encode(train_texts, max_length),
                  val_ids=tokenizer.encode(val_texts, max_length), pad_id=tokenizer.pad_id,
                  eval_batch_size=config.eval_batch_size, monitor_ids=monitor_ids or {},
                  snapshot_epochs=snapshot_epochs)
    return run_stage(stage)


def _load_initial_teacher(ctx: TrainingContext):
    if ctx.teacher_source["kind"] == "hf":
        return load_hf_lm(ctx.teacher_source["path"])
    source = ctx.teacher_source
    weights = os.path.join(source["path"], "pretrain", "epochs", str(source["pass"])) if source.get("pass") \
        else os.path.join(source["path"], "pretrain", "best")
    return load_lm(weights, dropout=ctx.config.model.dropout)


def train_teacher(ctx: TrainingContext, train_texts: Sequence[str]) -> str:
    """Fine-tunes the pre-trained teacher on ID texts (causal LM loss); returns its ``best/`` dir."""
    directory = ctx.stage_dir("teacher")
    if not is_done(directory):
        lm = _load_initial_teacher(ctx)
        _run_lm_stage("teacher", ctx.workdir, ctx.config, ctx.config.teacher, lm, ctx.tokenizer,
                      train_texts, ctx.dataset.id_val)
    return os.path.join(directory, "best")


def train_scratch(ctx: TrainingContext, train_texts: Sequence[str]) -> str:
    """Trains the student architecture from scratch on ID texts, without distillation."""
    directory = ctx.stage_dir("scratch")
    if not is_done(directory):
        tf.keras.utils.set_random_seed(ctx.config.seed)
        lm = build_lm(ctx.config.model, ctx.tokenizer.vocab_size, ctx.tokenizer.bos_id,
                      ctx.tokenizer.eos_id, name="scratch")
        _run_lm_stage("scratch", ctx.workdir, ctx.config, ctx.config.scratch, lm, ctx.tokenizer,
                      train_texts, ctx.dataset.id_val)
    return os.path.join(directory, "best")


def train_student(ctx: TrainingContext, train_texts: Sequence[str], name: str = "mlkd",
                  intermediate: bool = True) -> str:
    """Distils the fine-tuned teacher into a from-scratch student (MLKD; Wu et al. 2023, Eq. 6).

    Loss = ``prediction_weight * L_pred + intermediate_weight * L_int + lm_weight * L_lm``
    (:func:`text_ood.losses.mlkd_student_loss`; ``L_int`` dropped when ``intermediate`` is False:
    the "MLKD without the intermediate term" ablation). ``distill.lm_weight`` (ground-truth LM
    loss) is 0 in the paper's recipe.

    Raises:
      ValueError: the loss would have no term (``intermediate`` False and the other weights 0).
    """
    directory = ctx.stage_dir(name)
    if is_done(directory):
        return os.path.join(directory, "best")
    cfg, distill = ctx.config, ctx.config.distill
    if not intermediate and not (distill.prediction_weight or distill.lm_weight):
        raise ValueError(f"{name}: without the intermediate term the student loss is empty "
                         "(distill.prediction_weight and distill.lm_weight are 0)")
    teacher = load_lm(train_teacher(ctx, train_texts))
    tf.keras.utils.set_random_seed(cfg.seed)  # student and projection initialisation
    max_length = min(cfg.model.max_length, teacher.config.n_positions)
    student = build_lm(dataclasses.replace(cfg.model, max_length=max_length),
                       ctx.tokenizer.vocab_size, ctx.tokenizer.bos_id, ctx.tokenizer.eos_id,
                       name="student")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocabulary {teacher.config.vocab_size} != student "
                         f"{student.config.vocab_size}: both must share the tokenizer")
    layers = distill.student_layers or default_student_layers(cfg.model.n_layer)
    use_intermediate = intermediate and distill.intermediate_weight > 0
    projection = tf.keras.layers.Dense(cfg.model.n_embd, name="teacher_projection")
    projection.build([None, None, None, teacher.config.n_embd])
    trainables = {"model": student, "teacher_projection": projection} if use_intermediate \
        else {"model": student}

    def loss_fn(ids, mask):
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=use_intermediate,
                        training=False)
        s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=use_intermediate,
                        training=True)
        inter = None
        if use_intermediate:
            teacher_layers = tf.stop_gradient(tf.stack(t_out.hidden_states[1:]))  # [L, B, T, D_t]
            inter = intermediate_distillation_loss(
                [s_out.hidden_states[i] for i in layers], projection(teacher_layers), mask,
                distill.nearest_k, distill.intermediate_distance)
        loss, parts = mlkd_student_loss(t_out.logits, s_out.logits, ids, mask,
                                        distill.temperature, distill.prediction_weight,
                                        distill.lm_weight, inter, distill.intermediate_weight)
        if use_intermediate:  # logged: a projection shrinking to 0 trivialises the "mse" term
            parts["projection_norm"] = tf.norm(projection.kernel)
        return loss, parts

    stage = Stage(name=name, directory=directory, log_dir=os.path.join(ctx.workdir, "logs", name),
                  config=cfg.student, seed=cfg.seed, loss_fn=loss_fn, trainables=trainables,
                  selected_lm=student, train_ids=ctx.tokenizer.encode(train_texts, max_length),
                  val_ids=ctx.tokenizer.encode(ctx.dataset.id_val, max_length),
                  pad_id=ctx.tokenizer.pad_id, eval_batch_size=cfg.eval_batch_size,
                  no_weight_decay=() if distill.projection_weight_decay else ("teacher_projection",))
    run_stage(stage)
    return os.path.join(directory, "best")


def teacher_gate(ctx: TrainingContext, train_texts: Sequence[str]) -> dict:
    """Can distillation help? Compares the fine-tuned teacher with a from-scratch LM on ID validation.

    MLKD's student learns the teacher's distributions on ID text; it can only beat a model trained
    from scratch on the same texts if the teacher models them better. Trains (or reloads) both
    stages, with their configured budgets (equal by default).

    Returns:
      ``{"teacher_val_perplexity", "scratch_val_perplexity", "teacher_better", "teacher_epochs",
      "scratch_epochs", "equal_budget", "message"}`` (perplexities of the selected epochs).
    """
    ctx.require_language_models("teacher")
    train_teacher(ctx, train_texts)
    train_scratch(ctx, train_texts)
    teacher, scratch = (read_summary(ctx.stage_dir(name)) for name in ("teacher", "scratch"))
    t_ppl, s_ppl = teacher["best_val_perplexity"], scratch["best_val_perplexity"]
    cfg = ctx.config
    equal = (cfg.teacher.epochs, cfg.teacher.batch_size) == (cfg.scratch.epochs, cfg.scratch.batch_size)
    budget = "the same" if equal else (f"a different (teacher {cfg.teacher.epochs} epochs, from "
                                       f"scratch {cfg.scratch.epochs})")
    if t_ppl < s_ppl:
        message = (f"teacher gate passed: the fine-tuned teacher models the ID validation texts "
                   f"better than a from-scratch model with {budget} budget (perplexity "
                   f"{t_ppl:.2f} < {s_ppl:.2f})")
    else:
        message = (f"teacher gate FAILED: the fine-tuned teacher models the ID validation texts no "
                   f"better than a from-scratch model with {budget} budget (perplexity "
                   f"{t_ppl:.2f} >= {s_ppl:.2f}). A student distilled from it is not expected to "
                   "beat the from-scratch model; use a stronger teacher (more pre-training "
                   "passes or data, a larger teacher, or --teacher_hf with a real GPT-2)")
    return {"teacher_val_perplexity": t_ppl, "scratch_val_perplexity": s_ppl,
            "teacher_better": bool(t_ppl < s_ppl), "teacher_epochs": teacher["epochs_run"],
            "scratch_epochs": scratch["epochs_run"], "equal_budget": equal, "message": message}


# The language-model stage behind each LM detector: (context, ID training texts) -> its best/ dir.
LM_STAGES = {
    "teacher": train_teacher,
    "scratch": train_scratch,
    "mlkd": functools.partial(train_student, name="mlkd"),
    "mlkd_no_intermediate": functools.partial(train_student, name="mlkd_no_intermediate", intermediate=False),
}


def train_detector(ctx: TrainingContext, name: str):
    """Trains what detector ``name`` needs, fits it and saves it in ``ctx.detector_dir(name)``.

    The LM detectors need their stage (:data:`LM_STAGES`, resumable, skipped when done); the
    hybrid needs its components (trained and saved first); the embedding detectors need only the
    encoder. ``evaluate`` and ``export`` then load the saved detector instead of fitting again.

    Returns:
      The fitted detector.
    """
    from text_ood.detectors import create_detector

    if name in LM_STAGES:
        LM_STAGES[name](ctx, ctx.dataset.id_train)
    detector = create_detector(name, ctx)
    for component in getattr(detector, "components", ()):
        if not os.path.isdir(ctx.detector_dir(component.name)):
            train_detector(ctx, component.name)
    detector.fit(ctx.dataset.id_train, ctx.dataset.id_train_labels)
    detector.save(ctx.detector_dir(name))
    return detector
