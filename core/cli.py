"""The command spine: every command's flags come from one frozen dataclass, one logging set-up, one exit rule.

Every package has one entry point, ``python -m <package> <command> [flags]`` (``pipelines``,
``recsys_ssl``, ``text_ood``, ``serving``), built from a list of :class:`Command` s. A command is
a name, a frozen dataclass of options and a function taking an instance of it::

    @dataclasses.dataclass(frozen=True)
    class EvaluateOptions:
        workdir: str = cli.workdir_flag("a `train` workdir", must_exist=True)
        split: Literal["eval", "validation"] = cli.flag("held-out split to score", default="eval")

    COMMANDS = (cli.Command("evaluate", EvaluateOptions, evaluate_command, "recall@K -> eval.json"),)

    def main(argv=None) -> int:
        return cli.run_commands("python -m recsys_ssl", __doc__, COMMANDS, argv)

The parser is generated from the dataclass: a field ``name`` is the flag ``--name``; its type
decides parsing (``str``, ``int``, ``float`` (finite unless ``allow_inf``), ``bool`` (``--name``,
``--name=true|false``), ``Literal`` and ``Enum`` (choices), ``X | None``, ``tuple[X, ...]``
(comma-separated, or repeated flags with ``repeat=True``)); a field without a default is
required; every flag must have help text. The dataclass's ``__post_init__`` validates values;
its ``ValueError`` becomes a usage error naming the flag.

The rules every command shares:

- **Exit codes**: 0 ok; 1 the job ran and failed (:class:`JobError`, or any error while
  running); 2 usage (unknown or misspelt flags, bad values, missing inputs, bad ``--set``
  overrides: :class:`UsageError`, :class:`core.config.ConfigError`). A user error never prints a
  traceback; an unexpected error logs its traceback.
- **No prefix matching, no unknown flags**: a typo never runs on defaults. A flag renamed by
  issue 24 fails with the new name (``RENAMED_FLAGS`` plus each command's own ``renamed``).
- **One name per concept** across commands: ``--data_dir`` is always the data root (default
  ``$SSL_DATA_DIR``), ``--input`` what a job reads, ``--output_dir`` a directory a job writes,
  ``--workdir`` a resumable run directory, ``--export_dir`` a versioned export base directory,
  ``--model_dir`` one model directory, ``--features`` a feature-pipeline output directory,
  ``--preset`` / ``--set key=value`` the run config, ``--seeds 0,1,2`` a list of seeds,
  ``--log_level`` logging. The helpers below give each its one help text.
- **Logging** is configured here, once, by :func:`run_commands`; library code only logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import logging
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.config import ConfigError
from core.env import DATA_DIR_ENV, data_root

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("cli")


class UsageError(Exception):
    """The command was called wrongly (a flag, a value, a missing input): exit 2, no traceback."""


class JobError(Exception):
    """The job ran and failed for a reason the message explains (e.g. too many rejected rows): exit 1."""


# Flags renamed by issue 24 (one name per concept), refused everywhere with the new spelling.
RENAMED_FLAGS: Mapping[str, str] = {
    "--verbosity": "--log_level",
    "--out": "--output_dir",
}


# -- field helpers ----------------------------------------------------------------------------
def flag(help: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,  # noqa: A002
         choices: Sequence[Any] | None = None, metavar: str | None = None, repeat: bool = False,
         must_exist: str | None = None, allow_inf: bool = False, name: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
      help: the flag's help text (required: every flag explains itself in ``--help``).
      default: the default value; omitted = the flag is required.
      choices: allowed values (``Literal`` and ``Enum`` fields get theirs automatically).
      metavar: the value's name in ``--help``.
      repeat: for ``tuple[...]`` fields: each occurrence of the flag adds one value (like
        ``--set``), instead of one comma-separated value.
      must_exist: ``"dir"``, ``"file"`` or ``"path"``: the value (when given) must exist before the
        command runs (else a usage error).
      allow_inf: floats may be ``inf`` (otherwise only finite values parse).
      name: the flag's name when it differs from the field's (e.g. ``--set`` for ``overrides``).
    """
    if not help:
        raise ValueError("every flag needs help text")
    metadata = {"help": help, "choices": choices, "metavar": metavar, "repeat": repeat,
                "must_exist": must_exist, "allow_inf": allow_inf, "name": name}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def data_dir_flag() -> Any:
    """``--data_dir``: the data root (default ``$SSL_DATA_DIR``); data sets are read below it."""
    return flag(f"the data root holding the data sets (default: ${DATA_DIR_ENV})", default=None,
                must_exist="dir", metavar="DIR")


