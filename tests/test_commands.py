"""Every command of every package obeys the spine's rules (``core/cli.py``), checked in one place.

For each ``python -m <package> <command>``: ``--help`` works and every flag explains itself; a
misspelt flag, a prefix of a flag, and a flag renamed by issue 24 are usage errors (exit 2) whose
message names the problem (and the new spelling); nothing runs.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from core import cli


def _packages():
    from pipelines.__main__ import commands as pipeline_commands
    from recsys_ssl.__main__ import COMMANDS as recsys_commands
    from serving.__main__ import COMMANDS as serving_commands
    from text_ood.__main__ import COMMANDS as text_commands

    return {"pipelines": pipeline_commands(), "recsys_ssl": recsys_commands, "text_ood": text_commands,
            "serving": serving_commands}


def _mains():
    from pipelines.__main__ import main as pipelines_main
    from recsys_ssl.__main__ import main as recsys_main
    from serving.__main__ import main as serving_main
    from text_ood.__main__ import main as text_main

    return {"pipelines": pipelines_main, "recsys_ssl": recsys_main, "text_ood": text_main, "serving": serving_main}


PACKAGES = _packages()
CASES = [(package, command) for package, commands in PACKAGES.items() for command in commands]
IDS = [f"{package}-{command.name}" for package, command in CASES]


@pytest.mark.parametrize("package, command", CASES, ids=IDS)
def test_help_lists_every_flag_with_help_text(package, command, capsys):
    assert _mains()[package]([command.name, "--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.flag_names(command.options) + ["--log_level"]:
        assert name in out
    for field in dataclasses.fields(command.options):
        assert field.metadata["help"].strip()


@pytest.mark.parametrize("package, command", CASES, ids=IDS)
def test_a_misspelt_flag_never_runs(package, command, capsys, tmp_path):
    first = cli.flag_names(command.options)[0]
    misspelt = first[:-1] + ("x" if first[-1] != "x" else "y")
    assert _mains()[package]([command.name, misspelt, str(tmp_path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"unrecognized argument {misspelt}" in err and f"did you mean {first}?" in err


@pytest.mark.parametrize("package, command", CASES, ids=IDS)
def test_a_prefix_of_a_flag_is_not_that_flag(package, command, capsys):
    longest = max(cli.flag_names(command.options), key=len)
    assert _mains()[package]([command.name, longest[:-2], "1"]) == cli.EXIT_USAGE
    assert "unrecognized argument" in capsys.readouterr().err


@pytest.mark.parametrize("package, command", CASES, ids=IDS)
def test_renamed_flags_name_their_new_spelling(package, command, capsys):
    own = set(cli.flag_names(command.options)) | {"--log_level"}
    renamed = {old: new for old, new in cli.RENAMED_FLAGS.items() if new.split()[0] in own}
    for old, new in {**renamed, **command.renamed}.items():
        assert _mains()[package]([command.name, old, "x"]) == cli.EXIT_USAGE
        assert f"{old} was renamed: use {new}" in capsys.readouterr().err


def test_unknown_and_renamed_commands(capsys):
    from pipelines.__main__ import main

    assert main(["recsys_features", "--output_dir", "x"]) == cli.EXIT_USAGE
    assert "use `python -m pipelines features`" in capsys.readouterr().err
    assert main(["featurs"]) == cli.EXIT_USAGE
    assert "did you mean features?" in capsys.readouterr().err
    assert main(["--output_dir", "x"]) == cli.EXIT_USAGE
    assert main([]) == cli.EXIT_USAGE


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_python_dash_m_runs_the_package(package):
    """The documented entry point, in a fresh process: ``python -m <package> --help``."""
    process = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    for command in PACKAGES[package]:
        assert command.name in process.stdout
