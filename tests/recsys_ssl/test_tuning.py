"""``python -m recsys_ssl tune``: grids parsed strictly; the coordinate search on validation, resumable."""

from __future__ import annotations

import json
import os

import pytest

from recsys_ssl import __main__ as cli
from recsys_ssl import config as config_lib
from recsys_ssl.tuning import parse_grids, peer_grids, run_id


def test_grids_are_parsed_and_checked_against_the_config():
    assert parse_grids(["train.temperature=0.05,0.1", "train.mns_negatives=0,64"]) == [
        ("train.temperature", ["0.05", "0.1"]), ("train.mns_negatives", ["0", "64"])]
    for specs, message in ((["train.temperature"], "key=v1,v2"), (["train.temprature=0.1"], "unknown config key"),
                           (["train.mns_negatives=-1"], "mns_negatives"),
                           (["train.temperature=0.1", "train.temperature=0.2"], "given twice")):
        with pytest.raises(ValueError, match=message):
            parse_grids(specs)


def test_run_id_follows_the_resolved_config():
    base = config_lib.tiny()
    assert run_id(base) == run_id(config_lib.tiny())  # an explicit default is the same run
    from core import config as dataclass_config

    assert run_id(dataclass_config.apply_overrides(base, ["train.temperature=0.1"])) == run_id(base)
    assert run_id(dataclass_config.apply_overrides(base, ["train.temperature=0.2"])) != run_id(base)


def test_peer_grids_match_the_budget():
    lambdas, neighbours = peer_grids(6)
    assert lambdas == [3.16, 10.0, 31.6, 100.0, 316.0, 1000.0]
    assert len(neighbours) == 6 and neighbours[0] == 5 and neighbours[-1] == 2000
    assert len(peer_grids(1)[0]) == 4  # at least 4 values


def test_tune_picks_values_on_validation_and_resumes(features_dir, tmp_path):
    out = str(tmp_path / "tune")
    argv = ["tune", "--features", features_dir, "--output_dir", out, "--preset", "tiny", "--set", "train.epochs=1",
            "--set", "ssl.method=none", "--grid", "train.temperature=0.1,0.3", "--grid", "train.mns_negatives=0,16"]
    assert cli.main(argv) == 0
    document = json.load(open(os.path.join(out, "tune.json")))
    # The preset (temperature 0.1, mns 0) is one of the tried configurations: 3 runs, not 4 or 5.
    assert len(document["runs"]) == 3
    score = {tuple(r["overrides"]): r["metrics"]["overall"]["recall@100"] for r in document["runs"].values()}
    first = document["steps"][0]
    assert first["key"] == "train.temperature" and set(first["tried"]) == {"0.1", "0.3"}
    best = max(score.values())
    assert document["best_validation_recall@100"] == best
    for run in document["runs"].values():  # validation only: the eval split was never scored
        assert not os.path.exists(os.path.join(run["workdir"], "eval.json"))
        assert os.path.isfile(os.path.join(run["workdir"], "eval_validation.json"))
    assert "Chosen" in open(os.path.join(out, "tune.md")).read()
    mtimes = {r["workdir"]: os.path.getmtime(os.path.join(r["workdir"], "eval_validation.json"))
              for r in document["runs"].values()}
    assert cli.main(argv) == 0  # everything done: nothing is trained or evaluated again
    assert mtimes == {w: os.path.getmtime(os.path.join(w, "eval_validation.json")) for w in mtimes}
