"""Length-bucketed batching and the data set readers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from text_ood.batching import length_batches, pad_batch
from text_ood.data import DataError, load_dataset, load_clinc150, read_texts


def test_length_batches_cover_every_example_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=1000)
    batches = length_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 10  # random batches would spread over ~50
    again = length_batches(lengths, 32, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # seeded: resumable


def test_pad_batch():
    ids, mask = pad_batch([[1, 5, 2], [1, 2], [1, 7, 8, 9, 2]], np.array([0, 1]), pad_id=3)
    np.testing.assert_array_equal(ids, [[1, 5, 2], [1, 2, 3]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def test_generic_files_in_three_formats(tmp_path):
    _write(tmp_path / "id_train.txt", "a b\n\nc d\ne f\n" * 5)
    _write(tmp_path / "id_test.jsonl", '{"text": "x y"}\n{"text": "z"}\n')
    _write(tmp_path / "ood_test.tsv", "sentence\tlabel\nfoo bar\t1\nbaz\t0\n")
    ds = load_dataset("files", str(tmp_path), seed=0)
    assert ds.summary() == {"id_train": 14, "id_val": 1, "id_test": 2, "ood_test": 2}
    assert ds.ood_test == ["foo bar", "baz"]


def test_bad_files_fail_clearly(tmp_path):
    _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"txt": "wrong key"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        read_texts(str(tmp_path / "bad.jsonl"))
    _write(tmp_path / "bad.tsv", "a\tb\n1\t2\n")
    with pytest.raises(DataError, match="'text' or 'sentence' column"):
        read_texts(str(tmp_path / "bad.tsv"))
    with pytest.raises(DataError, match="id_train not found"):
        load_dataset("files", str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imdb", str(tmp_path))


def test_non_utf8_file_bytes_are_replaced(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"caf\xe9 ok\n")
    assert read_texts(str(tmp_path / "x.txt")) == ["caf\ufffd ok"]


@pytest.mark.real_data
def test_clinc150_protocol_splits(clinc150_dir):
    ds = load_clinc150(clinc150_dir)
    assert ds.summary() == {"id_train": 15000, "id_val": 3000, "id_test": 4500, "ood_test": 1000}
    with open(os.path.join(clinc150_dir, "data_full.json")) as f:
        raw = json.load(f)
    assert set(ds.ood_test) <= {t for t, _ in raw["oos_test"]}
