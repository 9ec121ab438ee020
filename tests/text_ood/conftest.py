"""Fixtures of the text OoD tests: a small synthetic OoD data set and tiny trained workdirs.

The data set is generated here (no network, no real data): ID texts are banking/travel requests
from templates, OoD texts are cooking and sport sentences, the pre-training corpus mixes general
sentences. Training uses the ``tiny`` preset (2 x 32 GPT-2, a few steps per stage), once per
session.
"""

from __future__ import annotations

import os
import random

import pytest

import text_ood  # noqa: F401  (Keras 2 before TensorFlow)

ID_TEMPLATES = ["what is the balance of my {a} account", "transfer {n} dollars to my {a} account",
                "book a flight to {c} on {d}", "is my flight to {c} delayed",
                "how much money is in my {a} account", "cancel my hotel in {c} for {d}"]
OOD_TEMPLATES = ["how long should i bake {f} at {n} degrees", "who won the {s} game last night",
                 "give me a recipe for {f} with garlic", "what is the score of the {s} match"]
CORPUS_TEMPLATES = ["the {x} walked across the {y} in the morning", "a {x} is sitting near the {y}",
                    "people say the {y} was {z} yesterday", "two {x}s are playing with a {y}"]
WORDS = {"a": ["checking", "savings", "joint", "business"], "n": ["20", "50", "350", "1000"],
         "c": ["paris", "tokyo", "denver", "lima"], "d": ["monday", "friday", "june 3rd"],
         "f": ["bread", "salmon", "lasagna", "cookies"], "s": ["football", "tennis", "hockey"],
         "x": ["dog", "man", "woman", "child", "cat"], "y": ["street", "park", "river", "table"],
         "z": ["quiet", "busy", "beautiful", "cold"]}


def _fill(template: str, rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in WORDS.items()})


def make_texts(templates, n, seed):
    rng = random.Random(seed)
    return [_fill(rng.choice(templates), rng) for _ in range(n)]


def write_dataset(directory: str) -> None:
    """``files`` layout: id_train 160 (.txt), id_val 32 (.jsonl), id_test 40 (.txt), ood_test 24 (.tsv)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "id_train.txt"), "w") as f:
        f.write("\n".join(make_texts(ID_TEMPLATES, 160, 1)) + "\n")
    with open(os.path.join(directory, "id_val.jsonl"), "w") as f:
        import json

        f.writelines(json.dumps({"text": t}) + "\n" for t in make_texts(ID_TEMPLATES, 32, 2))
    with open(os.path.join(directory, "id_test.txt"), "w") as f:
        f.write("\n".join(make_texts(ID_TEMPLATES, 40, 3)) + "\n")
    with open(os.path.join(directory, "ood_test.tsv"), "w") as f:
        f.write("text\n" + "\n".join(make_texts(OOD_TEMPLATES, 24, 4)) + "\n")


@pytest.fixture(scope="session")
def ood_data_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("ood_data"))
    write_dataset(directory)
    return directory


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("corpus") / "general.txt")
    with open(path, "w") as f:
        f.write("\n".join(make_texts(CORPUS_TEMPLATES, 300, 5)) + "\n")
    return path


@pytest.fixture(scope="session")
def pretrain_dir(tmp_path_factory, corpus_file, ood_data_dir) -> str:
    from text_ood.__main__ import main

    workdir = str(tmp_path_factory.mktemp("pretrain"))
    assert main(["pretrain", "--workdir", workdir, "--corpus", corpus_file, "--dataset", "files",
                 "--data_dir", ood_data_dir, "--preset", "tiny"]) == 0
    return workdir


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, pretrain_dir, ood_data_dir) -> str:
    """A ``train`` workdir with all four detectors trained (tiny preset)."""
    from text_ood.__main__ import main

    workdir = str(tmp_path_factory.mktemp("train"))
    assert main(["train", "--dataset", "files", "--data_dir", ood_data_dir, "--workdir", workdir,
                 "--teacher", pretrain_dir, "--preset", "tiny",
                 "--detectors", "teacher,scratch,mlkd,mlkd_no_intermediate"]) == 0
    return workdir
