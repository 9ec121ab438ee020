"""Every benchmark script imports and answers ``--help`` with help text on every flag.

Benchmarks are run rarely and by hand, so a moved module (issue 24's pipelines rooms) could break
one unnoticed; this catches it without running any benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import re
import pathlib

import pytest

BENCHMARKS = sorted(p.stem for p in (pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py")
                    if p.stem not in ("__init__", "check_benchmarks_md"))


def undocumented_flags(help_text: str) -> list[str]:
    """Option lines of an argparse ``--help`` without help text (neither on the line nor below it)."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        same_line_help = len(re.split(r"\s{2,}", line.strip())) > 1
        next_line = lines[i + 1] if i + 1 < len(lines) else ""
        if not same_line_help and not next_line.startswith(" " * 10):
            missing.append(line.strip())
    return missing


def test_undocumented_flags_are_found():
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--documented", help="what it does")
    parser.add_argument("--bare")
    parser.add_argument("--a_very_long_flag_name_that_wraps", help="its help goes on the next line")
    assert undocumented_flags(parser.format_help()) == ["--bare BARE"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_documents_every_flag(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    if not hasattr(module, "main"):
        return  # a library module of the benchmarks (measure.py): importing it is the check
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage:"), out[:200]
    assert not undocumented_flags(out)
