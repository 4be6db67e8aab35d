"""The docs' quoted examples, re-run: the numbers in README.md and docs/*.md stay true.

The convention: an HTML comment right before a reproducible example,

    <!-- example: NAME tolerance=0.02 [timeout=300] [data=finger-movements] -->

then a fenced ``bash`` block (the commands), then, after any prose, a fenced output block:
what the commands print, or the tail of it. ``test_examples_follow_the_convention`` (fast)
checks the convention; ``test_example_reproduces_its_output`` (slow) runs each bash block in a
temporary folder (``bash -e``, this Python's ``bin`` first on PATH, so ``rtbci`` is the installed
console script) and compares the output block with what it printed (stdout and stderr).

How an expected line is compared: its numbers are blanked out (a number is digits, with
``,`` thousands and a ``.`` decimal part, not glued to a letter: ``i13``, ``p50``, ``w5`` are
words; a unit may follow: ``0.1s``), and the line must equal (whitespace aside) an output
line blanked the same way. Then
each number must be within the example's ``tolerance``: **absolute** for expected values
≤ 1 (accuracies, top-k, chance: ``tolerance=0.02`` accepts 0.949 ± 0.02), **relative** above
1 (counts, parameters, seconds: ``tolerance=0.02`` accepts 79 ± 1.58). Of several output
lines of the same words, the closest is reported. ``data=NAME`` skips the example when
``rtbci data NAME`` cannot be fetched (no network and no cached copy).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: (?P<name>[\w.-]+)(?P<options>(?: [\w]+=[\w.-]+)*) -->$")
FENCE = re.compile(r"^\s*```(?P<info>\S*)\s*$")
NUMBER = re.compile(r"(?<![A-Za-z_\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
OPTIONS = {"tolerance": float, "timeout": float, "data": str}


@dataclass
class Example:
    """One marked example: where it is, its options, its commands and its expected lines."""

    doc: Path
    line: int  # 1-based line of the marker
    name: str
    options: dict[str, float | str] = field(default_factory=dict)
    commands: str = ""
    expected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line} example '{self.name}'"


def _fenced_block(lines: list[str], start: int) -> tuple[str, list[str], int] | None:
    """The first fenced block at or after ``start``: (info string, its lines, the index after
    its closing fence); None when a marker or the end of the file comes first."""
    i = start
    while i < len(lines) and not FENCE.match(lines[i]):
        if MARKER.match(lines[i].strip()):
            return None
        i += 1
    if i == len(lines):
        return None
    info = FENCE.match(lines[i])["info"]
    end = next((j for j in range(i + 1, len(lines)) if FENCE.match(lines[j])), None)
    if end is None:
        return None
    return info, lines[i + 1:end], end + 1


def _parse(doc: Path, lines: list[str], index: int) -> Example:
    match = MARKER.match(lines[index].strip())
    example = Example(doc, index + 1, match["name"])
    for option in match["options"].split():
        key, value = option.split("=", 1)
        if key not in OPTIONS:
            example.problems.append(f"unknown option {key!r} (known: {', '.join(OPTIONS)})")
            continue
        try:
            example.options[key] = OPTIONS[key](value)
        except ValueError:
            example.problems.append(f"{key}={value} is not a {OPTIONS[key].__name__}")
    if "tolerance" not in example.options:
        example.problems.append("no tolerance=X")
    if index + 1 >= len(lines) or lines[index + 1].strip():
        example.problems.append("the marker must be followed by a blank line, then ```bash")
    bash = _fenced_block(lines, index + 1)
    if bash is None or bash[0] != "bash":
        example.problems.append("no ```bash block follows the marker")
        return example
    example.commands = "\n".join(bash[1])
    output = _fenced_block(lines, bash[2])
    if output is None or output[0] == "bash" or not any(s.strip() for s in output[1]):
        example.problems.append("no output block follows its ```bash block")
        return example
    example.expected = [s.strip() for s in output[1] if s.strip()]
    return example


def find_examples(docs: list[Path] = DOCS) -> list[Example]:
    """Every marked example of ``docs``, in file order."""
    found = []
    for doc in docs:
        lines = doc.read_text(encoding="utf-8").splitlines()
        found += [_parse(doc, lines, i) for i, line in enumerate(lines)
                  if MARKER.match(line.strip())]
    return found


def _skeleton(line: str) -> str:
    return " ".join(NUMBER.sub("#", line).split())


def _numbers(line: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(line)]


def _deviations(expected: str, actual: str, tolerance: float) -> list[str]:
    """The numbers of ``actual`` off their counterpart in ``expected`` by more than allowed."""
    off = []
    for want, got in zip(_numbers(expected), _numbers(actual)):
        allowed = tolerance if abs(want) <= 1 else tolerance * abs(want)
        if abs(got - want) > allowed + 1e-12:
            off.append(f"{got:g} vs {want:g} (± {allowed:g})")
    return off


def compare(example: Example, output: str) -> list[str]:
    """One message per expected line that no output line reproduces within the tolerance."""
    tolerance = float(example.options["tolerance"])
    by_skeleton: dict[str, list[str]] = {}
    for line in output.splitlines():
        by_skeleton.setdefault(_skeleton(line), []).append(line.strip())
    failures = []
    for want in example.expected:
        candidates = by_skeleton.get(_skeleton(want), [])
        if not candidates:
            failures.append(f"expected: {want}\n  actual:   (no output line with these words)")
            continue
        scored = [(_deviations(want, got, tolerance), got) for got in candidates]
        off, got = min(scored, key=lambda pair: len(pair[0]))
        if off:
            failures.append(f"expected: {want}\n  actual:   {got}\n  off:      {'; '.join(off)}")
    return failures


EXAMPLES = find_examples()


def test_examples_follow_the_convention():
    """Every marker has a tolerance, a bash block and an output block; names are unique."""
    assert EXAMPLES, "no <!-- example: … --> marker in README.md or docs/*.md"
    problems = [f"{e.where}: {p}" for e in EXAMPLES for p in e.problems]
    names = [e.name for e in EXAMPLES]
    problems += [f"{e.where}: the name is used twice" for e in EXAMPLES
                 if names.count(e.name) > 1]
    assert not problems, "\n".join(problems)


def test_the_checker_reads_numbers_and_tolerances(tmp_path):
    """The comparison itself: words must match, numbers within absolute / relative bounds."""
    doc = tmp_path / "x.md"
    doc.write_text("<!-- example: x tolerance=0.02 -->\n\n```bash\necho\n```\n\nit prints:\n\n"
                   "```\ntrial: accuracy 0.949 on 79 events\nwrote a.pt (11,337 parameters)\n"
                   "```\n")
    (example,) = find_examples([doc])
    assert not example.problems and example.expected[0].startswith("trial:")
    good = "noise\ntrial: accuracy 0.965 on 80 events\nwrote a.pt (11,500 parameters)\n"
    assert compare(example, good) == []
    bad = compare(example, "trial: accuracy 0.900 on 79 events\nwrote a.pt (11337 params)\n")
    assert len(bad) == 2 and "0.9 vs 0.949 (± 0.02)" in bad[0] and "no output line" in bad[1]
    assert _skeleton("top1 i13 0.66 (n=32) 1/n 0.500") == "top1 i13 # (n=#) #/n #"


def _have_data(name: str) -> bool:
    from rtbci.devices.datasets import fetch
    from rtbci.errors import RtbciError

    try:
        fetch(name)
    except RtbciError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_reproduces_its_output(example: Example, tmp_path):
    """Run the example's bash block; its output block must be reproduced (module docstring)."""
    assert not example.problems, f"{example.where}: {example.problems}"
    data = example.options.get("data")
    if data and not _have_data(str(data)):
        pytest.skip(f"{example.where}: rtbci data {data} cannot be fetched here")
    env = dict(os.environ, MPLBACKEND="Agg",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    done = subprocess.run(["bash", "-e", "-c", example.commands], cwd=tmp_path, env=env,
                          capture_output=True, text=True,
                          timeout=float(example.options.get("timeout", 300)))
    output = done.stdout + "\n" + done.stderr
    assert done.returncode == 0, (f"{example.where}: exit {done.returncode}\n"
                                  f"{output[-3000:]}")
    failures = compare(example, output)
    assert not failures, (f"{example.where}: the output moved beyond tolerance "
                          f"{example.options['tolerance']}:\n" + "\n".join(failures))
