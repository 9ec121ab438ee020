"""Proxy outliers for ``select``: held out from pre-training, ID texts excluded, length-matched."""

from __future__ import annotations

import json
import os

import pytest

from text_ood.data import DataError, split_holdout
from text_ood.proxy import LENGTH_BAND, build_proxy_outliers, held_out_texts, pretraining_corpus


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_held_out_texts_reproduce_the_pretraining_split(tmp_path):
    a = _write(tmp_path / "a.txt", [f"sentence number {i} about news" for i in range(60)] + ["shared line"])
    b = _write(tmp_path / "b.txt", [f"caption {i} of a dog" for i in range(40)] + ["shared line"])
    per_file = held_out_texts([a, b], (0.1, 3))
    corpus = [f"sentence number {i} about news" for i in range(60)] + ["shared line"] + \
        [f"caption {i} of a dog" for i in range(40)] + ["shared line"]
    trained, held = split_holdout(corpus, 0.1, seed=3)
    kept = per_file[a] + per_file[b]
    assert set(kept) == set(held) - set(trained)
    assert "shared line" not in kept  # it also occurs in the trained part
    assert held_out_texts([a], None)[a][:2] == ["sentence number 0 about news", "sentence number 1 about news"]


def test_proxy_is_length_matched_round_robin_and_excludes_id_texts():
    news = [" ".join(["word"] * n) + f" n{n}" for n in range(3, 30)]  # 4..30 words
    queries = [f"play song {i}" for i in range(50)]  # 3 words
    match = ["book a flight now", "what is my balance today please", "x " * 11]  # 4, 6, 11 words
    texts, info = build_proxy_outliers({"/d/news.txt": news, "/d/queries.txt": queries}, match,
                                       exclude_texts=["PLAY  song 0", "play song 1"], size=3, seed=0)
    assert info["per_source"] == {"news.txt": 2, "queries.txt": 1}
    assert "play song 0" not in texts and "play song 1" not in texts
    again, _ = build_proxy_outliers({"/d/news.txt": news, "/d/queries.txt": queries}, match,
                                    exclude_texts=["PLAY  song 0", "play song 1"], size=3, seed=0)
    assert again == texts  # deterministic
    # Sources alternate news, queries, news; news texts fall inside the length band of their target.
    targets = sorted(len(m.split()) for m in match)
    for text in (texts[0], texts[2]):
        words = len(text.split())
        assert any(LENGTH_BAND[0] * t <= words <= max(t, LENGTH_BAND[1] * t) for t in targets)


def test_short_sources_are_joined_to_reach_long_targets():
    texts, info = build_proxy_outliers({"/d/q.txt": [f"stop alarm {i}" for i in range(30)]},
                                       ["w " * 20], exclude_texts=[], size=4, seed=1)
    assert all(len(t.split()) >= 16 for t in texts)  # 0.8 x 20 words, from 3-word queries
    assert info["joined_texts"] == 4


def test_pretraining_corpus_prefers_the_recorded_split(tmp_path):
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    with open(pretrain / "corpus.json", "w") as f:
        json.dump({"files": ["/x/a.txt"], "holdout_fraction": 0.02, "seed": 7}, f)
    corpus = pretraining_corpus({"kind": "pretrained", "path": str(pretrain)}, None)
    assert corpus == {"files": ["/x/a.txt"], "holdout": (0.02, 7), "recorded": True}
    with pytest.raises(DataError, match="no data root"):
        pretraining_corpus({"kind": "hf", "path": "x"}, None)
    with pytest.raises(DataError, match="proxy outliers need ID validation texts"):
        build_proxy_outliers({"/d/q.txt": ["a b"]}, [], [], 2)
    with pytest.raises(DataError, match="no usable proxy text"):
        build_proxy_outliers({"/d/q.txt": ["a b"]}, ["a b"], ["A  b"], 2)
    assert not os.path.exists(tmp_path / "x")
