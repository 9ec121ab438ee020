"""Language-model perplexity detectors: MLKD student, fine-tuned teacher, from-scratch LM.

The OoD score is the mean next-token negative log-likelihood of the text under the LM (the log of
its per-example perplexity; higher = more OoD). Wu et al. 2023 score with the student's
perplexity; the mean (not the sum) over tokens keeps long ID texts from looking OoD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.lm import load_lm, mean_nll_function, score_sequences
from text_ood.stages import TrainingContext

# (context, ID training texts) -> the directory of the trained LM (trains it when needed).
TrainFn = Callable[[TrainingContext, Sequence[str]], str]


class PerplexityDetector(OODDetector):
    """Scores texts by a language model's mean token NLL; ``fit`` trains (or reloads) that LM.

    Training is idempotent: a finished stage in the workdir is only reloaded, an interrupted one
    resumes from its checkpoint.

    Args:
      name: registry name.
      context: the workdir's :class:`TrainingContext` (tokenizer, config, ID validation texts).
      train_fn: trains the LM and returns its directory (e.g. :func:`text_ood.stages.train_student`).
    """

    def __init__(self, name: str, context: TrainingContext, train_fn: TrainFn):
        super().__init__()
        if context.teacher_source is None or context.tokenizer is None:
            raise ValueError(f"detector {name!r} needs a teacher language model: train this workdir "
                             "with --teacher PRETRAIN_DIR or --teacher_hf HF_DIR")
        self.name = name
        self.context = context
        self._train_fn = train_fn
        self.lm = None
        self.lm_dir = None

    def _fit(self, train_texts, labels):
        self.lm_dir = self._train_fn(self.context, train_texts)
        self.lm = load_lm(self.lm_dir)
        self._mean_nll = mean_nll_function(self.lm)

    @property
    def max_length(self) -> int:
        return min(self.context.max_length, self.lm.config.n_positions)

    def _score(self, texts):
        tokenizer = self.context.tokenizer
        sequences = tokenizer.encode(texts, self.max_length)
        return score_sequences(self._mean_nll, sequences, tokenizer.pad_id,
                               self.context.config.eval_batch_size)

    def serving_scorer(self):
        if not self.fitted:
            raise RequiresFittingError(f"{self.name}: fit before exporting")
        from text_ood.serving_model import PerplexityScorer

        return PerplexityScorer(self.lm, self.context.tokenizer, self.max_length)
