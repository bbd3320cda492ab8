"""``training.family_bounds``: the exact knapsack that combines families' choices, and the neighbours' label mean."""

from __future__ import annotations

import itertools

import numpy as np

from training.family_bounds import knapsack, neighbour_mean


def test_the_knapsack_finds_the_cheapest_combination_for_every_total_of_tasks_lost() -> None:
    options = [[(0, 10.0), (1, 6.0), (3, 2.0)], [(0, 8.0), (2, 3.0), (-1, 9.0)], [(0, 5.0), (1, 1.0)]]
    best = knapsack(options, max_lost=3)
    for lost in range(-1, 4):  # against every combination, by brute force
        costs = [sum(c for _, c in pick) for pick in itertools.product(*options) if sum(n for n, _ in pick) == lost]
        assert (lost in best) == bool(costs)
        if costs:
            assert best[lost] == min(costs)
    assert max(best) <= 3  # nothing beyond the budget


def test_the_neighbour_mean_weighs_the_k_most_similar_labels_and_leaves_a_query_out_of_its_own() -> None:
    similarity = np.array([[0.9, 0.1, 0.8, 0.0], [0.2, 1.0, 0.3, 0.7]])
    labels = np.array([1, 0, 0, 1])
    got = neighbour_mean(similarity, labels, k=2)
    assert np.allclose(got, [0.9 / 1.7, 0.7 / 1.7])  # row 0: columns 0 and 2; row 1: columns 1 and 3
    own = neighbour_mean(similarity, labels, k=2, exclude=np.array([0, -1]))
    assert np.isclose(own[0], 0.0)  # column 0 is the query itself: columns 2 and 1, both labelled 0
    assert np.isnan(neighbour_mean(np.zeros((1, 1)), np.array([1]), k=3, exclude=np.array([0]))[0])  # nothing left
