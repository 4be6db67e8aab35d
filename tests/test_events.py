"""Marker matching: one rule for on_marker, --report and rtbci train --events."""

import pytest

from rtbci.config import parse_config
from rtbci.errors import RtbciError
from rtbci.events import MarkerMatcher, MarkerPattern


@pytest.mark.parametrize("pattern, name, label", [
    ("left", "left", "left"),  # exact name
    ("left", "leftover", None),
    ("stim", "stim/left", "left"),  # prefix
    ("stim", "stim/left/long", "left/long"),
    ("stim", "stimulus/left", None),
    ("stim", "stim", "stim"),
    ("re:trial_(left|right)", "trial_left", "left"),  # regex: first group
    ("re:trial_(left|right)", "trial_left_2", None),  # fullmatch
    ("re:cue\\d+", "cue12", "cue12"),  # no group: the whole name
    ("re:(a)?b", "b", "b"),  # an optional group that did not take part
])
def test_a_pattern_selects_a_marker_and_gives_its_label(pattern, name, label):
    assert MarkerPattern(pattern).label(name) == label


def test_the_first_matching_pattern_gives_the_label():
    m = MarkerMatcher(["re:(.*)_go", "stim"])
    assert m.label("left_go") == "left" and m.label("stim/x") == "x" and m.label("x") is None
    assert m.matches("stim") and not m.matches("go")


def test_a_pattern_matching_nothing_is_reported_with_the_names_that_exist():
    m = MarkerMatcher(["stim", "re:cue_(\\d)", "outcome"])
    names = ["stim/left", "stim/right", "trial_start", "stim/left"]
    assert m.unmatched(names) == ["re:cue_(\\d)", "outcome"]
    assert m.describe_missing(names) == (
        "marker pattern 're:cue_(\\\\d)' and 'outcome' matches no marker; markers seen: "
        "stim/left ×2, stim/right ×1, trial_start ×1")
    assert MarkerMatcher("stim").describe_missing(names) is None


def test_bad_patterns_are_one_line_errors():
    with pytest.raises(RtbciError, match=r"marker pattern 're:\(': invalid regular expression"):
        MarkerMatcher("re:(")
    with pytest.raises(RtbciError, match="no marker pattern"):
        MarkerMatcher([])


def decoder(on_marker):
    return parse_config({"sources": [{"name": "eeg", "kind": "simulate"}],
                         "decoders": [{"name": "erp", "model": "builtin:bandpower",
                                       "source": "eeg", "window_ms": [0, 500],
                                       "on_marker": on_marker}]}).decoders[0]


def test_on_marker_takes_one_pattern_or_a_list():
    assert decoder("stim").on_marker == "stim"
    assert decoder(["stim", "re:cue_(\\d)"]).on_marker == ["stim", "re:cue_(\\d)"]
    with pytest.raises(RtbciError,
                       match=r"decoders\[0\]: on_marker: marker pattern 're:\[': invalid"):
        decoder("re:[")