def workdir_flag(help: str, must_exist: bool = False) -> Any:  # noqa: A002
    """``--workdir``: a run directory (config.json, run.json, checkpoints; re-running resumes)."""
    return flag(help, must_exist="dir" if must_exist else None, metavar="DIR")


def output_dir_flag(help: str, default: Any = dataclasses.MISSING) -> Any:  # noqa: A002
    """``--output_dir``: a directory the command writes."""
    return flag(help, default=default, metavar="DIR")


def export_dir_flag(help: str, must_exist: bool = False, default: Any = dataclasses.MISSING) -> Any:  # noqa: A002
    """``--export_dir``: a versioned export base directory (``EXPORT_DIR/<version>/``)."""
    return flag(help, default=default, must_exist="dir" if must_exist else None, metavar="EXPORT_DIR")


def features_flag() -> Any:
    """``--features``: a feature directory written by ``python -m pipelines features``."""
    return flag("feature directory written by `python -m pipelines features --output_dir DIR`",
                must_exist="dir", metavar="DIR")


def preset_flag(presets: Sequence[str], default: str) -> Any:
    """``--preset``: the run config's starting point (the package's presets)."""
    return flag("config preset (see the package's config module for what each costs)", default=default,
                choices=tuple(presets))


def overrides_flag() -> Any:
    """``--set key.path=value`` (repeatable): config overrides on top of the preset."""
    return flag("config override on top of the preset, e.g. --set train.epochs=4 (repeatable)",
                default=(), repeat=True, metavar="KEY=VALUE", name="set")


def seeds_flag(default: tuple[int, ...] = (0, 1, 2)) -> Any:
    """``--seeds 0,1,2``: the seeds a multi-run command runs (a list, never a count)."""
    return flag("comma-separated seeds, e.g. 0,1,2", default=default, metavar="SEEDS")


# -- commands ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Command:
    """One ``<command>`` of a package's entry point.

    Attributes:
      name: the command word.
      options: a frozen dataclass whose fields are the flags (see :func:`flag`).
      run: ``run(options) -> int | None`` (None = 0); with ``pass_through``,
        ``run(options, extra_args)``.
      help: one line for the package's ``--help``.
      description: the command's ``--help`` text (default: ``help``).
      renamed: this command's old flag spellings -> new ones (refused with the new name).
      pass_through: a check ``check(extra_args) -> unknown_args`` for arguments that are not the
        command's own flags (Beam pipeline options); None = every argument must be a flag here.
    """

    name: str
    options: type
    run: Callable[..., int | None]
    help: str
    description: str | None = None
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pass_through: Callable[[list[str]], list[str]] | None = None


