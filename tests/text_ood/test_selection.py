"""``select`` end to end on the tiny models: ranking, the saved choice, export default, no OoD data.

The workdir is a copy of the session's tiny MLKD workdir with the tiny random BERT encoder added
(k-NN trained), so the candidates span every family: language models, the k-NN / Mahalanobis
grid and hybrids.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.text_ood.test_encoder_detectors import encoder_dir  # noqa: F401  (the tiny BERT fixture)
from text_ood.__main__ import main
from text_ood.data import load_dataset
from text_ood.detectors import create_detector
from text_ood.metrics import auroc
from text_ood.workdir import load_context


@pytest.fixture(scope="module")
def selected_workdir(tmp_path_factory, trained_workdir, encoder_dir, ood_data_dir, corpus_file) -> str:
    workdir = str(tmp_path_factory.mktemp("select") / "w")
    shutil.copytree(trained_workdir, workdir)
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                 "--encoder", encoder_dir, "--preset", "tiny", "--detectors", "knn"]) == 0
    assert main(["select", "--workdir", workdir, "--proxy", corpus_file, "--proxy_texts", "40"]) == 0
    return workdir


def _selection(workdir):
    with open(os.path.join(workdir, "selection.json")) as f:
        return json.load(f)


def test_select_ranks_every_family_and_saves_the_best(selected_workdir, ood_data_dir, corpus_file):
    document = _selection(selected_workdir)
    candidates = document["candidates"]
    families = {c["family"] for c in candidates}
    assert families == {"language model", "k-NN", "Mahalanobis", "hybrid"}
    trained = {c["label"] for c in candidates if c["trained"]}
    assert trained == {"teacher", "scratch", "mlkd", "mlkd_no_intermediate", "knn"}
    # Tiny encoder: 2 layers -> pool_layers 1..3 only; k-NN grid 3 pools x 2 centrings x 7.
    assert sum(c["family"] == "k-NN" and not c["trained"] for c in candidates) == 42
    assert "mahalanobis_one_class[pool=3]" in {c["label"] for c in candidates}
    # Hybrids: each of the 4 LMs with the best k-NN and the best Mahalanobis, x 2 normalisations
    # x 2 rules (+ 4 for k-NN with Mahalanobis when both bests share pool_layers).
    hybrids = [c for c in candidates if c["family"] == "hybrid"]
    assert len(hybrids) in (32, 36) and all(len(c["components"]) == 2 for c in hybrids)
    aurocs = [c["proxy_auroc"] for c in candidates]
    assert all(a >= b - 1e-4 for a, b in zip(aurocs, aurocs[1:]))  # ties are re-ordered by FAR95
    assert document["selected"]["label"] == candidates[0]["label"]
    assert document["proxy"]["texts"] == 40 and document["id_val_texts"] == 32
    assert document["proxy"]["only_texts_held_out_from_pretraining"] is False  # --proxy given
    assert os.path.isfile(os.path.join(selected_workdir, "selection.png"))
    # The saved choice reproduces the recorded criterion when reloaded through the registry.
    assert document["recheck"]["proxy_auroc"] == pytest.approx(document["selected"]["proxy_auroc"], abs=0.02)
    ctx = load_context(selected_workdir, load_dataset("files", ood_data_dir))
    selected = create_detector("selected", ctx).restore(ctx.detector_dir("selected"))
    assert selected.name == "selected"
    with open(os.path.join(selected_workdir, "run.json")) as f:
        assert "selected" in json.load(f)["detectors"]
    val = selected.score(ctx.dataset.id_val)
    assert np.all(np.isfinite(val)) and val.shape == (32,)


def test_every_candidate_is_scored_like_its_materialised_detector(selected_workdir, ood_data_dir):
    """Grid scores (from cached every-layer embeddings) equal the detectors' own scores."""
    from text_ood.candidates import Candidate, CandidateScorer
    from text_ood.selection import materialise

    ctx = load_context(selected_workdir, load_dataset("files", ood_data_dir))
    document = _selection(selected_workdir)
    by_label = {c["label"]: Candidate.from_dict(c) for c in document["candidates"]}
    picks = [label for label in ("knn[pool=2,k=3,mean,centred]", "mahalanobis_one_class[pool=3]")]
    picks.append(next(label for label in by_label if label.startswith("hybrid[mlkd+") and "rank;max" in label))
    sets = {"val": list(ctx.dataset.id_val), "probe": list(ctx.dataset.id_test[:12])}
    scorer = CandidateScorer(ctx)
    needed = {c for label in picks for c in by_label[label].components} | set(picks)
    scores = scorer.score([by_label[label] for label in needed if by_label[label].family != "hybrid"], sets)
    scores = scorer.score([by_label[label] for label in picks if by_label[label].family == "hybrid"], sets,
                          known=scores)
    for label in picks:
        detector = materialise(ctx, by_label[label], by_label)
        # Embeddings agree to float32 noise (~1e-7); the rank map's steepest knots (the tiny data
        # set repeats texts, so many k-NN distances sit at 0) magnify that to ~1e-4.
        np.testing.assert_allclose(detector.score(sets["probe"]), scores[label]["probe"], rtol=1e-3, atol=1e-3)


