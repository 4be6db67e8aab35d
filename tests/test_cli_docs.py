"""``rtbci --help`` against the docs: README.md's "## Command line" table names every command,
every ``--option`` a row names exists in that command's parser, and every option of every
parser is documented (in its row, or anywhere in README.md / docs/*.md)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from rtbci.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
CODE_SPAN = re.compile(r"`([^`]+)`")


def _parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser by its command path: ``()`` is ``rtbci``, ``("ctl", "reload")`` …"""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        found[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, path + (name,))

    walk(build_parser(), ())
    return found


PARSERS = _parsers()


def _own_options(parser: argparse.ArgumentParser) -> set[str]:
    """The ``--long`` options of one parser, ``--help`` left out."""
    return {s for a in parser._actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def _valid_options(path: tuple[str, ...]) -> set[str]:
    """Options a command line for ``path`` may carry: its parsers' and its subcommands'."""
    ancestors = {path[:i] for i in range(1, len(path) + 1)}
    return set().union(*(_own_options(p) for q, p in PARSERS.items()
                         if q in ancestors or q[:len(path)] == path))


def _command_of(span: str) -> list[tuple[str, ...]]:
    """The command paths a code span ``rtbci CMD …`` names (``rtbci run/demo …``: both;
    ``run --replay``, a command and an option without ``rtbci``, too)."""
    words = span.split()
    if len(words) > 1 and (words[0],) in PARSERS and words[1].startswith("--"):
        words = ["rtbci", *words]  # `run --replay --report`
    if len(words) < 2 or words[0] != "rtbci":
        return []
    paths = []
    for name in words[1].split("/"):
        if (name,) not in PARSERS:
            continue
        subs = [w for w in words[2:] if (name, w) in PARSERS]
        paths.append((name, subs[0]) if subs else (name,))
    return paths


def _table_rows() -> list[str]:
    """The rows of the README's "## Command line" table (its first table, header and rule
    left out)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n| command |", 1)[1].split("\n\n", 1)[0]
    return [line for line in table.splitlines()[1:] if line.startswith("| ")]


def _row_options() -> list[tuple[str, tuple[str, ...] | None, str]]:
    """``(row, command path or None, --option)`` for every option a table row names: in a
    code span ``rtbci CMD …`` it belongs to CMD, elsewhere to the row's own command (the
    first cell's first ``rtbci CMD``; None for a row that starts otherwise)."""
    found = []
    for row in _table_rows():
        first_cell = CELL_SPLIT.split(row)[1]
        spans = CODE_SPAN.findall(first_cell)
        own = (_command_of(spans[0]) if first_cell.lstrip().startswith("`rtbci ") else []) \
            or [None]
        rest = row
        for span in CODE_SPAN.findall(row):
            paths = _command_of(span)
            if paths:
                rest = rest.replace(f"`{span}`", " ", 1)
                for path in paths:
                    found += [(row, path, opt) for opt in OPTION.findall(span)]
        found += [(row, path, opt) for path in own for opt in OPTION.findall(rest)]
    return found


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8")
                     for p in [README, *sorted((ROOT / "docs").glob("*.md"))])


def test_every_command_has_a_table_row():
    named = {path for row in _table_rows() for span in CODE_SPAN.findall(row)
             for path in _command_of(span)}
    commands = {path for path in PARSERS if path and not _subcommands(path)}
    missing = sorted(" ".join(p) for p in commands - named
                     if not any(q[:len(p)] == p and q != p for q in named))
    assert not missing, f"README.md '## Command line' table has no row for: rtbci {missing}"


def _subcommands(path: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [q for q in PARSERS if len(q) == len(path) + 1 and q[:len(path)] == path]


def test_every_option_in_the_table_exists():
    wrong = []
    for row, path, opt in _row_options():
        valid = (_valid_options(path) if path is not None
                 else set().union(*map(_own_options, PARSERS.values())))
        if opt not in valid:
            wrong.append(f"{opt} (rtbci {' '.join(path or ('?',))}) in row: {row[:80]}…")
    assert not wrong, "README.md's command table names options the parser lacks:\n" + \
        "\n".join(wrong)


@pytest.mark.parametrize("path", sorted(PARSERS), ids=lambda p: " ".join(p) or "rtbci")
def test_every_option_is_documented(path):
    in_rows = {opt for _row, p, opt in _row_options() if p == path}
    docs = _docs_text()
    missing = sorted(opt for opt in _own_options(PARSERS[path]) - in_rows
                     if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", docs))
    assert not missing, (f"rtbci {' '.join(path)}: options in --help but neither in its row "
                         f"of README.md's command table nor in README.md / docs/*.md: {missing}")


def test_demo_help_describes_todays_demo():
    """The demo runs 5 simulated amplifiers and 6 decoders (rtbci/demo.toml), not one
    64-channel EEG amplifier."""
    config = (ROOT / "rtbci" / "demo.toml").read_text(encoding="utf-8")
    n_sources, n_decoders = config.count("[[sources]]"), config.count("[[decoders]]")
    description = " ".join(PARSERS[("demo",)].format_help().split())
    listing = " ".join(PARSERS[()].format_help().split())
    assert f"{n_sources} simulated amplifiers" in description
    assert f"demo ({n_sources} simulated amplifiers, {n_decoders} decoders)" in listing
    assert "64-channel EEG amplifier" not in description
