"""Retrieval metrics: a broken network must score chance or worse, never the ceiling."""

import numpy as np
import pytest

from rtbci.models.contrastive import retrieval_metrics, topk_hits

N_ITEMS, DIM = 40, 16


@pytest.fixture
def bank():
    return np.random.default_rng(0).standard_normal((N_ITEMS, DIM)).astype(np.float32)


def test_perfect_network_scores_one(bank):
    noisy = bank + 0.01 * np.random.default_rng(1).standard_normal(bank.shape)
    metrics = retrieval_metrics(noisy, bank, np.arange(N_ITEMS))
    assert metrics["top1"] == 1.0
    assert metrics["chance"] == 1 / N_ITEMS


def test_all_zero_output_is_a_miss_not_a_tie_win(bank):
    """Every candidate ties with the true one: ties count against the query."""
    metrics = retrieval_metrics(np.zeros_like(bank), bank, np.arange(N_ITEMS))
    assert metrics["top1"] == metrics["top5"] == metrics["top10"] == 0.0


def test_nan_output_is_a_miss(bank):
    metrics = retrieval_metrics(np.full_like(bank, np.nan), bank, np.arange(N_ITEMS))
    assert metrics["top1"] == metrics["top10"] == 0.0


def test_constant_output_scores_exactly_chance(bank):
    """One output for every query always picks the same candidate: right once in N."""
    constant = np.tile(np.random.default_rng(2).standard_normal(DIM), (N_ITEMS, 1))
    metrics = retrieval_metrics(constant, bank, np.arange(N_ITEMS))
    assert metrics["top1"] == pytest.approx(1 / N_ITEMS)
    assert metrics["top5"] == pytest.approx(5 / N_ITEMS)


def test_shuffled_labels_score_near_chance(bank):
    rng = np.random.default_rng(3)
    queries = np.repeat(bank, 25, axis=0)
    truth = rng.integers(0, N_ITEMS, len(queries))  # labels unrelated to the outputs
    metrics = retrieval_metrics(queries, bank, truth)
    assert metrics["top1"] == pytest.approx(1 / N_ITEMS, abs=0.02)


def test_nan_candidate_ranks_ahead_of_the_query():
    scores = np.array([[0.9, np.nan, 0.1], [0.5, 0.5, 0.2]])
    hits = topk_hits(scores, np.array([0, 0]), (1, 2, 3))
    assert hits == {1: 0.0, 2: 1.0, 3: 1.0}
