"""``core/workdir.py``: one workdir format (config.json compared tolerantly, run.json) for both halves."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from core import workdir


@dataclasses.dataclass(frozen=True)
class Section:
    size: int = 4
    rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    model: Section = Section()
    train: Section = Section()


def test_write_then_resume_with_the_same_or_other_unchecked_settings(tmp_path):
    directory = str(tmp_path / "w")
    workdir.write_config(directory, Config(seed=1))
    assert json.load(open(os.path.join(directory, "config.json")))["seed"] == 1
    assert workdir.read_config(directory, Config) == Config(seed=1)
    workdir.write_config(directory, Config(seed=1))  # resuming with the same settings
    # Only the sections the artefacts depend on are compared.
    workdir.write_config(directory, Config(seed=1, train=Section(size=8)), sections=("seed", "model"))
    with pytest.raises(ValueError, match=r"model\.size.*differ.*\(.model\.size., 4, 5\)"):
        workdir.write_config(directory, Config(seed=1, model=Section(size=5)))


def test_fields_added_since_take_their_defaults_and_retired_keys_are_dropped(tmp_path):
    directory = tmp_path / "old"
    directory.mkdir()
    # Written by older code: no model.rate (added since) and a key removed since (train.legacy).
    (directory / "config.json").write_text(json.dumps({"seed": 0, "model": {"size": 4},
                                                       "train": {"size": 4, "rate": 0.1, "legacy": True},
                                                       "preset": "cpu"}))
    assert workdir.read_config(str(directory), Config, retired=("train.legacy", "preset")) == Config()
    workdir.write_config(str(directory), Config(), retired=("train.legacy", "preset"))  # no change to refuse
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"train": {"legacy": True}}))
    with pytest.raises(ValueError, match="legacy"):  # a key nobody retired is still an error
        workdir.read_config(str(unknown), Config)


def test_the_earlier_recsys_layout_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"seed": 3}, "features_dir": "/f"}))
    assert workdir.read_config(str(tmp_path), Config) == Config(seed=3)


def test_run_json_updates_keep_earlier_fields(tmp_path):
    directory = str(tmp_path)
    assert workdir.read_run(directory) == {}
    first = workdir.update_run(directory, dataset="clinc150")
    second = workdir.update_run(directory, detectors=["mlkd"])
    assert second["dataset"] == "clinc150" and second["detectors"] == ["mlkd"]
    assert second["created"] == first["created"] and "updated" in second
    assert workdir.read_run(directory) == second
    assert [n for n in os.listdir(directory) if n.endswith(".tmp")] == []
    with pytest.raises(FileNotFoundError, match="no config.json"):
        workdir.read_config(directory, Config)