def test_selection_never_reads_ood_or_test_data(selected_workdir, ood_data_dir, corpus_file, tmp_path):
    """Replacing the test splits changes nothing in the ranking."""
    data = str(tmp_path / "data")
    shutil.copytree(ood_data_dir, data)
    for name in os.listdir(data):
        if name.startswith(("ood_test", "id_test")):
            os.remove(os.path.join(data, name))
    with open(os.path.join(data, "id_test.txt"), "w") as f:
        f.write("something else entirely\n")
    with open(os.path.join(data, "ood_test.txt"), "w") as f:
        f.write("garbage zzz qqq\nmore garbage\n")
    workdir = str(tmp_path / "w")
    shutil.copytree(selected_workdir, workdir)
    assert main(["select", "--workdir", workdir, "--data_dir", data, "--proxy", corpus_file,
                 "--proxy_texts", "40"]) == 0
    before, after = _selection(selected_workdir), _selection(workdir)
    assert [(c["label"], c["proxy_auroc"]) for c in before["candidates"]] == \
        [(c["label"], c["proxy_auroc"]) for c in after["candidates"]]


def test_export_defaults_to_the_selection_and_evaluate_reports_it(selected_workdir, tmp_path, caplog, capsys):
    import logging

    caplog.set_level(logging.INFO)
    export_dir = str(tmp_path / "export")
    assert main(["export", "--workdir", selected_workdir, "--export_dir", export_dir]) == 0
    assert "exporting the detector `select` chose" in caplog.text
    with open(os.path.join(export_dir, "1", "assets.extra", "detector.json")) as f:
        info = json.load(f)
    document = _selection(selected_workdir)
    assert info["detector"] == "selected" and info["selected"]["label"] == document["selected"]["label"]
    assert main(["evaluate", "--workdir", selected_workdir, "--detectors", "selected"]) == 0
    with open(os.path.join(selected_workdir, "eval.json")) as f:
        row = json.load(f)["detectors"]["selected"]
    scores = np.load(os.path.join(selected_workdir, "scores", "selected.npz"))
    assert row["auroc"] == pytest.approx(auroc(scores["id"], scores["ood"]))
    capsys.readouterr()
    assert main(["train", "--dataset", "files", "--input", selected_workdir, "--workdir", selected_workdir,
                 "--detectors", "selected"]) == 2
    assert "chosen by `python -m text_ood select`" in capsys.readouterr().err


def test_export_without_selection_keeps_mlkd(trained_workdir, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    assert not os.path.exists(os.path.join(trained_workdir, "selection.json"))
    export_dir = str(tmp_path / "export")
    assert main(["export", "--workdir", trained_workdir, "--export_dir", export_dir]) == 0
    assert "exporting mlkd (no selection.json" in caplog.text


def test_rank_hybrid_with_max_exports_with_matching_graph(selected_workdir, ood_data_dir, tmp_path):
    """A rank-normalised max hybrid trained through `train` exports (the export checks graph = Python)."""
    workdir = str(tmp_path / "w")
    shutil.copytree(selected_workdir, workdir)
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                 "--preset", "tiny", "--set", "encoder.hybrid_normalisation=rank",
                 "--set", "encoder.hybrid_combination=max", "--detectors", "hybrid"]) == 0
    ctx = load_context(workdir, load_dataset("files", ood_data_dir))
    hybrid = create_detector("hybrid", ctx).restore(ctx.detector_dir("hybrid"))
    assert hybrid.combination == "max" and hybrid.normaliser.kind == "rank"
    assert sorted(os.listdir(os.path.join(ctx.detector_dir("hybrid"), "components"))) == ["knn", "mlkd"]
    z = hybrid.normaliser.transform(np.stack([c.score(ctx.dataset.id_test) for c in hybrid.components], 1))
    np.testing.assert_allclose(hybrid.score(ctx.dataset.id_test), z.max(axis=1))
    assert main(["export", "--workdir", workdir, "--export_dir", str(tmp_path / "e"), "--detector", "hybrid"]) == 0


