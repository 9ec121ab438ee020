"""pretrain -> train -> evaluate on a tiny synthetic data set, and the detector contract."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from text_ood.__main__ import main
from text_ood.data import load_dataset
from text_ood.detectors import DETECTORS, RequiresFittingError, create_detector
from text_ood.workdir import load_context


def test_pretrain_writes_tokenizer_lm_and_logs(pretrain_dir):
    for path in ("config.json", "tokenizer/spm.model", "pretrain/best/lm.json",
                 "pretrain/done.json", "logs/pretrain"):
        assert os.path.exists(os.path.join(pretrain_dir, path)), path


def test_train_writes_every_stage(trained_workdir):
    for stage in ("teacher", "scratch", "mlkd", "mlkd_no_intermediate"):
        with open(os.path.join(trained_workdir, stage, "done.json")) as f:
            done = json.load(f)
        assert done["steps"] == 6 and np.isfinite(done["best_val_perplexity"])
    with open(os.path.join(trained_workdir, "run.json")) as f:
        run = json.load(f)
    assert run["detectors"] == sorted(["teacher", "scratch", "mlkd", "mlkd_no_intermediate"])
    events = os.listdir(os.path.join(trained_workdir, "logs", "mlkd"))
    assert events


def test_evaluate_writes_metrics_and_plot(trained_workdir):
    assert main(["evaluate", "--workdir", trained_workdir]) == 0
    with open(os.path.join(trained_workdir, "eval.json")) as f:
        report = json.load(f)
    assert set(report["detectors"]) == {"teacher", "scratch", "mlkd", "mlkd_no_intermediate"}
    for metrics in report["detectors"].values():
        for key in ("auroc", "aupr_out", "aupr_in", "far95"):
            assert 0.0 <= metrics[key] <= 1.0
    with open(os.path.join(trained_workdir, "roc.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_detector_contract_and_bad_inputs(trained_workdir, ood_data_dir):
    ctx = load_context(trained_workdir, load_dataset("files", ood_data_dir))
    detector = create_detector("mlkd", ctx)
    with pytest.raises(RequiresFittingError):
        detector.score(["hello"])
    detector.fit(ctx.dataset.id_train)  # loads the LM the stage trained; trains nothing
    texts = ["transfer 20 dollars to my savings account", "", "   ", "x" * 20000,
             b"\xff\xfe broken \xc3", "\u2603\u2603"]
    scores = detector.score(texts)
    assert scores.shape == (6,) and np.all(np.isfinite(scores))
    assert scores[1] == scores[2]  # empty and whitespace-only are both [BOS, EOS]
    assert detector.score([]).shape == (0,)
    with pytest.raises(TypeError, match="single str"):
        detector.score("one text")
    with pytest.raises(ValueError, match="at least one ID training text"):
        create_detector("scratch", ctx).fit([])
    with pytest.raises(KeyError, match="registered"):
        create_detector("nope", ctx)
    assert {"mlkd", "mlkd_no_intermediate", "teacher", "scratch"} <= set(DETECTORS)


def test_cli_errors_are_clear(tmp_path, ood_data_dir, pretrain_dir, capsys):
    not_pretrained = tmp_path / "not_pretrained"
    not_pretrained.mkdir()
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 str(tmp_path / "w"), "--teacher", str(not_pretrained), "--preset", "tiny"]) == 2
    assert "no finished pre-training" in capsys.readouterr().err
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 str(tmp_path / "w"), "--teacher", str(tmp_path / "missing"), "--preset", "tiny"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 str(tmp_path / "w"), "--teacher", pretrain_dir, "--set", "model.n_head=5"]) == 2
    assert "must divide" in capsys.readouterr().err
    assert main(["evaluate", "--workdir", str(tmp_path / "never-trained")]) == 2
    assert main(["train", "--dataset", "files", "--workdir", str(tmp_path / "w"), "--teacher", pretrain_dir]) == 2
    assert "--dataset files needs --input DIR" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_workdir_refuses_a_different_config(trained_workdir, pretrain_dir, ood_data_dir, caplog):
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir",
                 trained_workdir, "--teacher", pretrain_dir, "--preset", "tiny",
                 "--set", "student.epochs=3"]) == 2
    assert "different config" in caplog.text and "student.epochs" in caplog.text


def test_student_lm_weight_adds_the_ground_truth_loss(trained_workdir, tmp_path, ood_data_dir):
    # Same teacher (copied, so the stage is reused), seed and batches as trained_workdir's mlkd
    # student; only distill.lm_weight differs, so the training loss grows by the student's NLL
    # (about ln(vocabulary) = ln 120 = 4.8 nats for a barely trained tiny student).
    import shutil

    workdir = str(tmp_path / "lm_weight")
    shutil.copytree(os.path.join(trained_workdir, "teacher"), os.path.join(workdir, "teacher"))
    with open(os.path.join(trained_workdir, "run.json")) as f:
        teacher_dir = json.load(f)["teacher"]["path"]
    assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                 "--teacher", teacher_dir, "--preset", "tiny", "--detectors", "mlkd",
                 "--set", "distill.lm_weight=1"]) == 0
    with open(os.path.join(trained_workdir, "mlkd", "history.json")) as f:
        without = json.load(f)[0]["train_loss"]
    with open(os.path.join(workdir, "mlkd", "history.json")) as f:
        with_lm = json.load(f)[0]["train_loss"]
    assert with_lm > without + 3.0


def test_config_fields_added_later_take_their_defaults_on_resume(tmp_path):
    from text_ood.config import preset
    from text_ood.workdir import TRAIN_SECTIONS, write_config

    config = preset("tiny")
    write_config(str(tmp_path), config, TRAIN_SECTIONS)
    path = tmp_path / "config.json"
    values = json.loads(path.read_text())
    del values["distill"]["lm_weight"]  # as written before the field existed
    path.write_text(json.dumps(values))
    write_config(str(tmp_path), config, TRAIN_SECTIONS)  # the default: same run, resumes
    path.write_text(json.dumps(values))
    changed = dataclasses.replace(config, distill=dataclasses.replace(config.distill, lm_weight=1.0))
    with pytest.raises(ValueError, match="distill.lm_weight"):
        write_config(str(tmp_path), changed, TRAIN_SECTIONS)


def test_train_records_the_teacher_gate_and_plots_every_stage(trained_workdir):
    with open(os.path.join(trained_workdir, "run.json")) as f:
        gate = json.load(f)["teacher_gate"]
    teacher, scratch = (json.load(open(os.path.join(trained_workdir, s, "done.json")))
                        for s in ("teacher", "scratch"))
    assert gate["teacher_val_perplexity"] == teacher["best_val_perplexity"]
    assert gate["scratch_val_perplexity"] == scratch["best_val_perplexity"]
    assert gate["teacher_better"] == (teacher["best_val_perplexity"] < scratch["best_val_perplexity"])
    assert gate["equal_budget"] and "teacher gate" in gate["message"]
    with open(os.path.join(trained_workdir, "val_perplexity.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--workdir", trained_workdir, "--detectors", "scratch"]) == 0
    with open(os.path.join(trained_workdir, "eval.json")) as f:
        assert json.load(f)["teacher_gate"] == gate


def _copy_stages(source: str, target: str, stages) -> None:
    import shutil

    for stage in stages:
        shutil.copytree(os.path.join(source, stage), os.path.join(target, stage))


def test_require_better_teacher_stops_before_distilling(trained_workdir, tmp_path, ood_data_dir,
                                                        caplog):
    # The trained workdir's teacher and from-scratch stages, with the from-scratch model's
    # selected perplexity set below the teacher's: the gate fails; with the flag nothing is
    # distilled and the command exits 1; without it, a warning and the student is trained.
    with open(os.path.join(trained_workdir, "run.json")) as f:
        teacher_dir = json.load(f)["teacher"]["path"]
    for flag, code in ((["--require_better_teacher"], 1), ([], 0)):
        workdir = str(tmp_path / f"gate{len(flag)}")
        _copy_stages(trained_workdir, workdir, ("teacher", "scratch"))
        done_path = os.path.join(workdir, "scratch", "done.json")
        with open(os.path.join(workdir, "teacher", "done.json")) as f:
            teacher_ppl = json.load(f)["best_val_perplexity"]
        with open(done_path) as f:
            done = json.load(f)
        done["best_val_perplexity"] = teacher_ppl * 0.5
        with open(done_path, "w") as f:
            json.dump(done, f)
        caplog.clear()
        assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                     "--teacher", teacher_dir, "--preset", "tiny", "--detectors", "mlkd", *flag]) == code
        assert "teacher gate FAILED" in caplog.text
        assert os.path.isdir(os.path.join(workdir, "mlkd")) == (code == 0)
        with open(os.path.join(workdir, "run.json")) as f:
            assert json.load(f)["teacher_gate"]["teacher_better"] is False


def test_student_options_normalised_distance_and_projection_decay(trained_workdir, tmp_path,
                                                                  ood_data_dir):
    # Same teacher, seed and batches as the trained workdir's mlkd student; the layer-normalised
    # distance is scale-free, so its first logged value differs from the published MSE, and the
    # projection's norm is logged; without weight decay on it the projection ends larger.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(os.path.join(trained_workdir, "run.json")) as f:
        teacher_dir = json.load(f)["teacher"]["path"]

    def logged(workdir, tag):
        accumulator = EventAccumulator(os.path.join(workdir, "logs", "mlkd"), size_guidance={"tensors": 0})
        accumulator.Reload()
        return [float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]

    import tensorflow as tf

    norms, terms = {}, {}
    for name, sets in (("ln", ["distill.intermediate_distance=layernorm_mse"]),
                       ("nodecay", ["distill.projection_weight_decay=false",
                                    "student.weight_decay=0.5"]),
                       ("decay", ["student.weight_decay=0.5"])):
        workdir = str(tmp_path / name)
        _copy_stages(trained_workdir, workdir, ("teacher", "scratch"))
        assert main(["train", "--dataset", "files", "--input", ood_data_dir, "--workdir", workdir,
                     "--teacher", teacher_dir, "--preset", "tiny", "--detectors", "mlkd",
                     "--set", "student.epochs=1", *[x for s in sets for x in ("--set", s)]]) == 0
        norms[name] = logged(workdir, "train/projection_norm")
        terms[name] = logged(workdir, "train/intermediate_kd")
        assert len(terms[name]) == 6 and np.all(np.isfinite(terms[name]))
    assert norms["nodecay"][-1] > norms["decay"][-1]
    assert norms["nodecay"][0] == norms["decay"][0]  # same seeded initialisation
    assert abs(terms["ln"][0] - logged(trained_workdir, "train/intermediate_kd")[0]) > 1e-3


def test_detectors_do_not_import_the_training_code():
    import subprocess
    import sys

    code = ("import sys, text_ood.detectors, text_ood.evaluate, text_ood.export; "
            "print(sorted(m for m in ('text_ood.stages', 'text_ood.trainer', 'core.loop') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_detectors_are_saved_by_train_and_restored_without_training(trained_workdir, ood_data_dir):
    ctx = load_context(trained_workdir, load_dataset("files", ood_data_dir))
    for name in ("teacher", "scratch", "mlkd", "mlkd_no_intermediate"):
        with open(os.path.join(ctx.detector_dir(name), "detector.json")) as f:
            saved = json.load(f)
        assert saved["name"] == name and saved["state"]["lm_dir"] == os.path.join(name, "best")
    assert main(["evaluate", "--workdir", trained_workdir, "--detectors", "mlkd"]) == 0
    fresh = load_context(trained_workdir, load_dataset("files", ood_data_dir))
    detector = create_detector("mlkd", fresh).restore(fresh.detector_dir("mlkd"))
    evaluated = np.load(os.path.join(trained_workdir, "scores", "mlkd.npz"))["ood"]
    np.testing.assert_allclose(detector.score(fresh.dataset.ood_test), evaluated, rtol=1e-6)
    import shutil

    moved = os.path.join(os.path.dirname(trained_workdir), "without_mlkd_stage")
    shutil.copytree(trained_workdir, moved,  # everything but the mlkd stage's trained LM
                    ignore=lambda d, names: ["mlkd"] if os.path.samefile(d, trained_workdir) else [])
    ctx = load_context(moved, load_dataset("files", ood_data_dir))
    with pytest.raises(RequiresFittingError, match="no trained language model"):
        create_detector("mlkd", ctx).restore(ctx.detector_dir("mlkd"))  # a detector never trains


def test_teacher_can_start_from_any_pretraining_pass(pretrain_dir, ood_data_dir, tmp_path, caplog):
    assert os.path.isdir(os.path.join(pretrain_dir, "pretrain", "epochs", "1"))  # every pass is kept
    base = ["train", "--dataset", "files", "--input", ood_data_dir, "--teacher", pretrain_dir,
            "--preset", "tiny", "--detectors", "teacher"]
    assert main([*base, "--workdir", str(tmp_path / "bad"), "--teacher_pass", "7"]) == 2
    assert "epochs/7 does not exist" in caplog.text
    workdir = str(tmp_path / "pass1")
    assert main([*base, "--workdir", workdir, "--teacher_pass", "1"]) == 0
    with open(os.path.join(workdir, "run.json")) as f:
        assert json.load(f)["teacher"]["pass"] == 1
