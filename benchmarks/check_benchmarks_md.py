"""Checks BENCHMARKS.md: its links resolve, and (optionally) no number of an older version is lost.

Links: every ``[text](#anchor)`` must name a heading of the file (GitHub's anchor rules: lower
case, punctuation dropped, spaces to ``-``, repeats suffixed ``-1``, ``-2``, ...) or an explicit
``<a id="...">``; every relative ``[text](path)`` must name an existing file (relative to the
markdown file). Numbers (``--numbers_against REV``): every number (a run of digits with inner
``.`` or ``,``) of the file at git revision ``REV`` must occur at least as often in the current
file; numbers that disappeared are listed with their counts, numbers that were added are counted.
``--body_only`` leaves out the current file's text before its first dated section (``## YYYY-MM-DD``,
or the ``<a id>`` line just above it), so numbers copied into a summary cannot hide one that left the
body. Standard library only; nothing is run or imported from the project.

  python -m benchmarks.check_benchmarks_md                        # links only
  python -m benchmarks.check_benchmarks_md --numbers_against main # links and numbers
  python -m benchmarks.check_benchmarks_md --numbers_against 9c7fa44 --body_only
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import unicodedata

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")
DATED_SECTION = re.compile(r"^(?:<a\s+id=\"[^\"]*\"></a>\s*\n\s*\n)?## \d{4}-\d{2}-\d{2}", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text (before de-duplication)."""
    text = heading.strip().lower()
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in " -_" or category[0] in "LN" or category == "Mn":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def headings(lines: list[str]) -> list[str]:
    """Heading texts outside code fences, inline markup reduced to its text."""
    found, fenced = [], False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
            found.append(text.replace("`", "").replace("*", ""))
    return found


def anchors(lines: list[str]) -> set[str]:
    seen: collections.Counter = collections.Counter()
    result = set()
    for text in headings(lines):
        base = slug(text)
        result.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    for line in lines:
        result.update(EXPLICIT_ANCHOR.findall(line))
    return result


def link_problems(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    known = anchors(lines)
    base_dir = os.path.dirname(os.path.abspath(path))
    problems, fenced = [], False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "``", line)):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file_part, _, fragment = target.partition("#")
            if not file_part:
                if fragment not in known:
                    problems.append(f"{path}:{number}: no heading or anchor for #{fragment}")
            elif not os.path.exists(os.path.join(base_dir, file_part)):
                problems.append(f"{path}:{number}: no file {file_part}")
    return problems


def numbers(text: str) -> collections.Counter:
    return collections.Counter(NUMBER.findall(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--file", default="BENCHMARKS.md", help="markdown file to check (default: BENCHMARKS.md)")
    parser.add_argument(
        "--numbers_against",
        metavar="REV",
        help="git revision whose version of --file must lose no number (e.g. main or a commit)",
    )
    parser.add_argument(
        "--body_only",
        action="store_true",
        help="with --numbers_against: count the current file's numbers from its first dated section on",
    )
    args = parser.parse_args(argv)
    if not os.path.exists(args.file):
        parser.error(f"no file {args.file}")
    if args.body_only and not args.numbers_against:
        parser.error("--body_only needs --numbers_against")
    failed = False
    problems = link_problems(args.file)
    for problem in problems:
        print(problem)
    print(f"links: {len(problems)} problem(s)")
    failed |= bool(problems)
    if args.numbers_against:
        repo_path = os.path.relpath(os.path.abspath(args.file), _git_root(args.file))
        try:
            old_text = subprocess.run(
                ["git", "show", f"{args.numbers_against}:{repo_path}"],
                cwd=_git_root(args.file), check=True, capture_output=True, text=True,
            ).stdout
        except subprocess.CalledProcessError as error:
            print(f"cannot read {repo_path} at {args.numbers_against}: {error.stderr.strip()}", file=sys.stderr)
            return 2
        with open(args.file, encoding="utf-8") as f:
            current = f.read()
        if args.body_only:
            match = DATED_SECTION.search(current)
            if match is None:
                print(f"--body_only: no dated section (## YYYY-MM-DD) in {args.file}", file=sys.stderr)
                return 2
            current = current[match.start():]
        new = numbers(current)
        old = numbers(old_text)
        lost, added = old - new, new - old
        print(f"numbers: {sum(old.values())} at {args.numbers_against}, {sum(new.values())} now; "
              f"{sum(lost.values())} lost, {sum(added.values())} added")
        for value, count in sorted(lost.items()):
            print(f"  lost {value} x{count}")
        failed |= bool(lost)
    return 1 if failed else 0


def _git_root(path: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=os.path.dirname(os.path.abspath(path)),
        check=True, capture_output=True, text=True,
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
