"""A new family, the fastest adaptation at its ceiling: does recalibrating the beliefs on the family's own labels help?

``training.learning_curve`` refits the four models on (the rows without a family) + (the family's labels so far),
and finds that half a family's worth of labels moves them little, even with the exact checker's verdict on every
lower answer. A refit weighs a few dozen new rows against thousands of old ones. The fastest adaptation there is
weighs only the new ones: one logit offset per belief, fitted to the family's labels alone. This measures it at its
ceiling, so that a negative answer is final:

1. **M0**: the models fitted without the family (``learning_curve.fold_fitter``), as in the learning curve, on the
   same halves (``learning_curve.halves``: the first half of the family's shuffled tasks is the stream, the
   second the test);
2. every lower stage's answer of **every** stream task is labelled by the **exact checker** (what no production
   label stream has: it needs a checker and a tour of every request);
3. for each lower stage j, a logit offset ``b`` (MAP, a unit Gaussian prior on it) is fitted to those labels for
   each of M0's beliefs about j: the answer model's p̂, the prompt-only prior, the belief about j after each
   stage below it answered, and early exit's belief at each checkpoint; the offsets are added to M0's beliefs
   on the test half;
4. the test half is replayed through the router's rule (``replay.cascade``) over a sweep of λ, with M0's beliefs
   (the static leave-one-family-out figure) and with the recalibrated ones: quality against the top stage (points)
   and compute against the top stage, pooled over the families.

Usage: ``python -m training.family_recalibration [--config configs/cpu.yaml]`` (``bench/results/family_recalibration.json``).
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training import replay
from training.learning_curve import Setup, fold_fitter, halves, setup, training_rows
from training.replay import Beliefs, UnitCosts

OUT_JSON = Path("bench/results/family_recalibration.json")
LAMBDAS = (300.0, 600.0, 892.0, 1200.0, 1911.0, 3000.0)  # compute unit; cpu.yaml's default is 1911
EVIDENCE = 50.0  # the fold models' risk evidence, as the learning curve fits them
PRIOR_PRECISION = 1.0  # the offset's Gaussian prior: N(0, 1) on the logit scale


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    out: np.ndarray = np.log(q / (1 - q))
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 / (1 + np.exp(-z))
    return out


def offset(y: np.ndarray, p: np.ndarray) -> float:
    """The MAP logit offset b of ``p`` for labels ``y``: maximises sum log Bernoulli(y | sigmoid(logit p + b)) - b² / 2
    (Newton's method; the objective is concave)."""
    z, b = logit(p), 0.0
    for _ in range(50):
        q = _sigmoid(z + b)
        step = (float(np.sum(y - q)) - PRIOR_PRECISION * b) / (float(np.sum(q * (1 - q))) + PRIOR_PRECISION)
        b += step
        if abs(step) < 1e-9:
            break
    return b


BeliefSlot = tuple[str, int, tuple[Any, ...]]


def lower_beliefs(b: Beliefs) -> list[BeliefSlot]:
    """Every belief about a lower stage j, as (``Beliefs`` field, j, index into it): the answer model's p̂, the
    prompt-only prior, the beliefs after each stage below j answered, early exit's at each checkpoint (NaN where the
    answer did not reach it)."""
    n = b.p_hat.shape[1]
    out: list[BeliefSlot] = []
    for j in range(n - 1):
        out += [("p_hat", j, (slice(None), j)), ("priors", j, (slice(None), j))]
        out += [("after", j, (slice(None), i, j)) for i in range(j)]
        out += [("prefix_q", j, (slice(None), j, k)) for k in range(b.prefix_q.shape[2])]
    return out


def with_lower_beliefs(b: Beliefs) -> tuple[Beliefs, dict[str, np.ndarray]]:
    """A copy of ``b`` whose arrays of ``lower_beliefs`` are its own (to be written in place), and those arrays."""
    arrays = {name: getattr(b, name).copy() for name in ("p_hat", "priors", "after", "prefix_q")}
    return replace(b, **arrays), arrays


def recalibrated(stream: Beliefs, y: np.ndarray, test: Beliefs) -> Beliefs:
    """``test`` with every belief about a lower stage j shifted by the offset that fits it to ``y[:, j]`` on ``stream``
    (an early-exit belief: on the stream tasks whose answer reached its checkpoint)."""
    out, arrays = with_lower_beliefs(test)
    for name, j, ix in lower_beliefs(test):
        fitted = getattr(stream, name)[ix]
        seen = ~np.isnan(fitted)
        belief = arrays[name][ix]  # a view: written in place
        belief[:] = _sigmoid(logit(belief) + offset(y[seen, j], fitted[seen]))  # NaN (no prefix there) stays NaN
    return out


def family(s: Setup, name: str, seed: int, lams: Sequence[float]) -> dict[str, Any]:
    """One family: the test half's sums (correct, the top's correct, compute, the top's compute) per λ, both arms."""
    idx = np.flatnonzero(s.full.family == name)
    stream, test = halves(idx, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    model = fold_fitter(EVIDENCE)(*training_rows(s.data, s.prefixes, name, [], s.full.task), seed)
    ts, tt = s.full.rows(stream), s.full.rows(test)
    static = replay.beliefs(tt, model, s.rule_prices)
    arms = {"static": static, "recalibrated": recalibrated(replay.beliefs(ts, model, s.rule_prices), ts.y, static)}
    c = s.costs["compute"]
    costs = {"compute": UnitCosts(c.full[test], c.at[test], c.saving[test])}
    top = tt.n_stages - 1
    out: dict[str, Any] = {"family": name, "stream": int(len(stream)), "test": int(len(test))}
    for arm, b in arms.items():
        out[arm] = {}
        for lam in lams:
            got = replay.cascade(tt, b, costs, lam, s.opt)
            out[arm][str(lam)] = [int(got.correct.sum()), int(tt.y[:, top].sum()), float(got.spent["compute"].sum()),
                                  float(costs["compute"].full[:, top].sum())]  # fmt: skip
    return out


def pooled(fams: Sequence[dict[str, Any]], lams: Sequence[float]) -> dict[str, list[dict[str, float]]]:
    """Per arm and λ, over every family's test half: points against the top stage and compute against it."""
    tasks = sum(f["test"] for f in fams)
    table: dict[str, list[dict[str, float]]] = {}
    for arm in ("static", "recalibrated"):
        table[arm] = []
        for lam in lams:
            correct, top_correct, compute, top_compute = np.sum([f[arm][str(lam)] for f in fams], axis=0)
            table[arm].append({"lambda": lam, "points_vs_top": round(100 * (correct - top_correct) / tasks, 2),
                               "compute_vs_top": round(float(compute / top_compute), 4)})  # fmt: skip
    return table


def family_args(module: str, doc: str, out: Path, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of a per-family replay (this module, ``training.family_bounds``): data, config, seed, out."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/cpu/collect.jsonl"))
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = family_args("training.family_recalibration", __doc__, OUT_JSON, argv)
    s = setup(a.data, a.config, "checker", None)
    names = sorted(set(s.full.family.tolist()))
    fams = [family(s, name, a.seed, LAMBDAS) for name in tqdm(names, desc="families", unit="family")]
    result = {"labels": "checker, every lower answer of every stream task (a ceiling)", "seed": a.seed,
              "families": len(fams), "test_tasks": sum(f["test"] for f in fams), "pooled": pooled(fams, LAMBDAS),
              "per_family": fams}  # fmt: skip
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["pooled"], indent=1))


if __name__ == "__main__":
    main()
