"""``core/cli.py``: flags generated from a frozen dataclass, exit codes, renamed flags, logging."""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import Literal

import pytest

from core import cli
from core.config import ConfigError


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Options:
    workdir: str = cli.workdir_flag("a run directory")
    count: int = cli.flag("how many", default=3)
    rate: float = cli.flag("a rate", default=0.5)
    timeout: float = cli.flag("seconds, may be inf", default=1.0, allow_inf=True)
    verbose: bool = cli.flag("say more", default=False)
    mode: Literal["fast", "slow"] = cli.flag("speed", default="fast")
    color: Color = cli.flag("a color", default=Color.RED)
    names: tuple[str, ...] = cli.flag("comma-separated names", default=("a", "b"))
    seeds: tuple[int, ...] = cli.seeds_flag()
    overrides: tuple[str, ...] = cli.overrides_flag()
    limit: int | None = cli.flag("optional limit", default=None)
    existing: str | None = cli.flag("a directory that must exist", default=None, must_exist="dir")

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"--count must be >= 0, received {self.count}")


def _parse(*argv):
    command = cli.Command("run", Options, lambda options: 0, "test command", renamed={"--old_count": "--count"})
    return cli.parse_command("prog", command, list(argv))[0]


def test_defaults_types_and_lists():
    options = _parse("--workdir", "w")
    assert options == Options(workdir="w")
    options = _parse("--workdir", "w", "--count", "7", "--rate=0.25", "--verbose", "--mode", "slow", "--color",
                     "blue", "--names", "x,y,z", "--seeds", "4,5", "--set", "a.b=1", "--set", "c=2", "--limit", "9",
                     "--timeout", "inf")
    assert (options.count, options.rate, options.verbose, options.mode, options.color) == (7, 0.25, True, "slow",
                                                                                          Color.BLUE)
    assert options.names == ("x", "y", "z") and options.seeds == (4, 5) and options.overrides == ("a.b=1", "c=2")
    assert options.limit == 9 and options.timeout == float("inf")
    assert _parse("--workdir", "w", "--verbose=false").verbose is False
    assert _parse("--workdir", "w", "--verbose", "true").verbose is True


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --workdir"),
    (["--workdir", "w", "--count", "x"], "expected an integer, received 'x'"),
    (["--workdir", "w", "--rate", "inf"], "expected a finite number, received 'inf'"),
    (["--workdir", "w", "--rate", "nan"], "expected a finite number"),
    (["--workdir", "w", "--verbose=maybe"], "expected true or false"),
    (["--workdir", "w", "--mode", "medium"], "invalid choice"),
    (["--workdir", "w", "--count", "-1"], "--count must be >= 0, received -1"),
    (["--workdir", "w", "--existing", "/no/such/dir"], "--existing /no/such/dir: no such directory"),
    (["--workdir", "w", "--cout", "1"], "unrecognized argument --cout; did you mean --count?"),
    (["--workdir", "w", "--coun", "1"], "unrecognized argument --coun"),  # no prefix matching
    (["--workdir", "w", "stray"], "unexpected argument 'stray'"),
    (["--workdir", "w", "--old_count", "1"], "--old_count was renamed: use --count"),
    (["--workdir", "w", "--verbosity", "DEBUG"], "--verbosity was renamed: use --log_level"),
])
def test_usage_errors(argv, message):
    with pytest.raises(cli.UsageError, match=message.replace("[", r"\[").replace("?", r"\?")):
        _parse(*argv)


def test_every_flag_needs_help_text():
    with pytest.raises(ValueError, match="help"):
        cli.flag("")

    @dataclasses.dataclass(frozen=True)
    class Bare:
        x: int = 1

    with pytest.raises(TypeError, match="core.cli.flag"):
        cli.add_dataclass_flags(cli._Parser(), Bare)


def _run_with(error: BaseException | None, result=None):
    def run(options):
        if error is not None:
            raise error
        return result
    return cli.run_commands("prog", "doc", [cli.Command("run", Options, run, "test")], ["run", "--workdir", "w"])


def test_exit_codes(capsys):
    assert _run_with(None) == cli.EXIT_OK
    assert _run_with(None, 3) == 3
    assert _run_with(cli.UsageError("bad input")) == cli.EXIT_USAGE
    assert _run_with(ConfigError("unknown config key 'x'")) == cli.EXIT_USAGE
    assert _run_with(cli.JobError("too many rejected rows")) == cli.EXIT_FAILURE
    assert _run_with(ValueError("a runtime failure")) == cli.EXIT_FAILURE
    assert _run_with(KeyError("unexpected")) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "bad input" in err and "too many rejected rows" in err and "ValueError: a runtime failure" in err
    # A user error is one line; only the unexpected failure shows a traceback.
    assert err.count("Traceback") == 1 and "KeyError" in err


def test_help_and_command_errors(capsys):
    commands = [cli.Command("run", Options, lambda options: 0, "runs it")]
    assert cli.run_commands("prog", "the doc", commands, ["--help"]) == 0
    assert "runs it" in capsys.readouterr().out
    assert cli.run_commands("prog", "the doc", commands, ["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--seeds" in out and "(default: 0,1,2)" in out and "--log_level" in out
    assert cli.run_commands("prog", "the doc", commands, ["rn"]) == 2
    assert "did you mean run?" in capsys.readouterr().err
    assert cli.run_commands("prog", "the doc", commands, ["old"], {"old": "run"}) == 2
    assert "`prog old` was renamed: use `prog run`" in capsys.readouterr().err


def test_logging_goes_to_the_current_stderr_once(capsys):
    for _ in range(2):
        cli.setup_logging("INFO")
    logging.getLogger("some.module").info("hello from a library")
    assert capsys.readouterr().err.count("hello from a library") == 1
    cli.setup_logging("WARNING")
    logging.getLogger("some.module").info("not shown")
    assert "not shown" not in capsys.readouterr().err
    cli.setup_logging("INFO")


def test_pass_through_arguments_are_checked_by_the_command():
    seen = {}

    def run(options, extra):
        seen["extra"] = extra
        return 0

    command = cli.Command("job", Options, run, "a Beam-like job",
                          pass_through=lambda args: [a for a in args if not a.startswith("--runner")])
    assert cli.run_commands("prog", "doc", [command], ["job", "--workdir", "w", "--runner=DirectRunner"]) == 0
    assert seen["extra"] == ["--runner=DirectRunner"]
    assert cli.run_commands("prog", "doc", [command], ["job", "--workdir", "w", "--runer=Direct"]) == 2
