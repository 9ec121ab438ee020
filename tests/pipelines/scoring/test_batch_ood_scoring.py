"""Batch OoD scoring on Beam (``pipelines/scoring/batch_ood_scoring.py``).

Record handling, inputs, dead letters and runners are tested on the OoD stand-in export
(``serving/standins.py``: the same signature as ``text_ood export``, built in a second); one test
scores with the real exported MLKD student (tiny preset), marked slow because it needs the
session's trained model.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines.__main__ import main
from pipelines.scoring import batch_ood_scoring
from tests.fixtures.text_data import ID_TEMPLATES, OOD_TEMPLATES, make_texts


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory) -> str:
    """The OoD stand-in, exported like ``text_ood export`` (with a calibrated threshold)."""
    from serving.standins import export_ood
    from text_ood.contract import DETECTOR_JSON

    export_dir = str(tmp_path_factory.mktemp("standin_ood"))
    version = export_ood(export_dir, make_texts(ID_TEMPLATES, 50, 1))
    scores = _raw_scores(version, make_texts(ID_TEMPLATES, 50, 2))
    os.makedirs(os.path.join(version, "assets.extra"), exist_ok=True)
    with open(os.path.join(version, "assets.extra", DETECTOR_JSON), "w") as f:
        json.dump({"threshold": float(np.quantile(scores, 0.95))}, f)
    return export_dir


def _outputs(output_dir):
    rows = [json.loads(line) for path in sorted(glob.glob(f"{output_dir}/scores-*.jsonl")) for line in open(path)]
    dead = [json.loads(line) for path in sorted(glob.glob(f"{output_dir}/dead_letter-*.jsonl")) for line in open(path)]
    return rows, dead, json.load(open(f"{output_dir}/summary.json"))


def _raw_scores(model_dir, texts):
    import tensorflow_text  # noqa: F401

    model = tf.saved_model.load(batch_ood_scoring.resolve_model_dir(model_dir))
    return model.signatures["serving_default"](text=tf.constant(texts))["ood_score"].numpy()


@pytest.mark.slow
def test_the_trained_mlkd_export_scores_ood_texts_higher(exported_mlkd, tmp_path):
    texts = make_texts(ID_TEMPLATES, 20, 7) + make_texts(OOD_TEMPLATES, 20, 8)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = str(tmp_path / "out")
    assert main(["batch_score", "--export_dir", exported_mlkd, "--input", str(path), "--output_dir", out,
                 "--batch_size", "16", "--runner=DirectRunner"]) == 0
    rows, _, summary = _outputs(out)
    expected = _raw_scores(exported_mlkd, texts)
    np.testing.assert_allclose([{r["id"]: r for r in rows}[f"r{i}"]["ood_score"] for i in range(len(texts))],
                               expected, rtol=1e-4, atol=1e-4)
    assert summary["threshold"] is not None and summary["scored"] == 40
    assert np.mean(expected[20:]) > np.mean(expected[:20])  # the detector works end to end


def test_jsonl_scoring_matches_the_model_and_dead_letters_bad_rows(exported_detector, tmp_path):
    texts = make_texts(ID_TEMPLATES, 20, 7) + make_texts(OOD_TEMPLATES, 20, 8)
    lines = [json.dumps({"id": f"r{i}", "text": t, "source": "unit", "is_ood": "clash"}) for i, t in enumerate(texts)]
    lines += ['{"id": "bad1", "body": "no text field"}', "{not json", '{"id": "n", "text": null}', '["a"]',
              json.dumps({"id": "empty", "text": ""}), json.dumps({"id": "long", "text": "word " * 5000})]
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "latin1", "text": "caf\xe9"}\n')
    prefix = str(tmp_path / "out")
    assert main(["batch_score", "--export_dir", exported_detector, "--input", str(path), "--output_dir", prefix,
                 "--batch_size", "16", "--max_reject_fraction=0.2", "--runner=DirectRunner"]) == 0
    rows, dead, summary = _outputs(prefix)
    assert summary["read"] == 47 and summary["scored"] == 41 and summary["rejected"] == 6 and summary["reconciled"]
    assert summary["rejected_by_reason"] == {"empty_text": 1, "invalid_json": 2, "missing_text": 2,
                                             "undecodable_bytes": 1}
    assert len(dead) == 6 and all(d["reason"] and "@" in d["position"] for d in dead)
    by_id = {r["id"]: r for r in rows}
    # Scores equal the raw SavedModel's; fields pass through; a clashing field is renamed.
    expected = _raw_scores(exported_detector, texts)
    np.testing.assert_allclose([by_id[f"r{i}"]["ood_score"] for i in range(len(texts))], expected, rtol=1e-4, atol=1e-4)
    assert by_id["r3"]["source"] == "unit" and by_id["r3"]["input_is_ood"] == "clash"
    threshold = summary["threshold"]
    assert threshold is not None
    assert all(r["is_ood"] == (r["ood_score"] > threshold) for r in rows)
    assert "empty" not in by_id and np.isfinite(by_id["long"]["ood_score"])
    assert summary["flagged_ood"] == sum(r["is_ood"] for r in rows) > 0


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
        prefix = str(tmp_path / f"out_{os.path.basename(str(path))}")
        assert main(["batch_score", "--export_dir", exported_detector, "--input", str(path), "--output_dir", prefix,
                     "--max_reject_fraction=0.2", "--runner=DirectRunner"]) == 0
        rows, dead, summary = _outputs(prefix)
        assert (summary["scored"], summary["rejected"]) == (scored, rejected), (path, summary)
        assert summary["reconciled"]
    rows, _, _ = _outputs(str(tmp_path / "out_in.tfrecord"))
    assert sorted(r["id"] for r in rows) == [f"t{i}" for i in range(5)] and {r["rank"] for r in rows} == set(range(5))


def test_two_workers_and_bad_arguments(exported_detector, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(OOD_TEMPLATES, 30, 10)))
    prefix = str(tmp_path / "mp")
    assert main(["batch_score", "--export_dir", exported_detector, "--input", str(path), "--output_dir", prefix,
                 "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]) == 0
    rows, _, summary = _outputs(prefix)
    assert summary["scored"] == 30 and len({r["id"] for r in rows}) == 30
    assert main(["batch_score", "--export_dir", str(tmp_path), "--input", str(path), "--output_dir", prefix]) == 2
    assert "neither a SavedModel directory nor an export base" in capsys.readouterr().err
    assert main(["batch_score", "--export_dir", exported_detector, "--input", "x.parquet", "--output_dir", prefix]) == 2
    assert "expected a .jsonl" in capsys.readouterr().err
    assert main(["batch_score", "--export_dir", exported_detector, "--input", str(path), "--output_dir", prefix,
                 "--batch_size", "0"]) == 2
    assert "--batch_size must be >= 1" in capsys.readouterr().err


# Issue 14: one bad record never kills the job; every dead letter has a findable position.

def _score(exported_detector, path, output_dir, *extra):
    return main(["batch_score", "--export_dir", exported_detector, "--input", str(path), "--output_dir", output_dir,
                 "--runner=DirectRunner", *extra])


def test_lone_surrogates_nan_fields_and_blank_texts(exported_detector, tmp_path):
    texts = make_texts(ID_TEMPLATES, 10, 11)
    lines = [json.dumps({"id": f"r{i}", "text": t, "score": 1.5}) for i, t in enumerate(texts)]
    lines += ['{"id": "s1", "text": "bad \\ud800 text"}', '{"id": "s2", "text": "ok", "note": "\\udfff"}',
              '{"id": "n1", "text": "fine text here", "score": NaN, "inf": -Infinity}',
              json.dumps({"id": "w1", "text": "   \t "}), json.dumps({"id": "e1", "text": ""})]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    prefix = str(tmp_path / "out")
    assert _score(exported_detector, path, prefix, "--max_reject_fraction=0.5") == 0
    rows, dead, summary = _outputs(prefix)
    assert summary["read"] == 15 and summary["scored"] == 11 and summary["reconciled"]
    # A lone surrogate anywhere in a record (text or pass-through field) cannot be written as UTF-8.
    assert summary["rejected_by_reason"] == {"empty_text": 2, "invalid_unicode": 2}
    assert {d["kind"] for d in dead} == {"empty_text", "invalid_unicode"}
    for letter in dead:  # Positions point at the rejected line.
        file_path, offset = letter["position"].rsplit("@", 1)
        with open(file_path, "rb") as f:
            f.seek(int(offset))
            assert json.loads(f.readline())["id"] in ("s1", "s2", "w1", "e1")
    strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
              for line in open(glob.glob(f"{prefix}/scores-*.jsonl")[0])]
    by_id = {r["id"]: r for r in strict}
    assert by_id["n1"]["score"] == "NaN" and by_id["n1"]["inf"] == "-Infinity" and by_id["r0"]["score"] == 1.5
    assert not glob.glob(str(tmp_path / "out" / "beam-temp-*"))


def test_truncated_and_corrupt_tfrecords_are_dead_letters_with_offsets(exported_detector, tmp_path):
    texts = make_texts(ID_TEMPLATES, 6, 12)
    good = str(tmp_path / "a.tfrecord")
    offsets = []
    with tf.io.TFRecordWriter(good) as writer:
        for i, text in enumerate(texts):
            offsets.append(os.path.getsize(good) if i else 0)
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"t{i}".encode()]))})).SerializeToString())
            writer.flush()
    data = open(good, "rb").read()
    (tmp_path / "b.tfrecord").write_bytes(data[: offsets[4] + 20])  # Cut inside record 4.
    corrupt = bytearray(data)
    corrupt[offsets[2] + 12 + 5] ^= 0xFF  # Flip a byte in record 2's data.
    (tmp_path / "c.tfrecord").write_bytes(bytes(corrupt))
    prefix = str(tmp_path / "out")
    assert _score(exported_detector, str(tmp_path / "*.tfrecord"), prefix, "--max_reject_fraction=0.5") == 0
    rows, dead, summary = _outputs(prefix)
    # a: 6 scored; b: 4 scored + 1 truncated; c: 2 scored + 1 corrupt (the rest of c is skipped).
    assert (summary["read"], summary["scored"], summary["rejected"]) == (14, 12, 2) and summary["reconciled"]
    positions = sorted((os.path.basename(d["position"].rsplit("@", 1)[0]), int(d["position"].rsplit("@", 1)[1]))
                       for d in dead)
    assert positions == [("b.tfrecord", offsets[4]), ("c.tfrecord", offsets[2])]
    assert {d["kind"] for d in dead} == {"unreadable_record"}
    gz = tmp_path / "gz"
    gz.mkdir()
    import gzip
    (gz / "d.tfrecord.gz").write_bytes(gzip.compress(data)[:-30])  # A gzip stream cut short.
    prefix = str(tmp_path / "out_gz")
    assert _score(exported_detector, str(gz / "*.tfrecord.gz"), prefix, "--max_reject_fraction=0.5") == 0
    rows, dead, summary = _outputs(prefix)
    assert summary["reconciled"] and summary["rejected"] == 1 and summary["scored"] >= 1


def test_a_job_that_rejects_everything_fails(exported_detector, tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in make_texts(ID_TEMPLATES, 5, 13)))
    assert _score(exported_detector, path, str(tmp_path / "o")) == 1
    assert "texts: every record was rejected (5 of 5)" in capsys.readouterr().err


def test_portable_runner_scores_like_the_direct_runner(exported_detector, tmp_path):
    """Batch scoring on Beam's portable runner (embedded job server, loopback SDK harness)."""
    texts = make_texts(ID_TEMPLATES, 8, 14) + make_texts(OOD_TEMPLATES, 8, 15)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t, "k": i}) + "\n" for i, t in enumerate(texts))
                    + '{"id": "bad", "body": "x"}\n{broken\n')
    results = {}
    for name, flags in (("direct", ["--runner=DirectRunner"]),
                        ("portable", ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"])):
        prefix = str(tmp_path / name)
        assert _score(exported_detector, path, prefix, "--max_reject_fraction=0.2", *flags) == 0
        rows, dead, summary = _outputs(prefix)
        results[name] = (sorted(rows, key=lambda r: r["id"]), sorted((d["position"], d["kind"]) for d in dead),
                         {k: v for k, v in summary.items()})
    direct, portable = results["direct"], results["portable"]
    assert direct[2]["scored"] == 16 and direct[2]["rejected"] == 2
    assert portable[1:] == direct[1:]
    assert [(r["id"], r["k"], r["is_ood"]) for r in portable[0]] == [(r["id"], r["k"], r["is_ood"]) for r in direct[0]]
    np.testing.assert_allclose([r["ood_score"] for r in portable[0]], [r["ood_score"] for r in direct[0]], rtol=1e-5)


# Issue 23: pathological records never kill the job.

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 4301


@pytest.fixture(scope="module")
def standin_ood(tmp_path_factory) -> str:
    """The OoD stand-in export (same contract as text_ood's), with a detector.json limit of 1,000 bytes."""
    from serving import standins

    version_dir = standins.export_ood(str(tmp_path_factory.mktemp("ood") / "ood"))
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(version_dir, "assets.extra", "detector.json"), "w") as f:
        json.dump({"threshold": 5.0, "max_text_bytes": 1000}, f)
    return version_dir


@pytest.mark.slow  # A Beam job end to end (the stand-in model needs no training).
def test_batch_scoring_finishes_and_reconciles_with_pathological_records(standin_ood, tmp_path):
    good = [json.dumps({"id": f"g{i}", "text": f"what is my balance {i}"}) for i in range(30)]
    bad = ['{"id": "deep", "text": ' + DEEP + "}", '{"id": "int", "n": ' + HUGE_INT + ', "text": "x"}',
           json.dumps({"id": "long", "text": "a" * 1001}),
           '{"id": "deep_field", "text": "ok", "extra": ' + "[" * 900 + "]" * 900 + "}"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(good + bad) + "\n").encode())
    out = str(tmp_path / "out")
    assert main(["batch_score", "--export_dir", standin_ood, "--input", str(path), "--output_dir", out,
                 "--max_reject_fraction=0.2", "--runner=DirectRunner"]) == 0
    scored, dead, summary = _outputs(out)
    assert summary["read"] == 34 and summary["reconciled"], summary
    assert summary["scored"] == 30 and {r["id"] for r in scored} == {f"g{i}" for i in range(30)}  # g0 kept (BOM)
    assert summary["rejected_by_reason"] == {"invalid_json": 1, "text_too_long": 1, "too_deeply_nested": 2}, summary
    assert all(d["reason"] and "@" in d["position"] for d in dead)
