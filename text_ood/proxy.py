"""Proxy outliers for choosing a detector without OoD data: held-out general text, length-matched.

``python -m text_ood select`` ranks detectors by how well they separate the ID validation texts
from a *proxy-outlier* set. The proxy must be text that no candidate was fitted on and that is
not an evaluation set, and it must be comparable across detector families (language models,
sentence-embedding detectors, hybrids), so:

- **Source: the project's general corpus, held out from pre-training.** By default the files of
  the teacher's pre-training corpus (``PRETRAIN_DIR/corpus.json``; without it, the default corpus
  under the data root: news sentences, image captions, SST-2 phrases, voice-assistant queries),
  restricted to the share ``pretrain`` held out for its validation perplexity. No candidate was
  trained on these texts: not the LMs (the teacher pre-trained on the rest, the students and the
  from-scratch model saw only ID texts) and not the embedding detectors (fitted on ID texts;
  the sentence encoder comes from outside). Texts equal to an ID training or validation text
  (case and spacing ignored) are removed.
  Held-out ID *classes*, the other possible proxy, would need every candidate re-fitted without
  those classes: seconds for an embedding head, an hour for a language model; and they do not
  exist when the ID data has one class (AG News, one topic as ID).
- **Length-matched to the ID validation texts.** Each proxy text is drawn for the word count of
  one ID validation text: a held-out text of 0.8-1.25 times that length when one is left, else
  consecutive held-out texts of one source file joined until long enough. Raw general text
  differs from, e.g., one-line voice queries or Usenet posts in length alone, which every
  detector notices; matching the lengths makes the criterion measure what differs beyond length.
- **Every source file in equal shares** (drawn round-robin), so one large file does not decide.

The set is deterministic given the files, the ID texts and the seed.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import random
import re
from collections.abc import Sequence

from text_ood.data import CORPUS_FILE, PRETRAIN_HOLDOUT, DataError, default_corpus, read_texts, split_holdout

logger = logging.getLogger(__name__)

LENGTH_BAND = (0.8, 1.25)  # a single proxy text may have this range of the target's word count


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def pretraining_corpus(teacher_source: dict | None, data_root: str | None) -> dict:
    """The corpus files and held-out split the workdir's teacher was pre-trained with.

    Args:
      teacher_source: ``run.json``'s ``teacher`` entry (``{"kind": "pretrained", "path": P}``),
        or None / an ``hf`` teacher.
      data_root: root of the default corpus, for pre-training dirs written before
        ``corpus.json`` existed and for workdirs without a project-pre-trained teacher.

    Returns:
      ``{"files": [...], "holdout": (fraction, seed) or None, "recorded": bool}``; ``holdout`` is
      None when no LM of the workdir was pre-trained on these files (then every text is usable).

    Raises:
      DataError: no ``corpus.json`` and no data root to find the default corpus in.
    """
    if teacher_source and teacher_source.get("kind") == "pretrained":
        path = os.path.join(teacher_source["path"], CORPUS_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
            return {"files": record["files"], "holdout": (record["holdout_fraction"], record["seed"]),
                    "recorded": True}
        if data_root is None:
            raise DataError(f"{path} not found and no data root for the default corpus")
        from text_ood.workdir import read_config

        seed = read_config(teacher_source["path"]).seed
        logger.warning("%s not found (pre-trained before it was recorded): assuming the default "
                       "corpus under %s and seed %d", path, data_root, seed)
        return {"files": default_corpus(data_root), "holdout": (PRETRAIN_HOLDOUT, seed), "recorded": False}
    if data_root is None:
        raise DataError("no data root for the default proxy corpus: pass --proxy FILE ... or --data_dir")
    return {"files": default_corpus(data_root), "holdout": None, "recorded": False}


def held_out_texts(files: Sequence[str], holdout: tuple[float, int] | None) -> dict[str, list[str]]:
    """Per file, its texts that pre-training did not train on (all of them when ``holdout`` is None).

    Reproduces ``pretrain``'s split (:func:`text_ood.data.split_holdout` over the files' texts
    concatenated in order); a text that also occurs in the training part is dropped.
    """
    per_file = {path: read_texts(path) for path in files}
    if holdout is None:
        return per_file
    corpus = [text for path in files for text in per_file[path]]
    trained, held = split_holdout(corpus, holdout[0], seed=holdout[1])
    usable = set(held) - set(trained)
    return {path: [t for t in texts if t in usable] for path, texts in per_file.items()}


class _LengthPool:
    """Unused texts of one source, searchable by word count (drawn without replacement)."""

    def __init__(self, texts: Sequence[str], rng: random.Random):
        self.texts = list(texts)
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        self.entries = sorted((len(t.split()), i) for i, t in enumerate(self.texts))

    def take(self, index: int) -> str:
        if not self.entries:
            self.reset()  # pool exhausted: texts are reused
            index = min(index, len(self.entries) - 1)
        return self.texts[self.entries.pop(index)[1]]

    def draw(self, target: int) -> tuple[str, bool]:
        """A text of about ``target`` words; returns ``(text, joined from several)``."""
        if not self.entries:
            self.reset()
        low, high = math.ceil(LENGTH_BAND[0] * target), max(target, math.floor(LENGTH_BAND[1] * target))
        start = bisect.bisect_left(self.entries, (low, -1))
        end = bisect.bisect_right(self.entries, (high, len(self.texts)))
        if start < end:
            return self.take(self.rng.randrange(start, end)), False
        if start < len(self.entries):  # every unused text is longer: the shortest of them
            return self.take(start), False
        parts, words = [], 0
        while words < low:  # every unused text is shorter: join random ones
            text = self.take(self.rng.randrange(len(self.entries)) if self.entries else 0)
            parts.append(text)
            words += len(text.split())
        return " ".join(parts), len(parts) > 1


def build_proxy_outliers(per_file: dict[str, list[str]], match_texts: Sequence[str],
                         exclude_texts: Sequence[str], size: int, seed: int = 0) -> tuple[list[str], dict]:
    """Draws ``size`` length-matched proxy outliers (module docstring).

    Args:
      per_file: usable texts per source file (:func:`held_out_texts`).
      match_texts: the ID validation texts whose word counts the proxy follows.
      exclude_texts: ID texts that must not appear as proxies (ID training + validation).
      size: proxy texts to draw.
      seed: the draw's seed.

    Returns:
      ``(texts, info)`` with ``info`` = per-source counts, joined count, mean word counts.

    Raises:
      DataError: no usable text in any file, or nothing to match.
    """
    if not match_texts:
        raise DataError("proxy outliers need ID validation texts to match their lengths")
    excluded = {_key(t) for t in exclude_texts}
    rng = random.Random(seed)
    pools = {}
    for path, texts in per_file.items():
        kept = [t for t in texts if _key(t) not in excluded and t.strip()]
        if kept:
            pools[path] = _LengthPool(kept, rng)
    if not pools:
        raise DataError(f"no usable proxy text in {sorted(per_file)} (all held-out texts excluded?)")
    if size <= len(match_texts):
        targets = [len(t.split()) for t in rng.sample(list(match_texts), size)]
    else:
        targets = [len(rng.choice(match_texts).split()) for _ in range(size)]
    order = sorted(pools)
    texts, counts, joined = [], {os.path.basename(p): 0 for p in order}, 0
    for i, target in enumerate(targets):
        path = order[i % len(order)]
        text, was_joined = pools[path].draw(max(1, target))
        texts.append(text)
        counts[os.path.basename(path)] += 1
        joined += was_joined
    info = {"texts": len(texts), "per_source": counts, "joined_texts": joined,
            "usable_per_source": {os.path.basename(p): len(pools[p].texts) for p in order},
            "mean_words": sum(len(t.split()) for t in texts) / len(texts),
            "id_val_mean_words": sum(len(t.split()) for t in match_texts) / len(match_texts),
            "length_band": list(LENGTH_BAND), "seed": seed}
    return texts, info
