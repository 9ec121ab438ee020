"""Batch OoD scoring on Beam with a real exported MLKD detector (tiny preset)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import batch_ood_scoring
from tests.text_ood.conftest import CORPUS_TEMPLATES, ID_TEMPLATES, OOD_TEMPLATES, make_texts, write_dataset


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory) -> str:
    """pretrain -> train (MLKD only) -> export with the text_ood CLI, tiny preset."""
    from text_ood.__main__ import main

    root = tmp_path_factory.mktemp("ood")
    data = str(root / "data")
    write_dataset(data)
    corpus = str(root / "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(make_texts(CORPUS_TEMPLATES, 300, 5)) + "\n")
    assert main(["pretrain", "--workdir", str(root / "pre"), "--corpus", corpus, "--dataset", "files",
                 "--data_dir", data, "--preset", "tiny"]) == 0
    assert main(["train", "--dataset", "files", "--data_dir", data, "--workdir", str(root / "train"),
                 "--teacher", str(root / "pre"), "--preset", "tiny", "--detectors", "mlkd"]) == 0
    assert main(["export", "--workdir", str(root / "train"), "--export_dir", str(root / "export")]) == 0
    return str(root / "export")


def _outputs(prefix):
    rows = [json.loads(line) for path in sorted(glob.glob(f"{prefix}-0*.jsonl")) for line in open(path)]
    dead = [json.loads(line) for path in sorted(glob.glob(f"{prefix}-dead_letter-*.jsonl")) for line in open(path)]
    return rows, dead, json.load(open(f"{prefix}-summary.json"))


def _raw_scores(model_dir, texts):
    import tensorflow_text  # noqa: F401

    model = tf.saved_model.load(batch_ood_scoring.resolve_model_dir(model_dir))
    return model.signatures["serving_default"](text=tf.constant(texts))["ood_score"].numpy()


def test_jsonl_scoring_matches_the_model_and_dead_letters_bad_rows(exported_detector, tmp_path):
    texts = make_texts(ID_TEMPLATES, 20, 7) + make_texts(OOD_TEMPLATES, 20, 8)
    lines = [json.dumps({"id": f"r{i}", "text": t, "source": "unit", "is_ood": "clash"}) for i, t in enumerate(texts)]
    lines += ['{"id": "bad1", "body": "no text field"}', "{not json", '{"id": "n", "text": null}', '["a"]',
              json.dumps({"id": "empty", "text": ""}), json.dumps({"id": "long", "text": "word " * 5000})]
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin1", "text": "caf\xe9"}\n')
    prefix = str(tmp_path / "out" / "scores")
    assert batch_ood_scoring.main(["--model", exported_detector, "--input", str(path), "--output", prefix,
                                   "--batch_size", "16", "--runner=DirectRunner"]) == 0
    rows, dead, summary = _outputs(prefix)
    assert summary["read"] == 47 and summary["scored"] == 42 and summary["rejected"] == 5 and summary["reconciled"]
    assert summary["rejected_by_reason"] == {"invalid_json": 2, "missing_text": 2, "undecodable_bytes": 1}
    assert len(dead) == 5 and all(d["reason"] and "@" in d["position"] for d in dead)
    by_id = {r["id"]: r for r in rows}
    # Scores equal the raw SavedModel's; fields pass through; a clashing field is renamed.
    expected = _raw_scores(exported_detector, texts)
    np.testing.assert_allclose([by_id[f"r{i}"]["ood_score"] for i in range(len(texts))], expected, rtol=1e-4, atol=1e-4)
    assert by_id["r3"]["source"] == "unit" and by_id["r3"]["input_is_ood"] == "clash"
    threshold = summary["threshold"]
    assert threshold is not None
    assert all(r["is_ood"] == (r["ood_score"] > threshold) for r in rows)
    assert np.isfinite(by_id["empty"]["ood_score"]) and np.isfinite(by_id["long"]["ood_score"])
    assert summary["flagged_ood"] == sum(r["is_ood"] for r in rows)
    # OoD texts score higher on average (the detector works end to end).
    assert np.mean(expected[20:]) > np.mean(expected[:20])


def test_txt_csv_and_tfrecord_inputs(exported_detector, tmp_path):
    texts = make_texts(ID_TEMPLATES, 5, 9)
    txt = tmp_path / "in.txt"
    txt.write_bytes(("\n".join(texts) + "\n").encode() + b"caf\xe9 \xff\n")  # any bytes are scored
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("id,text,lang\n" + "".join(f"c{i},\"{t}\",en\n" for i, t in enumerate(texts)) + "x,y\n")
    record_path = str(tmp_path / "in.tfrecord")
    with tf.io.TFRecordWriter(record_path) as writer:
        for i, text in enumerate(texts):
            example = tf.train.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"t{i}".encode()])),
                "rank": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}))
            writer.write(example.SerializeToString())
        writer.write(b"not an example")
    for path, scored, rejected in ((txt, 6, 0), (csv_path, 5, 1), (record_path, 5, 1)):
        prefix = str(tmp_path / f"out_{os.path.basename(str(path))}" / "s")
        assert batch_ood_scoring.main(["--model", exported_detector, "--input", str(path), "--output", prefix,
                                       "--runner=DirectRunner"]) == 0
        rows, dead, summary = _outputs(prefix)
        assert (summary["scored"], summary["rejected"]) == (scored, rejected), (path, summary)
        assert summary["reconciled"]
    rows, _, _ = _outputs(str(tmp_path / "out_in.tfrecord" / "s"))
    assert sorted(r["id"] for r in rows) == [f"t{i}" for i in range(5)] and {r["rank"] for r in rows} == set(range(5))


def test_two_workers_and_bad_arguments(exported_detector, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(OOD_TEMPLATES, 30, 10)))
    prefix = str(tmp_path / "mp" / "s")
    assert batch_ood_scoring.main(["--model", exported_detector, "--input", str(path), "--output", prefix,
                                   "--runner=DirectRunner", "--direct_num_workers=2",
                                   "--direct_running_mode=multi_processing"]) == 0
    rows, _, summary = _outputs(prefix)
    assert summary["scored"] == 30 and len({r["id"] for r in rows}) == 30
    assert batch_ood_scoring.main(["--model", str(tmp_path), "--input", str(path), "--output", prefix]) == 2
    assert batch_ood_scoring.main(["--model", exported_detector, "--input", "x.parquet", "--output", prefix]) == 2
    assert "expected a .jsonl" in capsys.readouterr().err
