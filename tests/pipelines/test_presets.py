"""The presets of ``pipelines/presets.py`` are runnable as written (their commands and overrides parse)."""

from __future__ import annotations

import pytest

from core import cli
from core.config import apply_overrides
from pipelines.__main__ import commands
from pipelines.presets import DATA_PRESETS, MAIN_JOB_PRESETS, main_job_preset


@pytest.mark.parametrize("name", sorted(DATA_PRESETS))
def test_data_preset_commands_parse(name, tmp_path, monkeypatch):
    from recsys_ssl.config import PRESETS

    monkeypatch.chdir(tmp_path)
    by_name = {c.name: c for c in commands()}
    preset = DATA_PRESETS[name]
    for argv in preset.commands:
        command = by_name[argv[0]]
        # Inputs written by an earlier command of the preset do not exist yet: check flags only.
        for flag in ("--input",):
            if flag in argv:
                (tmp_path / argv[argv.index(flag) + 1]).mkdir(parents=True, exist_ok=True)
        options, _, _ = cli.parse_command("python -m pipelines", command, argv[1:])
        assert dataclasses_name(options) == command.options.__name__
    assert preset.features == preset.commands[-1][preset.commands[-1].index("--output_dir") + 1]
    assert preset.recsys_preset in PRESETS


def dataclasses_name(options) -> str:
    return type(options).__name__


@pytest.mark.parametrize("name", sorted(MAIN_JOB_PRESETS))
def test_main_job_presets_override_real_config_keys(name, tmp_path):
    from recsys_ssl.config import preset as recsys_preset
    from text_ood.__main__ import COMMANDS as TEXT_COMMANDS
    from text_ood.config import preset as text_preset

    preset = main_job_preset(name)
    apply_overrides(recsys_preset(preset.recsys_preset), preset.recsys_overrides)
    apply_overrides(text_preset(preset.text_preset), preset.pretrain_overrides)
    apply_overrides(text_preset(preset.text_preset), preset.train_overrides)
    select = next(c for c in TEXT_COMMANDS if c.name == "select")
    options, _, _ = cli.parse_command("python -m text_ood", select, ["--workdir", str(tmp_path), *preset.select_flags])
    assert options.grid is False  # the main job ranks what it trained (no settings grid: time)
    with pytest.raises(ValueError, match="unknown main-job preset"):
        main_job_preset("nope")
