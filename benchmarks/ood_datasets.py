"""OoD benchmark configurations beyond CLINC150, written in ``text_ood``'s ``--dataset files`` layout.

The way a new user brings their own data: ``DIR/{id_train,id_val,id_test,ood_test}.jsonl``
(``{"text": ..., "label": ...}`` per line). AG News and 20 Newsgroups are evaluation sets: the
ID train / validation / test splits are carved from their ID class(es) here (seeded), nothing is
pre-trained or tuned on them, and their OoD texts are only ever test texts.

- ``ag_news_<class>`` (world, sports, business, scitech): AG News test.csv (7,600 items, 1,900
  per class); ID = one class, split 60 / 20 / 20 (1,140 / 380 / 380); OoD test = 1,900 items
  sampled evenly from the other three classes. Text = title + ". " + description, with the
  corpus's escapes (``#36;``, ``\\``) undone. No labels (one ID class).
- ``20ng_<group>`` (comp, rec, sci, politics, religion): mini_newsgroups (100 articles per
  group), grouped into the six usual top-level sets (comp.* 5 groups, rec.* 4, sci.* 4,
  talk.politics.* 3, religion = alt.atheism + soc.religion.christian + talk.religion.misc,
  misc.forsale alone, which is too small to be ID); ID = one set, split 50 / 25 / 25, labels =
  the newsgroup; OoD test = 500 articles sampled evenly from the other groups. Text =
  the article body: headers, quoted lines (``>``, ``... writes:``) and the signature after
  ``--`` removed, whitespace collapsed, cut at 600 characters on a word boundary
  (about 100 words: the sentence encoder's cost grows with length; the LMs read 64 tokens).

Usage: ``python -m benchmarks.ood_datasets --output_dir runs/data`` (all configurations) or
:func:`write_config` from another script.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import random
import re
import sys
import tarfile

from core.env import data_root

AG_CLASSES = {"world": "1", "sports": "2", "business": "3", "scitech": "4"}
NG_SETS = {
    "comp": ("comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
             "comp.sys.mac.hardware", "comp.windows.x"),
    "rec": ("rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey"),
    "sci": ("sci.crypt", "sci.electronics", "sci.med", "sci.space"),
    "politics": ("talk.politics.guns", "talk.politics.mideast", "talk.politics.misc"),
    "religion": ("alt.atheism", "soc.religion.christian", "talk.religion.misc"),
}
CONFIGS = [f"ag_news_{c}" for c in AG_CLASSES] + [f"20ng_{g}" for g in NG_SETS]
MAX_CHARS = 600


def read_ag_news(root: str) -> list[tuple[str, str]]:
    """``[(text, class id "1".."4")]`` of AG News test.csv."""
    out = []
    with open(os.path.join(root, "text", "ag_news", "test.csv"), newline="", encoding="utf-8") as f:
        for label, title, description in csv.reader(f):
            text = f"{title.strip()}. {description.strip()}".replace("\\", " ")
            text = html.unescape(re.sub(r"#(\d+);", r"&#\1;", text)).replace("quot;", '"')
            out.append((re.sub(r"\s+", " ", text).strip(), label))
    return out


def article_body(raw: str) -> str:
    """A Usenet article without headers, quotes and signature, cut at :data:`MAX_CHARS`."""
    body = raw.split("\n\n", 1)[1] if "\n\n" in raw else raw
    lines = []
    for line in body.splitlines():
        if line.strip() == "--":
            break
        if line.lstrip().startswith((">", "|")) or re.search(r"(writes|wrote):\s*$", line) \
                or line.startswith("In article"):
            continue
        lines.append(line)
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    return text[:MAX_CHARS].rsplit(" ", 1)[0] if len(text) > MAX_CHARS else text


def read_newsgroups(root: str) -> list[tuple[str, str]]:
    """``[(body, group)]`` of mini_newsgroups (articles with fewer than 5 words dropped)."""
    out = []
    with tarfile.open(os.path.join(root, "text", "20newsgroups", "mini_newsgroups.tar.gz")) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3:
                text = article_body(tar.extractfile(member).read().decode("latin-1"))
                if len(text.split()) >= 5:
                    out.append((text, parts[1]))
    return out


def _split(items, fractions, seed):
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train = round(fractions[0] * len(items))
    n_val = round(fractions[1] * len(items))
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]


def _even_sample(items, key, size, seed):
    """Up to ``size`` items, as even as possible across ``key`` values (seeded)."""
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    out, index = [], 0
    while len(out) < min(size, len(items)):
        for name in sorted(groups):
            if index < len(groups[name]) and len(out) < size:
                out.append(groups[name][index])
        index += 1
    return out


def build_config(name: str, root: str, seed: int = 0) -> dict[str, list[dict]]:
    """The four splits of configuration ``name`` (module docstring) as JSONL records."""
    if name.startswith("ag_news_"):
        label = AG_CLASSES[name.removeprefix("ag_news_")]
        rows = read_ag_news(root)
        id_rows = [r for r in rows if r[1] == label]
        ood = _even_sample([r for r in rows if r[1] != label], lambda r: r[1], 1900, seed)
        fractions, with_labels = (0.6, 0.2), False
    elif name.startswith("20ng_"):
        groups = NG_SETS[name.removeprefix("20ng_")]
        rows = read_newsgroups(root)
        id_rows = [r for r in rows if r[1] in groups]
        ood = _even_sample([r for r in rows if r[1] not in groups], lambda r: r[1], 500, seed)
        fractions, with_labels = (0.5, 0.25), True
    else:
        raise ValueError(f"unknown configuration {name!r}; valid: {CONFIGS}")
    train, val, test = _split(id_rows, fractions, seed)

    def records(rows, labels=False):
        return [{"text": t, "label": g} if labels else {"text": t} for t, g in rows]

    return {"id_train": records(train, with_labels), "id_val": records(val), "id_test": records(test),
            "ood_test": [{"text": t, "source_class": g} for t, g in ood]}


def write_config(name: str, output_dir: str, root: str, seed: int = 0) -> str:
    """Writes ``output_dir/name/{split}.jsonl`` (skipped when complete); returns the directory."""
    directory = os.path.join(output_dir, name)
    done = os.path.join(directory, "splits.json")
    if os.path.isfile(done):
        return directory
    splits = build_config(name, root, seed)
    os.makedirs(directory, exist_ok=True)
    for split, rows in splits.items():
        with open(os.path.join(directory, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(done, "w") as f:
        json.dump({"config": name, "seed": seed, **{k: len(v) for k, v in splits.items()}}, f, indent=2)
    return directory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True,
                        help="writes OUTPUT_DIR/<configuration>/{id_train,id_val,id_test,ood_test}.jsonl")
    parser.add_argument("--data_dir", default=None, help="data root (default: $SSL_DATA_DIR)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated configurations (default: all): {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    root = data_root(args.data_dir)
    if root is None:
        parser.error("pass --data_dir or set $SSL_DATA_DIR")
    for name in args.configs.split(","):
        directory = write_config(name, args.output_dir, root)
        with open(os.path.join(directory, "splits.json")) as f:
            print(name, json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
