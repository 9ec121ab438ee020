"""Language-model perplexity detectors: MLKD student, fine-tuned teacher, from-scratch LM.

The OoD score is the mean next-token negative log-likelihood of the text under the LM (the log of
its per-example perplexity; higher = more OoD). Wu et al. 2023 score with the student's
perplexity; the mean (not the sum) over tokens keeps long ID texts from looking OoD. The LM is
trained by a stage (:mod:`text_ood.stages`); the detector loads it from the stage's ``best/``.
"""

from __future__ import annotations

import os

from text_ood.detectors.base import OODDetector, RequiresFittingError
from text_ood.lm import load_lm, mean_nll_function, score_sequences


class PerplexityDetector(OODDetector):
    """Scores texts by a trained language model's mean token NLL.

    Args:
      name: registry name.
      lm_dir: the trained LM (a stage's ``best/``, :func:`text_ood.lm.save_lm` layout).
      context: the workdir's :class:`text_ood.workdir.TrainingContext` (tokenizer, config).
    """

    def __init__(self, name: str, lm_dir: str, context):
        super().__init__()
        context.require_language_models(name)
        self.name = name
        self.lm_dir = lm_dir
        self.context = context
        self.lm = None

    def _load(self) -> None:
        if not os.path.isdir(self.lm_dir):
            raise RequiresFittingError(f"{self.name}: no trained language model at {self.lm_dir}; its "
                                       f"stage trains it (`python -m text_ood train --detectors {self.name}`)")
        self.lm = load_lm(self.lm_dir)
        self._mean_nll = mean_nll_function(self.lm)

    def _fit(self, train_texts, labels):
        self._load()  # nothing to fit beyond the trained LM

    def _state(self):
        return {"lm_dir": os.path.relpath(self.lm_dir, self.context.workdir)}, {}

    def _restore(self, state, arrays):
        self._load()

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
        from text_ood.scorers import PerplexityScorer

        return PerplexityScorer(self.lm, self.context.tokenizer, self.max_length)
