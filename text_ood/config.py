"""Configs of the text OoD half: frozen dataclasses, presets as functions, ``--set`` overrides.

Every run of ``python -m text_ood`` is described by one :class:`TextOODConfig`; the resolved config
is written to ``WORKDIR/config.json`` and logged. Presets:

- ``tiny``: 2 layers x 32, for tests (seconds).
- ``cpu``: 4 layers x 256, the CPU-sized default (CLINC150: a few minutes per epoch on 2 cores).
- ``gpt2-small``: 12 layers x 768 with the paper's optimisation (AdamW 5e-5, batch 8, 5 epochs).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from core.config import ConfigError

PRESETS = ("tiny", "cpu", "gpt2-small")
INTERMEDIATE_DISTANCES = ("mse", "layernorm_mse", "cosine")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A GPT-2-architecture language model (``transformers.GPT2Config`` fields)."""

    n_layer: int = 4  # Transformer blocks.
    n_embd: int = 256  # Hidden size.
    n_head: int = 4  # Attention heads; must divide n_embd.
    max_length: int = 64  # Tokens per text including BOS and EOS; longer texts are truncated.
    dropout: float = 0.1  # Residual, embedding and attention dropout while training.

    def __post_init__(self):
        if min(self.n_layer, self.n_embd, self.n_head) < 1:
            raise ValueError(f"n_layer, n_embd, n_head must be >= 1, received {self}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (BOS, a token, EOS), received {self.max_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), received {self.dropout}")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The SentencePiece model trained by ``pretrain`` on the corpus plus the ID training texts."""

    vocab_size: int = 4000  # Pieces including the 4 special ones (unk, bos, eos, pad).
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    max_sentences: int = 200_000  # Sentences sampled for training the tokenizer.

    def __post_init__(self):
        if self.vocab_size < 8:
            raise ValueError(f"vocab_size must be >= 8, received {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Optimisation of one training stage (AdamW, linear warm-up then linear decay)."""

    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # Global gradient-norm clipping; 0 disables it.
    max_steps: int = 0  # Stops the stage after this many steps; 0 = run all epochs.
    checkpoint_every_steps: int = 500  # Mid-epoch checkpoints for resume (plus one per epoch).
    log_every_steps: int = 50  # TensorBoard scalars (loss terms, learning rate) every this many steps.

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, received {self}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, received {self.learning_rate}")
        if self.log_every_steps < 1:
            raise ValueError(f"log_every_steps must be >= 1, received {self.log_every_steps}")
        if min(self.warmup_steps, self.max_steps, self.checkpoint_every_steps) < 0:
            raise ValueError(f"warmup_steps, max_steps, checkpoint_every_steps must be >= 0: {self}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The two MLKD distillation levels (Wu et al. 2023, Sec. 3)."""

    temperature: float = 1.0  # Prediction layer: KL(teacher || student) at this temperature.
    prediction_weight: float = 1.0
    intermediate_weight: float = 1.0  # 0 = "MLKD without the intermediate term".
    # Weight of the student's own next-token NLL on the ID texts (the ground-truth causal LM
    # loss). 0 = the paper's recipe (distillation terms only); the released code adds it with
    # weight 1 for one 20 Newsgroups split. > 0 lets the student fit ID text beyond its teacher.
    lm_weight: float = 0.0
    nearest_k: int = 2  # Teacher layers kept per student layer and token (K in the paper).
    # Distance between a student state and a projected teacher state: "mse" (the released
    # recipe: mean squared error of the raw states), "layernorm_mse" (both states layer-normalised
    # without parameters first, so shrinking the states or the projection cannot satisfy it) or
    # "cosine" (1 - cosine similarity).
    intermediate_distance: Literal["mse", "layernorm_mse", "cosine"] = "mse"
    # AdamW weight decay on the teacher projection W (True = the trainer's default for kernels).
    projection_weight_decay: bool = True
    # Student hidden-state indices distilled (1 = output of block 1); empty = the middle layers
    # n//4 .. n - n//4 (3..9 of 12, as in the released recipe).
    student_layers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, received {self.temperature}")
        if self.nearest_k < 1:
            raise ValueError(f"nearest_k must be >= 1, received {self.nearest_k}")
        if self.intermediate_distance not in INTERMEDIATE_DISTANCES:
            raise ValueError(f"intermediate_distance must be one of {INTERMEDIATE_DISTANCES}, "
                             f"received {self.intermediate_distance!r}")
        weights = (self.prediction_weight, self.intermediate_weight, self.lm_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError(f"prediction_weight, intermediate_weight, lm_weight must be >= 0 and "
                             f"not all 0, received {weights}")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sentence-encoder detectors (``train --encoder DIR``): k-NN, Mahalanobis, classifier, hybrid."""

    max_length: int = 0  # WordPiece ids per text incl. [CLS]/[SEP]; 0 = the encoder's own limit.
    # The embedding averages the (unit-norm, mean-pooled) states of the last pool_layers layers;
    # 1 = the sentence-transformers embedding.
    pool_layers: int = 1
    batch_size: int = 128  # Texts per encoder call when embedding in Python.
    knn_k: int = 1  # Neighbours the k-NN score looks at.
    # k-NN score: 1 - cosine similarity to the k-th nearest ID training text ("kth", Sun et al.
    # 2022) or 1 - the mean similarity of the k nearest ("mean").
    knn_aggregation: Literal["kth", "mean"] = "kth"
    # Subtract the mean ID training embedding from bank and queries and re-normalise before the
    # cosine k-NN (label-free; the mean is a constant of the exported graph).
    knn_center: bool = False
    mahalanobis_shrinkage: float = 0.01  # Covariance shrinkage towards a scaled identity, [0, 1].
    # Softmax classifier on the embeddings (needs ID labels): its OoD score ("entropy", "msp" =
    # 1 - max probability, "energy" = -logsumexp of the logits); classifier_c is scikit-learn's
    # inverse L2 strength (loss = mean cross-entropy + |W|^2 / (2 C N)), 1.0 as its default;
    # full-batch Adam steps (CLINC150: converged after ~150).
    classifier_score: Literal["entropy", "msp", "energy"] = "entropy"
    classifier_c: float = 1.0
    classifier_steps: int = 200
    hybrid_components: tuple[str, ...] = ("mlkd", "knn")  # Detectors the hybrid combines.
    # Per-component normalisation fitted on ID validation scores: "zscore" (mean / std) or "rank"
    # (standard-normal quantile of the ID-validation ECDF); see text_ood.normalisation.
    hybrid_normalisation: Literal["zscore", "rank"] = "zscore"
    # "weighted_sum" (minimum-variance weights on ID validation) or "max" of the normalised
    # scores; the rationale of each is in text_ood.detectors.hybrid.
    hybrid_combination: Literal["weighted_sum", "max"] = "weighted_sum"

    def __post_init__(self):
        if self.max_length < 0 or min(self.batch_size, self.knn_k, self.pool_layers) < 1:
            raise ValueError(f"max_length must be >= 0, batch_size, knn_k and pool_layers >= 1, "
                             f"received {self}")
        if self.knn_aggregation not in ("kth", "mean"):
            raise ValueError(f"knn_aggregation must be 'kth' or 'mean', received {self.knn_aggregation!r}")
        if not 0.0 <= self.mahalanobis_shrinkage <= 1.0:
            raise ValueError(f"mahalanobis_shrinkage must be in [0, 1], received "
                             f"{self.mahalanobis_shrinkage}")
        if self.classifier_score not in ("entropy", "msp", "energy"):
            raise ValueError(f"classifier_score must be 'entropy', 'msp' or 'energy', received "
                             f"{self.classifier_score!r}")
        if self.classifier_c <= 0 or self.classifier_steps < 1:
            raise ValueError(f"classifier_c must be > 0 and classifier_steps >= 1, received "
                             f"{self.classifier_c}, {self.classifier_steps}")
        if self.hybrid_normalisation not in ("zscore", "rank"):
            raise ValueError(f"hybrid_normalisation must be 'zscore' or 'rank', received "
                             f"{self.hybrid_normalisation!r}")
        if self.hybrid_combination not in ("weighted_sum", "max"):
            raise ValueError(f"hybrid_combination must be 'weighted_sum' or 'max', received "
                             f"{self.hybrid_combination!r}")
        if len(self.hybrid_components) < 2 or "hybrid" in self.hybrid_components:
            raise ValueError(f"hybrid_components needs at least two detectors other than 'hybrid', "
                             f"received {self.hybrid_components}")


@dataclasses.dataclass(frozen=True)
class TextOODConfig:
    """Everything one ``pretrain`` / ``train`` run needs."""

    seed: int = 0
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    # Several passes over the default corpus (~144k texts, ~2,200 steps of 64 per pass).
    pretrain: StageConfig = StageConfig(epochs=3, batch_size=64, learning_rate=1e-3)
    # One epoch budget and schedule for the three ID stages (the teacher gate compares the
    # fine-tuned teacher with the from-scratch model at equal budget).
    teacher: StageConfig = StageConfig(epochs=5, learning_rate=1e-3)
    student: StageConfig = StageConfig(epochs=5, learning_rate=1e-3)
    scratch: StageConfig = StageConfig(epochs=5, learning_rate=1e-3)
    # The student also fits the ID texts (lm_weight 1): measured best on CLINC150 (BENCHMARKS.md).
    distill: DistillConfig = DistillConfig(lm_weight=1.0)
    encoder: EncoderConfig = EncoderConfig()
    eval_batch_size: int = 128

    def __post_init__(self):
        layers = self.distill.student_layers or default_student_layers(self.model.n_layer)
        bad = [i for i in layers if not 1 <= i <= self.model.n_layer]
        if bad:
            raise ValueError(
                f"distill.student_layers {bad} outside 1..{self.model.n_layer} (model.n_layer)"
            )


def default_student_layers(n_layer: int) -> tuple[int, ...]:
    """Middle layers of an ``n_layer`` student: 3..9 of 12 (the paper's), 1..3 of 4, 1..1 of 2."""
    low = max(1, n_layer // 4)
    high = max(low, n_layer - n_layer // 4)
    return tuple(range(low, high + 1))


def preset(name: str = "cpu") -> TextOODConfig:
    """Returns a preset config.

    ``cpu`` (default): 4 x 256 GPT-2, SentencePiece 4k, 3 pre-training passes over the default
    corpus (general English + voice-assistant queries, ~144k texts), then 5 epochs at lr 1e-3 for
    the teacher, the from-scratch model and the student alike, the student with the ground-truth LM
    term (``distill.lm_weight=1``; 0 is the paper's recipe). On CLINC150 (15,000 training queries)
    an epoch takes about 4 minutes on 2 CPU cores (MLKD about 1.05x the from-scratch LM); seed 0
    measured teacher 91.37, from scratch 90.40, MLKD 91.67 AUROC (BENCHMARKS.md).
    ``gpt2-small``: the paper's recipe (12 x 768; AdamW lr 5e-5, batch 8, max length 128, 5 epochs
    for teacher and student, distillation terms only: ``distill.lm_weight=0``); needs a GPU.
    ``tiny``: 2 x 32, a few steps per stage: for tests only.

    Raises:
      ConfigError: unknown preset name (the error lists the valid ones).
    """
    if name == "cpu":
        return TextOODConfig()
    if name == "gpt2-small":
        paper = StageConfig(epochs=5, batch_size=8, learning_rate=5e-5, warmup_steps=0)
        return TextOODConfig(
            model=ModelConfig(n_layer=12, n_embd=768, n_head=12, max_length=128),
            tokenizer=TokenizerConfig(vocab_size=16000),
            pretrain=StageConfig(epochs=3, batch_size=32, learning_rate=3e-4, warmup_steps=1000),
            teacher=paper,
            student=paper,
            scratch=paper,
            distill=DistillConfig(lm_weight=0.0),
        )
    if name == "tiny":
        quick = StageConfig(epochs=1, batch_size=8, learning_rate=3e-3, warmup_steps=2,
                            max_steps=6, checkpoint_every_steps=3, log_every_steps=1)
        return TextOODConfig(
            model=ModelConfig(n_layer=2, n_embd=32, n_head=2, max_length=24, dropout=0.0),
            tokenizer=TokenizerConfig(vocab_size=120, max_sentences=5000),
            pretrain=quick,
            teacher=quick,
            student=quick,
            scratch=quick,
            distill=DistillConfig(lm_weight=0.0),  # the paper's terms only (tests add lm_weight)
            eval_batch_size=16,
        )
    raise ConfigError(f"unknown preset {name!r}; valid: {list(PRESETS)}")