def _field_flag(field: dataclasses.Field) -> str:
    return "--" + (field.metadata.get("name") or field.name)


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def parse_bool(text: str) -> bool:
    """``true/false/1/0/yes/no/on/off`` (any case)."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def _scalar_parser(annotation: Any, allow_inf: bool) -> Callable[[str], Any]:
    if annotation is bool:
        return parse_bool
    if annotation is float:
        def parse_float(text: str) -> float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
            if not allow_inf and not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"expected a finite number, received {text!r}")
            return value
        return parse_float
    if annotation is int:
        def parse_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, received {text!r}") from None
        return parse_int
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return lambda text: annotation(text)
    return str


def _choices(annotation: Any, field: dataclasses.Field) -> list[Any] | None:
    if field.metadata.get("choices") is not None:
        return list(field.metadata["choices"])
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return list(annotation)
    return None


def add_dataclass_flags(parser: argparse.ArgumentParser, options: type) -> None:
    """Adds one flag per field of the frozen dataclass ``options`` (see the module docstring)."""
    hints = typing.get_type_hints(options)
    for field in dataclasses.fields(options):
        if "help" not in field.metadata:
            raise TypeError(f"{options.__name__}.{field.name}: declare it with core.cli.flag(help=...)")
        annotation = _unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata["help"],
                                  "metavar": field.metadata.get("metavar")}
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        if typing.get_origin(annotation) is tuple:
            item = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
            item_parser = _scalar_parser(item, field.metadata.get("allow_inf", False))
            if field.metadata.get("repeat"):
                kwargs.update(action="append", type=item_parser)
            else:
                kwargs["type"] = _comma_list(item_parser)
        else:
            literal_or_enum = _choices(annotation, field)
            scalar = annotation
            if typing.get_origin(annotation) is typing.Literal:
                scalar = type(typing.get_args(annotation)[0])
            kwargs["type"] = _scalar_parser(scalar, field.metadata.get("allow_inf", False))
            if literal_or_enum is not None:
                kwargs["choices"] = literal_or_enum
                if isinstance(scalar, type) and issubclass(scalar, enum.Enum):
                    kwargs["metavar"] = kwargs["metavar"] or "{" + ",".join(str(c.value) for c in literal_or_enum) + "}"
            if annotation is bool:
                kwargs.update(nargs="?", const=True, metavar=kwargs["metavar"] or "true|false")
        shown = None
        if not required and not field.metadata.get("repeat") and "default" not in kwargs["help"]:
            shown = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if isinstance(shown, enum.Enum):
                shown = shown.value
            if isinstance(shown, tuple):
                shown = ",".join(str(v) for v in shown) or None
        kwargs["help"] = (kwargs["help"] if shown is None else f"{kwargs['help']} (default: {shown})").replace("%", "%%")
        parser.add_argument(_field_flag(field), **kwargs)


def _comma_list(item_parser: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item_parser(part.strip()) for part in text.split(",") if part.strip())
    return parse


def options_from_namespace(options: type, namespace: argparse.Namespace) -> Any:
    """Builds the options dataclass from parsed flags (missing flags take the field defaults).

    Raises:
      UsageError: the dataclass's validation failed (the message names the flag), or a
        ``must_exist`` path does not exist.
    """
    values = {}
    for field in dataclasses.fields(options):
        if hasattr(namespace, field.name):
            value = getattr(namespace, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        instance = options(**values)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    for field in dataclasses.fields(options):
        kind = field.metadata.get("must_exist")
        value = getattr(instance, field.name)
        if kind and value is not None:
            check = {"dir": os.path.isdir, "file": os.path.isfile, "path": os.path.exists}[kind]
            if not check(value):
                raise UsageError(f"{_field_flag(field)} {value}: no such {'directory' if kind == 'dir' else kind}")
    return instance


class _Parser(argparse.ArgumentParser):
    """argparse without prefix matching whose errors raise :class:`UsageError` (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{self.prog}: {message}")


def renamed_flag_problem(argv: Sequence[str], renamed: Mapping[str, str]) -> str | None:
    """The message for the first old flag spelling in ``argv``, or None."""
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name in renamed:
            return f"{name} was renamed: use {renamed[name]}"
    return None


def closest_flag(name: str, parser: argparse.ArgumentParser) -> str | None:
    """The parser's flag closest to ``name`` (for "did you mean" hints), or None."""
    flags = [f for action in parser._actions for f in action.option_strings if f.startswith("--")]  # noqa: SLF001
    close = difflib.get_close_matches(name, flags, n=1, cutoff=0.75)
    return close[0] if close else None


def build_command_parser(prog: str, command: Command) -> argparse.ArgumentParser:
    """The parser of one command: its dataclass's flags plus ``--log_level``."""
    parser = _Parser(prog=f"{prog} {command.name}", description=command.description or command.help)
    add_dataclass_flags(parser, command.options)
    parser.add_argument("--log_level", default="INFO", choices=LOG_LEVELS,
                        help="logging level (default: INFO)")
    return parser


def parse_command(prog: str, command: Command, argv: Sequence[str]) -> tuple[Any, list[str], str]:
    """Parses one command's arguments.

    Returns:
      ``(options, extra_args, log_level)``; ``extra_args`` is empty unless the command passes
      arguments through (Beam options).

    Raises:
      UsageError: an unknown or renamed flag, a bad value, a missing required flag or input.
    """
    argv = list(argv)
    own = set(flag_names(command.options)) | {"--log_level"}
    renamed = {old: new for old, new in RENAMED_FLAGS.items() if new.split()[0] in own}
    problem = renamed_flag_problem(argv, {**renamed, **command.renamed})
    if problem:
        raise UsageError(f"{prog} {command.name}: {problem}")
    parser = build_command_parser(prog, command)
    # Unknown arguments are reported first (a misspelt required flag is a typo, not a missing flag).
    required = [action for action in parser._actions if action.required]  # noqa: SLF001
    for action in required:
        action.required = False
    namespace, rest = parser.parse_known_args(argv)
    unknown = rest if command.pass_through is None else command.pass_through(rest)
    if unknown:
        name = next((a for a in unknown if a.startswith("-")), unknown[0]).split("=", 1)[0]
        hint = closest_flag(name, parser)
        what = f"unrecognized argument {name}" if name.startswith("-") else f"unexpected argument {name!r}"
        extra = " or Beam pipeline options" if command.pass_through is not None else ""
        raise UsageError(f"{prog} {command.name}: {what}{f'; did you mean {hint}?' if hint else ''} "
                         f"(arguments must be this command's flags{extra}, see --help)")
    missing = [action.option_strings[0] for action in required if getattr(namespace, action.dest, None) is None]
    if missing:
        raise UsageError(f"{prog} {command.name}: the following arguments are required: {', '.join(missing)}")
    extra_args = [] if command.pass_through is None else [a for a in rest if a not in unknown]
    return options_from_namespace(command.options, namespace), extra_args, namespace.log_level


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (it may be replaced later)."""

    _core_cli = True  # marks the handler :func:`setup_logging` owns

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current sys.stderr always wins
        pass


def setup_logging(level: str = "INFO") -> None:
    """The one logging set-up of every command (library code only logs).

    Logs go to the current ``sys.stderr`` through one handler of this module (replaced on every
    call, so a program that runs several commands, or a test capturing stderr, sees each command's
    output); handlers someone else added to the root logger (pytest's, an embedding program's) stay.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_core_cli", False)]:
        root.removeHandler(handler)
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def package_parser(prog: str, description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The package-level parser: ``--help`` lists the commands."""
    parser = _Parser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        sub.add_parser(command.name, help=command.help, add_help=False)
    return parser


def run_commands(prog: str, description: str, commands: Sequence[Command], argv: Sequence[str] | None = None,
                 renamed_commands: Mapping[str, str] | None = None) -> int:
    """The entry point of a package: dispatches ``argv`` to a command and applies the exit rules.

    Args:
      prog: ``python -m <package>``.
      description: the package's ``--help`` text.
      commands: its commands.
      argv: the arguments (None: ``sys.argv[1:]``).
      renamed_commands: old command words -> new ones (refused with the new name).

    Returns:
      The exit code: 0 ok, 1 job failure, 2 usage.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in commands}
    if not argv or argv[0] in ("-h", "--help"):
        package_parser(prog, description, commands).print_help(sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in by_name:
        if renamed_commands and name in renamed_commands:
            message = f"`{prog} {name}` was renamed: use `{prog} {renamed_commands[name]}`"
        elif name.startswith("-"):
            message = f"give a command first: {prog} {{{','.join(by_name)}}} [flags]"
        else:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            message = (f"unknown command {name!r}{f'; did you mean {close[0]}?' if close else ''} "
                       f"(commands: {', '.join(by_name)})")
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    command = by_name[name]
    if any(a in ("-h", "--help") for a in rest[: rest.index("--") if "--" in rest else len(rest)]):
        build_command_parser(prog, command).print_help()
        return EXIT_OK
    try:
        options, extra_args, level = parse_command(prog, command, rest)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(level)
    return run_command(command, options, extra_args)


def run_command(command: Command, options: Any, extra_args: Sequence[str] = ()) -> int:
    """Runs a parsed command and maps what it raises to an exit code (see the module docstring)."""
    try:
        result = command.run(options, list(extra_args)) if command.pass_through else command.run(options)
    except (UsageError, ConfigError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except JobError as error:
        logger.error("%s", error)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except (ValueError, OSError) as error:
        # Errors raised at the project's boundaries carry messages written for users; the
        # traceback is still there for whoever runs with --log_level DEBUG.
        logger.error("%s: %s", type(error).__name__, error)
        logger.debug("traceback", exc_info=True)
        return EXIT_FAILURE
    except Exception:  # noqa: BLE001 - an unexpected failure: keep the traceback
        logger.exception("%s failed", command.name)
        return EXIT_FAILURE
    return EXIT_OK if result is None else int(result)


def resolve_data_dir(explicit: str | None) -> str:
    """The data root from ``--data_dir`` or ``$SSL_DATA_DIR``.

    Raises:
      UsageError: neither is set.
    """
    root = data_root(explicit)
    if root is None:
        raise UsageError(f"no data root: pass --data_dir DIR or set ${DATA_DIR_ENV}")
    if not os.path.isdir(root):
        raise UsageError(f"data root {root!r} (from {'--data_dir' if explicit else '$' + DATA_DIR_ENV}) "
                         "is not a directory")
    return root


def flag_names(options: type) -> list[str]:
    """The flags of an options dataclass (for tests and docs)."""
    return [_field_flag(f) for f in dataclasses.fields(options)]
