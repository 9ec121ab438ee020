"""Argument checking for the Beam entry points: the job's own flags plus valid Beam options, nothing else.

Beam's ``PipelineOptions`` only warns about flags it does not know and drops them, so a typo such
as ``--threshhold 0.0`` used to run on the default threshold. :func:`parse_job_args` parses the
job's flags (without prefix matching) and checks every remaining argument against the flags of
every Beam ``PipelineOptions`` class (standard, Direct, Portable, Dataflow, Flink, Spark, ...);
anything else is a usage error (exit 2) naming the argument and the closest valid flag.

:func:`rejection_problem` is the other shared rule of the Beam jobs: a job whose input was all, or
more than ``--max_reject_fraction``, rejected fails (exit 1) with the counts.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

DEFAULT_MAX_REJECT_FRACTION = 0.1


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser of every Beam pipeline option (what ``PipelineOptions.get_all_options`` builds)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own way to collect its options.
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]  # noqa: SLF001


def unknown_arguments(beam_args: Sequence[str]) -> list[str]:
    """The arguments in ``beam_args`` that no Beam pipeline option accepts."""
    _, unknown = beam_option_parser().parse_known_args(list(beam_args))
    return unknown


def add_max_reject_fraction(parser: argparse.ArgumentParser, what: str) -> None:
    """``--max_reject_fraction``: the job fails (exit 1) when ``what`` rejects more than this."""
    parser.add_argument("--max_reject_fraction", type=float, default=DEFAULT_MAX_REJECT_FRACTION,
                        help=f"fail (exit 1) when {what} (default: %(default)s)")


def closest_flag(name: str, own: Sequence[str], beam: Sequence[str]) -> str | None:
    """The flag a mistyped ``name`` most likely meant: a job flag it abbreviates (``--out`` ->
    ``--output``), else the closest job flag, else the closest Beam option, else None."""
    prefixed = [flag for flag in own if flag.startswith(name)] if len(name) > 2 else []
    if prefixed:
        return min(prefixed, key=len)
    for candidates in (own, beam):
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def parse_job_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parses the job's flags; returns them and the (valid) Beam options.

    Args:
      parser: the job's parser, built with ``allow_abbrev=False``.
      argv: the command line (``None``: ``sys.argv[1:]``).

    Returns:
      ``(job args, Beam args)``.

    Raises:
      SystemExit: code 2 (``parser.error``) when an argument is neither the job's nor a Beam
        option; the message names it and the closest valid flag.
    """
    if parser.allow_abbrev:
        raise ValueError(f"{parser.prog}: build the parser with allow_abbrev=False")
    args, beam_args = parser.parse_known_args(argv)
    unknown = unknown_arguments(beam_args)
    if unknown:
        flag = next((a for a in unknown if a.startswith("-")), unknown[0])
        name = flag.split("=", 1)[0]
        close = closest_flag(name, _flags(parser), _flags(beam_option_parser()))
        hint = f"; did you mean {close}?" if close else ""
        what = f"unrecognized argument {name}" if name.startswith("-") else f"unexpected argument {name!r}"
        parser.error(f"{what}{hint} (arguments must be this job's flags, see --help, or Beam pipeline options; "
                     f"received {' '.join(unknown)})")
    fraction = getattr(args, "max_reject_fraction", 0.0)
    if not 0.0 <= fraction <= 1.0:
        parser.error(f"--max_reject_fraction must be in [0, 1], received {fraction}")
    return args, beam_args


def rejection_problem(source: str, read: int, rejected: int, max_fraction: float) -> str | None:
    """Why a job whose ``source`` lost ``rejected`` of ``read`` records must fail, or None.

    A source that read nothing, rejected everything, or rejected more than ``max_fraction`` of its
    records fails the job (``--max_reject_fraction``), with the counts in the message.
    """
    if read == 0:
        return f"{source}: no records read"
    if rejected == read:
        return f"{source}: every record was rejected ({rejected} of {read})"
    if rejected > max_fraction * read:
        return (f"{source}: {rejected} of {read} records rejected ({rejected / read:.1%}), more than "
                f"--max_reject_fraction {max_fraction:g}")
    return None
