"""One chance everywhere (issue 22, point 2): the majority class of the scored set, the 1/n
rate named as such, and a 95 % binomial interval for the accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from rtbci.evaluate import pool_classes
from rtbci.messages import Result
from rtbci.report import Scorer, chance_figures, format_accuracy


def test_chance_is_the_majority_class_and_the_interval_is_clopper_pearson():
    figures = chance_figures(13, [8, 7, 5], 3)
    assert figures["chance"] == 8 / 20 and figures["chance_uniform"] == 1 / 3
    # R: binom.test(13, 20)$conf.int → 0.4078115 0.8460908
    assert figures["ci95"] == pytest.approx([0.4078115, 0.8460908], abs=1e-7)
    assert chance_figures(20, [20], 2)["ci95"] == pytest.approx([0.8315665, 1.0], abs=1e-7)
    assert format_accuracy(0.65, figures) == ("accuracy 0.650 (95 % CI 0.408–0.846; chance "
                                              "0.400 majority class, 1/n 0.333)")


def result(truth: str, predicted: str, labels=("feet", "left", "right")) -> Result:
    probabilities = np.array([0.8 if label == predicted else 0.1 for label in labels], "f4")
    return Result(decoder="trial", seq=0, trigger="marker", marker=f"stim/{truth}",
                  label=truth, window_start=0.0, window_end=1.0, kind="classes", t_arrived=1.0,
                  labels=list(labels), probabilities=probabilities)


def test_the_replay_report_states_the_majority_of_its_events_not_one_over_n():
    """A decoder that always says "left" on a set that is 3/4 left: 0.75 is chance, not 2.25×
    the 1/3 the report said before."""
    scorer = Scorer()
    for truth in ["left"] * 30 + ["right"] * 6 + ["feet"] * 4:
        scorer.publish(result(truth, "left"))
    entry = scorer.report()["trial"]
    assert entry["accuracy"] == 0.75 and entry["chance"] == 0.75
    assert entry["chance_uniform"] == 1 / 3
    low, high = entry["ci95"]
    assert low < 0.75 < high and 0.58 < low < 0.62 and 0.86 < high < 0.89


def test_evaluate_pools_every_files_events_for_one_interval():
    per_file = [{"n": 4, "accuracy": 0.75, "labels": ["a", "b"],
                 "confusion": {"a": {"a": 3}, "b": {"a": 1}}},
                {"n": 6, "accuracy": 0.5, "labels": ["a", "b"],
                 "confusion": {"a": {"a": 1, "b": 1}, "b": {"b": 2, "a": 2}}}]
    pooled = pool_classes(per_file)
    assert pooled["n"] == 10 and pooled["accuracy"] == 0.6
    assert pooled["chance"] == 0.5 and pooled["chance_uniform"] == 0.5
    assert pooled["ci95"] == pytest.approx(chance_figures(6, [5, 5], 2)["ci95"])
    assert pool_classes([{"n": 3, "top1": 1.0, "top_k": 1.0, "k": 5}]) is None
