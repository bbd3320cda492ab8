"""The speculative-sampling rule: kept draft tokens plus residual replacements are distributed as the target."""

from __future__ import annotations

import math

import numpy as np

from router.speculative import accept, is_end, tempered


def _full(rng: np.random.Generator, n: int, sharp: float) -> dict[str, float]:
    logits = rng.normal(size=n) * sharp
    lp = logits - math.log(np.exp(logits).sum())
    return {f"t{i}": float(v) for i, v in enumerate(lp)}


def test_tempered_is_the_softmax_at_temperature_on_a_full_distribution() -> None:
    lp = _full(np.random.default_rng(0), 8, 2.0)
    for t in (0.3, 0.7, 1.0):
        got = tempered(lp, t)
        raw = np.array(list(lp.values())) / t
        want = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
        assert np.allclose(list(got.values()), want, atol=1e-9)


def test_tempered_reserves_the_unseen_tail() -> None:
    full = _full(np.random.default_rng(1), 50, 1.0)
    top = dict(sorted(full.items(), key=lambda kv: -kv[1])[:5])
    got = tempered(top, 1.0)
    assert sum(got.values()) < 1.0
    for tok, p in got.items():  # at T = 1 the known tokens keep their raw probabilities
        assert math.isclose(p, math.exp(full[tok]), rel_tol=1e-6)


def test_the_rule_reproduces_the_target_distribution() -> None:
    rng = np.random.default_rng(7)
    for sharp in (0.5, 2.0):
        p = {k: math.exp(v) for k, v in _full(rng, 6, sharp).items()}
        q = {k: math.exp(v) for k, v in _full(rng, 6, sharp).items()}
        tokens = list(q)
        counts = dict.fromkeys(tokens, 0)
        kept = 0
        n = 40_000
        draws = rng.choice(len(tokens), size=n, p=np.array(list(q.values())) / sum(q.values()))
        for d in draws:
            x = tokens[int(d)]
            replacement = accept(x, p, q, rng)
            kept += replacement is None
            counts[x if replacement is None else replacement] += 1
        empirical = np.array([counts[t] / n for t in tokens])
        target = np.array([p[t] for t in tokens])
        assert np.abs(empirical - target).max() < 0.012, (empirical, target)
        expected_kept = sum(min(p[t], q[t]) for t in tokens)  # the acceptance rate the rule must have
        assert abs(kept / n - expected_kept) < 0.012


def test_identical_stages_keep_every_token() -> None:
    rng = np.random.default_rng(3)
    p = {k: math.exp(v) for k, v in _full(rng, 6, 1.0).items()}
    assert all(accept(t, p, p, rng) is None for t in p for _ in range(50))


def test_is_end() -> None:
    assert is_end("<|im_end|>") and is_end("<|eot_id|>")
    assert not is_end("<") and not is_end("hello") and not is_end("<|")
