"""The display's running accuracy states chance as the majority class of the trials scored so
far, 1/n named as such, and the accuracy's 95 % interval (issue 22, point 2)."""

from __future__ import annotations

import pytest

from rtbci.gui.state import DecoderState
from rtbci.report import chance_figures

LABELS = ["feet", "left", "right"]


def message(truth: str, predicted: str) -> dict:
    return {"t_published": 2.0, "t_arrived": 1.0, "window_end": 1.0, "marker": f"stim/{truth}",
            "label": truth, "labels": LABELS,
            "probabilities": [0.8 if label == predicted else 0.1 for label in LABELS]}


def test_running_chance_is_the_majority_of_the_scored_trials():
    state = DecoderState("trial")
    assert state.chance() is None
    for truth in ["left"] * 6 + ["right"] * 2:
        state.add(message(truth, "left"), 3.0)
    figures = state.chance()
    assert state.correct == 6 and state.scored == 8
    assert figures == chance_figures(6, [6, 2], 3)
    assert figures["chance"] == 0.75 and figures["chance_uniform"] == 1 / 3


def test_the_card_shows_chance_and_interval_beside_the_accuracy():
    pytest.importorskip("PySide6", reason="the display needs PySide6")
    pytest.importorskip("pyqtgraph", reason="the display needs pyqtgraph")
    from rtbci.gui.decoders import ClassesCard

    state = DecoderState("trial")
    for truth in ["left"] * 6 + ["right"] * 2:
        state.add(last := message(truth, "left"), 3.0)
    low, high = chance_figures(6, [6, 2], 3)["ci95"]
    assert ClassesCard._trial_text(last, state) == (
        f"marker stim/right → left ✗ · accuracy 75 % (95 % CI {100 * low:.0f}–"
        f"{100 * high:.0f}) · chance 75 % (majority class; 1/n 33 %) · 8 trials")
