"""The main job's smoke schedule end to end on the real data (skipped without SSL_DATA_DIR)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines import main_job


@pytest.mark.slow
@pytest.mark.real_data
def test_main_job_smoke(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "main")
    assert main_job.main(["--workdir", workdir, "--data_dir", data_dir, "--schedule", "smoke"]) == 0
    report = capsys.readouterr().out
    assert "Main job (smoke schedule) finished" in report and "Served top-5" in report
    recsys_eval = json.load(open(os.path.join(workdir, "recsys", "eval.json")))
    assert recsys_eval["metrics"]["overall"]["examples"] == 9818
    summary = json.load(open(os.path.join(workdir, "scored", "clinc150_test-summary.json")))
    assert summary["read"] == 5500 and summary["scored"] == 5500 and summary["reconciled"]
    # The batch job scores with the export of the detector `select` chose, as `text_ood evaluate` did.
    detectors = json.load(open(os.path.join(workdir, "text_train", "eval.json")))["detectors"]
    assert {"teacher", "scratch", "mlkd", "selected"} <= set(detectors)
    assert "selected without OoD data:" in report
    text_eval = detectors["selected"]
    batch = main_job.MainJob.batch_metrics(os.path.join(workdir, "scored", "clinc150_test"))
    assert batch["auroc"] == pytest.approx(text_eval["auroc"], abs=1e-4)
    assert os.listdir(os.path.join(workdir, "exports", "retrieval")) == ["1"]
    # A re-run skips every finished step.
    assert main_job.main(["--workdir", workdir, "--data_dir", data_dir, "--schedule", "smoke"]) == 0
    assert "step times (s): {}" in capsys.readouterr().out


@pytest.mark.parametrize("module, argv", [
    ("main_job", ["--schedul", "smoke"]),  # Used to run the smoke schedule.
    ("synthetic", ["--output_dir", "x", "--num_user", "5"]),
    ("download", ["movielens", "--data", "x"]),
])
def test_flag_prefixes_are_usage_errors(module, argv, capsys):
    import importlib

    with pytest.raises(SystemExit) as raised:
        importlib.import_module(f"pipelines.{module}").main(argv)
    assert raised.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
