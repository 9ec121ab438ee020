"""The main job's smoke preset end to end on the real data (skipped without SSL_DATA_DIR)."""

from __future__ import annotations

import json
import os

import pytest

from pipelines import main_job
from pipelines.__main__ import main


@pytest.mark.slow
@pytest.mark.real_data
def test_main_job_smoke(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "main")
    assert main(["main_job", "--workdir", workdir, "--data_dir", data_dir, "--preset", "smoke"]) == 0
    report = capsys.readouterr().out
    assert "Main job (smoke preset) finished" in report and "Served top-5" in report
    recsys_eval = json.load(open(os.path.join(workdir, "recsys", "eval.json")))
    assert recsys_eval["metrics"]["overall"]["examples"] == 9818
    summary = json.load(open(os.path.join(workdir, "scored", "summary.json")))
    assert summary["read"] == 5500 and summary["scored"] == 5500 and summary["reconciled"]
    # The batch job scores with the export of the detector `select` chose, as `text_ood evaluate` did.
    detectors = json.load(open(os.path.join(workdir, "text_train", "eval.json")))["detectors"]
    assert {"teacher", "scratch", "mlkd", "selected"} <= set(detectors)
    assert "selected without OoD data:" in report and "selected (deploy this)" in report
    text_eval = detectors["selected"]
    batch = main_job.MainJob.batch_metrics(os.path.join(workdir, "scored"))
    assert batch["auroc"] == pytest.approx(text_eval["auroc"], abs=1e-4)
    assert os.listdir(os.path.join(workdir, "exports", "retrieval")) == ["1"]
    # A re-run skips every finished step.
    assert main(["main_job", "--workdir", workdir, "--data_dir", data_dir, "--preset", "smoke"]) == 0
    assert "step times (s): {}" in capsys.readouterr().out