def test_classifier_detector_trains_exports_and_joins_the_grid(encoder_dir, ood_data_dir, corpus_file, tmp_path):
    """With ID labels (a 'label' field) the softmax classifier is trained, exported and ranked."""
    data = str(tmp_path / "data")
    shutil.copytree(ood_data_dir, data)
    with open(os.path.join(data, "id_train.txt")) as f:
        texts = [line.strip() for line in f if line.strip()]
    os.remove(os.path.join(data, "id_train.txt"))
    with open(os.path.join(data, "id_train.jsonl"), "w") as f:
        for text in texts:
            label = "travel" if "flight" in text or "hotel" in text else "bank"
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    workdir = str(tmp_path / "w")
    assert main(["train", "--dataset", "files", "--input", data, "--workdir", workdir, "--encoder",
                 encoder_dir, "--preset", "tiny", "--set", "encoder.classifier_score=msp",
                 "--set", "encoder.classifier_steps=60",
                 "--detectors", "classifier,knn"]) == 0
    ctx = load_context(workdir, load_dataset("files", data))
    classifier = create_detector("classifier", ctx).restore(ctx.detector_dir("classifier"))
    assert classifier.classes == ["bank", "travel"] and classifier.head.kind == "msp"
    scores = classifier.score(ctx.dataset.id_test)
    assert np.all((scores >= 0) & (scores <= 0.5 + 1e-6))  # 1 - max probability of two classes
    assert main(["export", "--workdir", workdir, "--export_dir", str(tmp_path / "e"), "--detector",
                 "classifier"]) == 0  # the export checks the graph against Python scores
    assert main(["select", "--workdir", workdir, "--proxy", corpus_file, "--proxy_texts", "24"]) == 0
    labels = {c["label"] for c in _selection(workdir)["candidates"]}
    assert {"classifier[pool=1,entropy]", "classifier[pool=3,energy]", "classifier"} <= labels
    assert any(label.startswith("hybrid[classifier[") or "+classifier[" in label for label in labels)


def test_pooled_embeddings_come_from_the_every_layer_cache(selected_workdir, encoder_dir, ood_data_dir, tmp_path):
    """After `select` cached every layer of the ID training texts, other pool_layers need no encoder pass."""
    from text_ood.detectors.embedding import load_encoder
    from text_ood.embedding_cache import EmbeddingCache

    ctx = load_context(selected_workdir, load_dataset("files", ood_data_dir))
    texts = ctx.dataset.id_train
    encoder = load_encoder(encoder_dir, 0, 2)
    layers_key = EmbeddingCache(load_encoder(encoder_dir, 0, 1), "x").key(texts, all_layers=True)
    assert EmbeddingCache(encoder, "x").key(texts, all_layers=True) == layers_key  # pool-independent
    directory = str(tmp_path / "cache")
    os.makedirs(directory)
    shutil.copy(os.path.join(selected_workdir, "embeddings", f"{layers_key}.npy"), directory)
    derived = EmbeddingCache(encoder, directory).embed(texts)
    np.testing.assert_allclose(derived, encoder.embed(texts), atol=1e-5)
    assert len(os.listdir(directory)) == 2  # the derived entry is cached too


def test_a_hybrid_of_components_with_different_settings_reloads_exactly(selected_workdir, ood_data_dir,
                                                                         corpus_file, tmp_path):
    """A hybrid of a one-layer Mahalanobis and a three-layer k-NN: the registry rebuilds each
    component with its own encoder settings."""
    from text_ood.candidates import Candidate
    from text_ood.selection import SELECTION_FILE, save_choice

    workdir = str(tmp_path / "w")
    shutil.copytree(selected_workdir, workdir)
    ctx = load_context(workdir, load_dataset("files", ood_data_dir))
    by_label = {c["label"]: Candidate.from_dict(c) for c in _selection(workdir)["candidates"]}
    parts = ("mahalanobis_one_class[pool=1]", "knn[pool=3,k=3,mean]")
    hybrid = Candidate("hybrid[test]", "hybrid", "hybrid", (
        "encoder.hybrid_components=mahalanobis_one_class,knn", "encoder.hybrid_normalisation=rank",
        "encoder.hybrid_combination=max"), components=parts)
    detector, entry = save_choice(ctx, hybrid, by_label)
    assert {n: c["pool_layers"] for n, c in entry["component_encoder_configs"].items()} == {
        "mahalanobis_one_class": 1, "knn": 3}
    with open(os.path.join(workdir, SELECTION_FILE), "w") as f:
        json.dump({"selected": entry}, f)
    reloaded = create_detector("selected", ctx).restore(ctx.detector_dir("selected"))
    assert [c.context.config.encoder.pool_layers for c in reloaded.components] == [1, 3]
    probe = ctx.dataset.id_test + ctx.dataset.id_val
    np.testing.assert_allclose(reloaded.score(probe), detector.score(probe), atol=1e-9)


def test_choose_saves_another_candidate(selected_workdir, corpus_file, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(selected_workdir, workdir)
    label = _selection(workdir)["candidates"][3]["label"]
    assert main(["select", "--workdir", workdir, "--proxy", corpus_file, "--proxy_texts", "40",
                 "--choose", label]) == 0
    document = _selection(workdir)
    assert document["selected"]["label"] == label and document["overridden_by_user"]
    # An unknown label is a usage error (a run without the grid: the check needs no grid scores).
    assert main(["select", "--workdir", workdir, "--proxy", corpus_file, "--proxy_texts", "40", "--grid=false",
                 "--choose", "nope"]) == 2
