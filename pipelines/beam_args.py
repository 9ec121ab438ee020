"""What the Beam jobs share: their arguments are their own flags plus valid Beam options, nothing else.

Beam's ``PipelineOptions`` only warns about flags it does not know and drops them, so a typo such
as ``--threshhold 0.0`` used to run on the default threshold. Every Beam command of ``python -m
pipelines`` parses its own flags with :mod:`core.cli` and passes the rest to
:func:`unknown_arguments`, which checks them against the flags of every Beam ``PipelineOptions``
class (standard, Direct, Portable, Dataflow, Flink, Spark, ...); anything else is a usage error
(exit 2) naming the argument and the closest valid flag.

:func:`rejection_problem` is the other shared rule of the Beam jobs: a job whose input was all, or
more than ``--max_reject_fraction``, rejected fails (exit 1) with the counts.
"""

from __future__ import annotations

import argparse
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


def unknown_arguments(beam_args: Sequence[str]) -> list[str]:
    """The arguments in ``beam_args`` that no Beam pipeline option accepts."""
    _, unknown = beam_option_parser().parse_known_args(list(beam_args))
    return unknown


def check_reject_fraction(fraction: float) -> None:
    """Raises ValueError unless ``--max_reject_fraction`` is in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--max_reject_fraction must be in [0, 1], received {fraction}")


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
