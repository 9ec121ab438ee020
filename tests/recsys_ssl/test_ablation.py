"""``python -m recsys_ssl ablate`` end to end on the small feature directory (tiny preset)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recsys_ssl import __main__ as cli
from recsys_ssl.ablation import parse_methods, parse_pairs
from recsys_ssl.metrics import paired_bootstrap


def test_paired_bootstrap_interval_hand_checked():
    # Two users; model a hits everything of user 0, b nothing: every resample's difference is
    # the share of user-0 examples in it, between 0 and 1; identical hits give [0, 0].
    users = np.array(["u0", "u0", "u1", "u1"])
    mask = np.ones(4, bool)
    a, b = np.array([1.0, 1.0, 0.0, 0.0]), np.zeros(4)
    low, high = paired_bootstrap(users, mask, a, b)
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert paired_bootstrap(users, mask, a, a) == (0.0, 0.0)


def test_methods_and_variants_are_parsed_strictly():
    methods = parse_methods("none,cfm", ["cfm_x=ssl.method=cfm,ssl.mask_granularity=example"])
    assert methods["cfm_x"] == ("ssl.method=cfm", "ssl.mask_granularity=example")
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("none,cmf", [])
    with pytest.raises(ValueError, match="'none' baseline"):
        parse_methods("cfm", [])
    with pytest.raises(ValueError, match="NAME=key=value"):
        parse_methods("none", ["justaname"])
    assert parse_pairs(["cfm_x:cfm", "cfm:none"], methods) == [("cfm_x", "cfm"), ("cfm", "none")]
    for spec, message in (("cfm:rfm", "not a method"), ("cfm", "A:B"), ("cfm:cfm", "A:B"), (":cfm", "A:B")):
        with pytest.raises(ValueError, match=message):
            parse_pairs([spec], methods)


@pytest.mark.slow
def test_ablate_tunes_alpha_on_validation_then_compares_seeds(features_dir, tmp_path, capsys):
    out = str(tmp_path / "ablation")
    argv = ["ablate", "--features", features_dir, "--output_dir", out, "--methods", "none,cfm", "--seeds", "0,1",
            "--alphas", "0.1,1.0", "--versus", "cfm:none", "--preset", "tiny", "--set", "train.epochs=1"]
    assert cli.main(argv) == 0
    document = json.load(open(os.path.join(out, "ablation.json")))
    entry = document["fractions"]["1"]
    cfm = entry["cfm"]
    assert set(cfm["tuning"]) == {"0.1", "1"}  # validation results of both alphas
    chosen = max((0.1, 1.0), key=lambda a: (cfm["tuning"][f"{a:g}"]["overall"]["recall@100"], -a))
    assert cfm["alpha"] == chosen
    assert sorted(r["seed"] for r in cfm["runs"]) == [0, 1] == sorted(r["seed"] for r in entry["none"]["runs"])
    # The chosen alpha's seed-0 tuning run is reused for the eval split.
    assert os.path.isfile(os.path.join(out, "f1", "cfm", f"alpha{chosen:g}", "seed0", "eval_validation.json"))
    comparison = entry["_vs_none"]["cfm"]["overall"]["recall@100"]
    low, high = comparison["interval95"]
    assert low <= comparison["difference"] <= high
    # --versus A:B reports A minus B the same way (here B = none, so it must equal _vs_none).
    assert entry["_pairs"]["cfm - none"] == entry["_vs_none"]["cfm"]
    assert "Method A minus method B" in open(os.path.join(out, "ablation.md")).read()
    for name in ("ablation.md", "ablation.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "| cfm |" in open(os.path.join(out, "ablation.md")).read()
    # Resuming does not train or evaluate again.
    stamps = {r["workdir"]: os.path.getmtime(os.path.join(r["workdir"], "eval.json")) for r in cfm["runs"]}
    assert cli.main(argv) == 0
    assert all(os.path.getmtime(os.path.join(w, "eval.json")) == t for w, t in stamps.items())
    assert cli.main(argv[:-2] + ["--set", "train.epochz=1"]) == 2  # a typo never runs
    assert cli.main([a if a != "cfm:none" else "cfm:rmf" for a in argv]) == 2
