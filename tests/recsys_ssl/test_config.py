"""The run config: every preset states its SSL method; renamed and retired keys are refused in
``--set`` (naming the new key) and migrated when an earlier workdir's ``config.json`` is read."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from core import config as dataclass_config
from core import workdir as core_workdir
from recsys_ssl import __main__ as cli
from recsys_ssl import config as config_lib


def test_the_default_method_is_the_baseline_and_every_preset_states_its_own():
    assert config_lib.SSLConfig().method == "none"
    methods = {name: config_lib.preset(name).ssl.method for name in config_lib.PRESETS}
    # movielens is the configuration tuned on validation without SSL (issue 21); the others train CFM.
    assert methods == {**{name: "cfm" for name in config_lib.PRESETS}, "movielens": "none"}


@pytest.mark.parametrize("old, new", sorted(config_lib.RENAMED_KEYS.items()))
def test_renamed_keys_are_refused_in_overrides_with_the_new_name(old, new):
    with pytest.raises(dataclass_config.ConfigError, match=f"config key '{old}' was replaced: use {new}"):
        dataclass_config.apply_overrides(config_lib.tiny(), [f"{old}=0.3"])
    section, key = new.split(".")
    assert getattr(getattr(dataclass_config.apply_overrides(config_lib.tiny(), [f"{new}=0.3"]), section), key) == 0.3


def test_retired_logq_correction_is_refused_on_the_command_line(tmp_path, capsys):
    assert cli.main(["train", "--features", str(tmp_path), "--workdir", str(tmp_path / "w"),
                     "--set", "train.logq_correction=false"]) == 2
    assert "config key 'train.logq_correction' was replaced: use train.logq_strength=0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "w")


def _old_config_json(directory, config: config_lib.Config, logq_correction: bool) -> None:
    """config.json as written before the renames (the old layout with features_dir inside)."""
    values = dataclass_config.to_dict(config)
    values["ssl"]["dropout"] = values["ssl"].pop("value_dropout")
    values["ssl"]["feature_drop_rate"] = values["ssl"].pop("feature_dropout_rate")
    values["train"]["feature_dropout"] = values["train"].pop("value_dropout")
    values["train"]["logq_correction"] = logq_correction
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, core_workdir.CONFIG_FILE), "w") as f:
        json.dump({"config": values, "features_dir": "/features"}, f)


def test_an_earlier_workdirs_config_is_migrated(tmp_path):
    from recsys_ssl.workdir import load_run

    base = config_lib.tiny()
    config = dataclasses.replace(
        base, ssl=dataclasses.replace(base.ssl, value_dropout=0.25, feature_dropout_rate=0.4),
        train=dataclasses.replace(base.train, value_dropout=0.1, logq_strength=0.5))
    # logq_correction=true was the default: logq_strength stays what it was.
    _old_config_json(tmp_path / "on", config, logq_correction=True)
    assert load_run(str(tmp_path / "on")) == (config, "/features")
    # logq_correction=false meant no correction, whatever logq_strength said: logq_strength=0.
    _old_config_json(tmp_path / "off", config, logq_correction=False)
    off = dataclasses.replace(config, train=dataclasses.replace(config.train, logq_strength=0.0))
    assert load_run(str(tmp_path / "off"))[0] == off
    # Resuming the old workdir with the migrated config is no change; another value is refused.
    core_workdir.write_config(str(tmp_path / "off"), off, migrate=config_lib.migrate_values, write=False)
    with pytest.raises(ValueError, match="train.logq_strength"):
        core_workdir.write_config(str(tmp_path / "off"), config, migrate=config_lib.migrate_values, write=False)
    with pytest.raises(ValueError, match="both ssl.dropout and its new name ssl.value_dropout"):
        config_lib.migrate_values({"ssl": {"dropout": 0.1, "value_dropout": 0.2}})
