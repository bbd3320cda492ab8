"""The stopping rule against brute-force enumeration of every policy.

Point priors (strength None): a policy is a sequence of stages to visit,
stopping at the last; after stage i with known p̂_i, the best policy value
must equal the DP's choice. Beta priors: future p̂_j take values on the
quadrature grid with the Beta weights, independently across stages, so
Markov policies (action depends on the current stage and its p̂) are optimal
among all policies; we enumerate every one of them on a coarse grid.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from router import policy as policy_mod
from router.policy import StoppingPolicy, shrink


def _subsets_after(i: int, top: int) -> list[tuple[int, ...]]:
    rest = list(range(i + 1, top + 1))
    return [c for r in range(1, len(rest) + 1) for c in itertools.combinations(rest, r)]


def _brute_point(costs: list[float], p: list[float], lam: float, i: int, p_hat: float, top: int) -> float:
    best = lam * (1 - p_hat)
    for seq in _subsets_after(i, top):
        best = min(best, sum(costs[j] for j in seq) + lam * (1 - p[seq[-1]]))
    return best


@pytest.mark.parametrize("seed", range(200))
def test_point_policy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    costs = sorted(rng.uniform(0.1, 10, n).tolist())
    priors = rng.uniform(0.05, 0.95, n).tolist()
    lam = float(10 ** rng.uniform(-2, 3))
    top = int(rng.integers(1, n))
    pol = StoppingPolicy(costs, priors, lam, max_stage=top, strength=None)
    for i in range(top + 1):
        p_hat = float(rng.uniform())
        d = pol.decide(i, p_hat)
        chosen = d.stop_value if d.stop else d.continue_value
        assert chosen == pytest.approx(_brute_point(costs, priors, lam, i, p_hat, top), rel=1e-9, abs=1e-12)
    # start: the cheapest way to reach any stage first
    start_best = min(costs[s] + _brute_point(costs, priors, lam, s, priors[s], top) for s in range(top + 1))
    s = pol.start()
    assert costs[s] + min(lam * (1 - priors[s]), pol.best_after(s)[1]) == pytest.approx(start_best)


def _markov_value(costs, grids, weights, lam, start, actions) -> float:
    """Exact expected total of a Markov policy: actions[(stage, grid index)] -> next stage or None."""
    total = 0.0
    n_grid = len(grids)
    for outcome in itertools.product(range(n_grid), repeat=len(costs)):
        prob = math.prod(weights[j][outcome[j]] for j in range(len(costs)))
        stage, cost = start, costs[start]
        while (nxt := actions[(stage, outcome[stage])]) is not None:
            stage = nxt
            cost += costs[stage]
        total += prob * (cost + lam * (1 - grids[outcome[stage]]))
    return total


@pytest.mark.parametrize("seed", range(25))
def test_beta_policy_matches_brute_force(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = np.array([0.1, 0.5, 0.9])
    monkeypatch.setattr(policy_mod, "_XS", grid)
    monkeypatch.setattr(policy_mod, "_LOG_XS", np.log(grid))
    monkeypatch.setattr(policy_mod, "_LOG_1MXS", np.log1p(-grid))
    rng = np.random.default_rng(1000 + seed)
    costs = sorted(rng.uniform(0.1, 5, 3).tolist())
    priors = rng.uniform(0.1, 0.9, 3).tolist()
    lam = float(10 ** rng.uniform(-1, 2))
    strength = float(rng.uniform(1.5, 10))
    pol = StoppingPolicy(costs, priors, lam, strength=strength)
    weights = [policy_mod.beta_weights(p, strength) for p in priors]

    nodes = [(i, g) for i in range(2) for g in range(len(grid))]
    choices = [[None, *range(i + 1, 3)] for i, _ in nodes]
    brute = math.inf
    for start in range(3):
        for combo in itertools.product(*choices):
            actions = dict(zip(nodes, combo, strict=False))
            actions.update({(2, g): None for g in range(len(grid))})
            brute = min(brute, _markov_value(costs, grid, weights, lam, start, actions))
    assert pol.best_after(-1)[1] == pytest.approx(brute, rel=1e-9)


def test_small_lambda_stops_large_lambda_escalates() -> None:
    pol = StoppingPolicy([1.0, 4.0, 8.0], [0.4, 0.7, 0.8], 0.01, strength=8.0)
    assert pol.decide(0, 0.2).stop
    pol = StoppingPolicy([1.0, 4.0, 8.0], [0.4, 0.7, 0.8], 1e4, strength=8.0)
    d = pol.decide(0, 0.5)
    assert not d.stop and d.next_stage in (1, 2)


def test_max_stage_caps_the_ladder() -> None:
    pol = StoppingPolicy([1.0, 4.0, 8.0], [0.4, 0.7, 0.8], 1e6, max_stage=0)
    assert pol.start() == 0 and pol.decide(0, 0.0).stop


def test_start_skips_a_hopeless_small_stage() -> None:
    pol = StoppingPolicy([1.0, 4.0], [0.01, 0.95], 100.0, strength=None)
    assert pol.start(skip_by_prior=True) == 1
    assert pol.start(skip_by_prior=False) == 0


def test_shrink_pulls_toward_prior_mean() -> None:
    assert shrink(1.0, 50, 1, 1) == pytest.approx(51 / 52)
    assert shrink(0.0, 50, 1, 1) == pytest.approx(1 / 52)
    assert shrink(0.5, 10, 3, 3) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(200))
def test_beliefs_after_an_answer_match_brute_force(seed: int) -> None:
    """After stage i answered, ``observe`` puts beliefs in place of the priors above i; every decision from then
    on must be the brute-force optimum under those beliefs (point priors)."""
    rng = np.random.default_rng(5000 + seed)
    n = int(rng.integers(2, 6))
    costs = sorted(rng.uniform(0.1, 10, n).tolist())
    priors = rng.uniform(0.05, 0.95, n).tolist()
    lam = float(10 ** rng.uniform(-2, 3))
    top = int(rng.integers(1, n))
    i = int(rng.integers(0, top + 1))
    beliefs = rng.uniform(0.0, 1.0, n - i - 1).tolist()
    pol = StoppingPolicy(costs, priors, lam, max_stage=top, strength=None)
    pol.observe(i, beliefs)
    believed = priors[: i + 1] + beliefs
    for stage in range(i, top + 1):
        p_hat = float(rng.uniform())
        d = pol.decide(stage, p_hat)
        chosen = d.stop_value if d.stop else d.continue_value
        assert chosen == pytest.approx(_brute_point(costs, believed, lam, stage, p_hat, top), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_observe_is_a_policy_built_on_the_beliefs(seed: int) -> None:
    """With Beta priors too (whose induction the brute force above checks): observing is the same as building the
    policy on the believed priors, for every value a later decision reads."""
    rng = np.random.default_rng(7000 + seed)
    costs = sorted(rng.uniform(0.1, 5, 4).tolist())
    priors = rng.uniform(0.1, 0.9, 4).tolist()
    lam, strength = float(10 ** rng.uniform(-1, 2)), float(rng.uniform(1.5, 10))
    i = int(rng.integers(0, 3))
    beliefs = rng.uniform(0.0, 1.0, 3 - i).tolist()
    pol = StoppingPolicy(costs, priors, lam, strength=strength)
    pol.observe(i, beliefs)
    fresh = StoppingPolicy(costs, priors[: i + 1] + beliefs, lam, strength=strength)
    assert pol.values[i + 1 :] == pytest.approx(fresh.values[i + 1 :], rel=1e-12)
    for p_hat in (0.0, 0.3, 0.9):
        assert pol.decide(i, p_hat) == fresh.decide(i, p_hat)


def test_a_failed_answer_that_makes_the_top_stage_likely_escalates() -> None:
    """The issue's case: SmolLM2 answers '3028 + 4657' wrongly (p̂ 0.02) and the prompt-only priors of the later
    stages are low, so stopping looked best. Once the answer says the top stage will likely get it, it escalates."""
    pol = StoppingPolicy([1.4, 3.3, 6.2], [0.5, 0.10, 0.50], 10.0, strength=8.0)
    assert pol.decide(0, 0.0192).stop
    pol.observe(0, [0.3, 0.9])
    d = pol.decide(0, 0.0192)
    assert not d.stop and d.next_stage == 2


def test_observe_checks_the_number_of_beliefs() -> None:
    pol = StoppingPolicy([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], 10.0)
    with pytest.raises(ValueError, match="expected 2 beliefs"):
        pol.observe(0, [0.5])
    pol.observe(2, [])  # the top: nothing above


def test_route_maps_beliefs_onto_its_sub_ladder_and_keeps_them_across_a_rebuild() -> None:
    """A route over ladder stages [0, 2] (stage 1 cannot answer the request): the predictor's beliefs are per ladder
    stage above the one that answered; the route takes those of its own stages, and a load-aware rebuild of the
    policy (fresh from the prompt-only priors) gets them again before it decides."""
    from router.cascade import Route

    def build() -> StoppingPolicy:
        return StoppingPolicy([1.0, 6.0], [0.5, 0.05], 10.0, strength=None)

    route = Route(build(), [0, 2])
    assert route.decide(0, 0.1) is None  # hopeless top stage: stop
    route.observe(0, [0.01, 0.99])  # beliefs about ladder stages 1 and 2
    assert route.policy.priors == [0.5, 0.99]
    assert route.decide(0, 0.1) == 2
    rebuilt = Route(build(), [0, 2], refresh=build)
    rebuilt.observe(0, [0.01, 0.99])
    assert rebuilt.decide(0, 0.1) == 2 and rebuilt.policy.priors == [0.5, 0.99]


@pytest.mark.parametrize("seed", range(6))
def test_prefix_rule_matches_simulation(seed: int) -> None:
    """Early exit: abort iff V_next < price of the rest + E[min(λ(1 - p̂), V_next)], the finished p̂ drawn from
    Beta(κq, κ(1-q)); the expectation estimated by simulation instead of the rule's quadrature grid."""
    rng = np.random.default_rng(seed)
    agree = close = 0
    for _ in range(60):
        costs = sorted(rng.uniform(0.1, 5.0, 3).tolist())
        priors = rng.uniform(0.05, 0.95, 3).tolist()
        lam = float(rng.uniform(0.5, 40.0))
        pol = StoppingPolicy(costs, priors, lam, strength=8.0)
        q, kappa, to_finish = float(rng.uniform(0.02, 0.98)), float(rng.uniform(1.0, 50.0)), float(rng.uniform(0.0, 3.0))
        risk = (50.0, 1.0, 1.0) if rng.random() < 0.5 else None
        d = pol.judge_prefix(0, q, to_finish, kappa, risk)
        _, v_next = pol.best_after(0)
        p = rng.beta(kappa * q, kappa * (1 - q), 200_000)
        if risk is not None:
            p = shrink(p, *risk)  # type: ignore[arg-type]
        finish = to_finish + float(np.minimum(lam * (1 - p), v_next).mean())
        assert d.abort_value == pytest.approx(v_next)
        grid_error = lam / policy_mod._GRID  # the payoff moves by λ/64 across one bin of the quadrature grid
        assert d.finish_value == pytest.approx(finish, rel=0.01, abs=grid_error)
        if abs(finish - v_next) < grid_error:
            close += 1  # within the grid's error of the boundary: either choice is right
            continue
        agree += d.abort == (v_next < finish)
        assert d.abort == (v_next < finish)
        assert (d.next_stage is not None) == d.abort
    assert agree > 30


def test_prefix_rule_aborts_a_hopeless_prefix_and_lets_a_good_one_finish() -> None:
    pol = StoppingPolicy([1.0, 3.0, 8.0], [0.3, 0.7, 0.9], lam=30.0, strength=8.0)
    hopeless = pol.judge_prefix(0, 0.02, to_finish=1.5, strength=20.0)
    assert hopeless.abort and hopeless.next_stage is not None
    promising = pol.judge_prefix(0, 0.95, to_finish=1.5, strength=20.0)
    assert not promising.abort
    # what is left to write is priced: the same doubtful prefix is let finish when finishing is cheap, aborted when not
    assert not pol.judge_prefix(0, 0.5, to_finish=0.0, strength=20.0).abort
    assert pol.judge_prefix(0, 0.5, to_finish=50.0, strength=20.0).abort
    # the top stage always finishes
    assert not pol.judge_prefix(2, 0.0, to_finish=10.0, strength=20.0).abort
