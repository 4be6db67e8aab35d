"""Marker matching: which markers select a decoder or a training trial, and their labels.

The one rule, used by ``on_marker`` (the scheduler), ``--report`` scoring and
``rtbci train --events``. A pattern is

- an exact name: ``left`` matches the marker ``left``; label ``left``;
- a prefix: ``stim`` matches ``stim/left``; label ``left`` (what follows ``stim/``);
- a regular expression written ``re:<regex>``, matched against the whole marker
  (``re.fullmatch``); label = its first group if it has one, else the whole marker.
  ``re:trial_(left|right)`` matches ``trial_left`` with label ``left``.

Several patterns: the first one that matches gives the label.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from rtbci.errors import RtbciError

REGEX_PREFIX = "re:"
# Where a recording was cut and joined (MNE's concatenate_raws, EEGLAB): no window may span one.
BOUNDARY_MARKERS = frozenset({"BAD boundary", "EDGE boundary", "boundary"})


class MarkerPattern:
    """One pattern (see the module docstring). Raises RtbciError for an invalid regex."""

    def __init__(self, pattern: str):
        if not pattern:
            raise RtbciError("an empty marker pattern")
        self.pattern = pattern
        self._regex = None
        if pattern.startswith(REGEX_PREFIX):
            try:
                self._regex = re.compile(pattern[len(REGEX_PREFIX):])
            except re.error as exc:
                raise RtbciError(f"marker pattern {pattern!r}: invalid regular expression: "
                                 f"{exc}") from None

    def __repr__(self) -> str:
        return f"MarkerPattern({self.pattern!r})"

    def label(self, name: str) -> str | None:
        """The label this pattern gives marker ``name``, or None if it does not match."""
        if self._regex is not None:
            m = self._regex.fullmatch(name)
            if m is None:
                return None
            return m.group(1) if self._regex.groups and m.group(1) is not None else name
        if name == self.pattern:
            return name
        if name.startswith(self.pattern) and name[len(self.pattern):len(self.pattern) + 1] == "/":
            return name[len(self.pattern) + 1:]
        return None


class MarkerMatcher:
    """One pattern or a list of them; the first that matches a marker gives its label.

    Parameters
    ----------
    patterns : str or sequence of str
    """

    def __init__(self, patterns: str | Sequence[str]):
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        if not patterns:
            raise RtbciError("no marker pattern given")
        self.patterns = [MarkerPattern(p) for p in patterns]

    def __repr__(self) -> str:
        return f"MarkerMatcher({[p.pattern for p in self.patterns]!r})"

    def label(self, name: str) -> str | None:
        """The label of marker ``name``, or None if no pattern matches it."""
        for pattern in self.patterns:
            label = pattern.label(name)
            if label is not None:
                return label
        return None

    def matches(self, name: str) -> bool:
        return self.label(name) is not None

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The patterns that match none of ``names`` (e.g. the markers of a recording)."""
        names = set(names)
        return [p.pattern for p in self.patterns
                if not any(p.label(name) is not None for name in names)]

    def describe_missing(self, names: Iterable[str]) -> str | None:
        """A one-line message naming the patterns that match none of ``names`` and the
        markers that exist (:func:`summarize_markers`), or None if every pattern matches."""
        names = list(names)
        missing = self.unmatched(names)
        if not missing:
            return None
        return (f"marker pattern {' and '.join(repr(p) for p in missing)} matches no marker; "
                f"markers seen: {summarize_markers(names)}")


def summarize_markers(texts: Iterable[str], limit: int = 6) -> str:
    """What marker texts there are, most frequent first, for messages about ``on_marker`` or
    ``--events`` patterns that match nothing: ``stim/left ×20, stim/right ×19, start ×1``.
    A prefix with more than ``limit`` distinct texts is grouped: ``image/… ×100``."""
    texts = list(texts)
    distinct: dict[str, set[str]] = {}
    for t in texts:
        distinct.setdefault(t.rsplit("/", 1)[0], set()).add(t)
    crowded = {p for p, names in distinct.items() if len(names) > limit and p}
    counts = Counter(t.rsplit("/", 1)[0] + "/…" if t.rsplit("/", 1)[0] in crowded and "/" in t
                     else t for t in texts)
    if not counts:
        return "none"
    shown = [f"{text} ×{n}" for text, n in counts.most_common(limit)]
    more = f", and {len(counts) - limit} more" if len(counts) > limit else ""
    return ", ".join(shown) + more
