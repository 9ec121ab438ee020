"""Data sets of the OoD task (ID train / ID val / ID test / OoD test) and pre-training corpora.

Formats:
- CLINC150 (``--dataset clinc150``): ``DATA_DIR/data_full.json`` (or ``DATA_DIR/text/clinc150/``)
  with keys ``train``, ``val``, ``test``, ``oos_test``, each a list of ``[text, intent]``. The
  paper's protocol: ID train = the 15,000 in-scope training queries; ID validation = the 3,000
  in-scope validation queries (model selection and threshold calibration only); test = 4,500
  in-scope (ID) + 1,000 out-of-scope (OoD) queries.
- Generic (``--dataset files``): ``DATA_DIR/{id_train,id_val,id_test,ood_test}.{txt,jsonl,tsv}``;
  ``id_val`` is optional (then 10% of ``id_train`` is held out, seeded). ``.txt``: one text per
  line; ``.jsonl``: one object per line with a ``"text"`` field; ``.tsv``: a header row with a
  ``text`` (or ``sentence``) column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import random
from collections.abc import Sequence

logger = logging.getLogger(__name__)

DATASETS = ("clinc150", "files")
TEXT_EXTENSIONS = (".txt", ".jsonl", ".tsv")


class DataError(ValueError):
    """A data file that is missing or not in the expected format."""


@dataclasses.dataclass(frozen=True)
class OODDataset:
    """The four splits of an OoD benchmark; OoD texts are only ever used for testing."""

    name: str
    id_train: list[str]
    id_val: list[str]
    id_test: list[str]
    ood_test: list[str]
    kind: str = "files"  # the --dataset value that reloads it (one of DATASETS)
    # ID class of each id_train text (CLINC150 intents; a "label" field/column of the files
    # layout), or None: only class-conditional detectors use it.
    id_train_labels: list[str] | None = None

    def summary(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("id_train", "id_val", "id_test", "ood_test")}


def load_dataset(name: str, data_dir: str, seed: int = 0) -> OODDataset:
    """Loads ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    Raises:
      DataError: unknown name, missing files, or malformed content.
    """
    if name == "clinc150":
        return load_clinc150(data_dir)
    if name == "files":
        return load_text_files(data_dir, seed=seed)
    raise DataError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")


def load_clinc150(data_dir: str) -> OODDataset:
    """CLINC150 ``data_full.json`` under ``data_dir`` (or ``data_dir/text/clinc150``)."""
    candidates = [os.path.join(data_dir, "data_full.json"),
                  os.path.join(data_dir, "text", "clinc150", "data_full.json")]
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise DataError(f"CLINC150 data_full.json not found; looked for {candidates}")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    missing = [k for k in ("train", "val", "test", "oos_test") if k not in raw]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; has {sorted(raw)}")

    def texts(key: str) -> list[str]:
        rows = raw[key]
        bad = [r for r in rows[:1000] if not (isinstance(r, list) and r and isinstance(r[0], str))]
        if bad:
            raise DataError(f"{path}[{key!r}]: expected [text, intent] pairs, received {bad[0]!r}")
        return [r[0] for r in rows]

    return OODDataset("clinc150", texts("train"), texts("val"), texts("test"), texts("oos_test"),
                      kind="clinc150", id_train_labels=[str(r[1]) for r in raw["train"]])


def _find_split(data_dir: str, split: str) -> str | None:
    for ext in TEXT_EXTENSIONS:
        path = os.path.join(data_dir, split + ext)
        if os.path.isfile(path):
            return path
    return None


def load_text_files(data_dir: str, seed: int = 0) -> OODDataset:
    """The generic layout ``{id_train,id_val,id_test,ood_test}.{txt,jsonl,tsv}`` (see module doc)."""
    splits, labels = {}, None
    for split in ("id_train", "id_val", "id_test", "ood_test"):
        path = _find_split(data_dir, split)
        if path is None:
            if split == "id_val":
                continue
            raise DataError(
                f"{split} not found in {data_dir}: expected {split} with one of {TEXT_EXTENSIONS}"
            )
        splits[split] = read_texts(path)
        if not splits[split]:
            raise DataError(f"{path} holds no texts")
        if split == "id_train":
            labels = read_labels(path)
    if "id_val" not in splits:
        order = list(range(len(splits["id_train"])))
        random.Random(seed).shuffle(order)
        n_val = max(1, len(order) // 10)
        train = splits["id_train"]
        splits["id_val"], splits["id_train"] = [train[i] for i in order[:n_val]], \
            [train[i] for i in order[n_val:]]
        labels = labels and [labels[i] for i in order[n_val:]]
        logger.info("no id_val file: held out %d of id_train for validation", n_val)
    return OODDataset(os.path.basename(os.path.normpath(data_dir)), **splits, kind="files",
                      id_train_labels=labels)


def read_texts(path: str) -> list[str]:
    """Reads texts from a ``.txt`` (line per text), ``.jsonl`` (``text`` field) or ``.tsv`` file.

    Blank lines of ``.txt`` files are skipped; undecodable bytes become U+FFFD.

    Raises:
      DataError: unknown extension, a JSONL line without a string ``text``, or a TSV without a
        ``text``/``sentence`` column.
    """
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if ext == ".txt":
            return [line.strip() for line in f if line.strip()]
        if ext == ".jsonl":
            out = []
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not JSON ({error})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{path}:{number}: expected an object with a string 'text', "
                                    f"received {line.strip()[:80]!r}")
                out.append(record["text"])
            return out
        if ext == ".tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            column = next((c for c in ("text", "sentence") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise DataError(f"{path}: expected a 'text' or 'sentence' column, "
                                f"received header {reader.fieldnames}")
            return [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    raise DataError(f"{path}: unsupported extension {ext!r}; expected one of {TEXT_EXTENSIONS}")


def read_labels(path: str) -> list[str] | None:
    """The ``label`` of each text :func:`read_texts` returns for ``path``, or None.

    Labels come from a ``"label"`` field of every ``.jsonl`` object or a ``label`` column of a
    ``.tsv`` file; ``.txt`` files and files where some text lacks a label have none.
    """
    ext = os.path.splitext(path)[1].lower()
    labels = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if ext == ".jsonl":
            for line in f:
                if line.strip():
                    label = json.loads(line).get("label")
                    if label is None:
                        return None
                    labels.append(str(label))
        elif ext == ".tsv":
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if "label" not in (reader.fieldnames or []):
                return None
            column = next(c for c in ("text", "sentence") if c in reader.fieldnames)
            for row in reader:
                if (row.get(column) or "").strip():
                    if not (row.get("label") or "").strip():
                        return None
                    labels.append(row["label"].strip())
        else:
            return None
    return labels


# The default pre-training corpus under the data root (never the evaluation sets): general
# English (news sentences, image captions, SST-2 training phrases) plus voice-assistant queries
# (HWU64, Snips; CLINC150 duplicates removed), the register of CLINC150-style ID data.
DEFAULT_CORPUS = ("text/general/multi30k_train.txt", "text/general/wmt16_sentences.txt",
                  "text/sst2/train.tsv", "text/queries/hwu64_queries.txt",
                  "text/queries/snips_queries.txt")


def default_corpus(data_root: str) -> list[str]:
    """The :data:`DEFAULT_CORPUS` files under ``data_root``.

    Raises:
      DataError: a file is missing (the message lists which).
    """
    paths = [os.path.join(data_root, relative) for relative in DEFAULT_CORPUS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"default pre-training corpus incomplete under {data_root}: missing "
                        f"{missing}; pass --corpus FILE ... explicitly")
    return paths


def read_corpus(paths: Sequence[str]) -> list[str]:
    """Concatenates the texts of several corpus files (any of :data:`TEXT_EXTENSIONS`)."""
    texts = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"corpus file not found: {path}")
        part = read_texts(path)
        logger.info("corpus %s: %d texts", path, len(part))
        texts.extend(part)
    if not texts:
        raise DataError(f"the corpus {list(paths)} holds no texts")
    return texts


# Share of the pre-training corpus `pretrain` holds out (seeded) for its validation perplexity;
# recorded with the corpus files in PRETRAIN_DIR/corpus.json.
PRETRAIN_HOLDOUT = 0.02
CORPUS_FILE = "corpus.json"


def split_holdout(texts: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffles (seeded) and splits off ``fraction`` of ``texts``; returns ``(rest, held_out)``."""
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    n_out = max(1, int(len(shuffled) * fraction))
    return shuffled[n_out:], shuffled[:n_out]
