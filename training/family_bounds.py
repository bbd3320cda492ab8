"""A new family: how far could any adaptation from its first half take the rule on its second? Two upper bounds.

``training.learning_curve`` (refits) and ``training.family_recalibration`` (one offset per belief) learn from a new
family's first half and save little within a point of the top stage. This asks whether anything built on the same
replay could do much better, so that the 1-point / 0.77x target's status rests on measured ceilings, not on one
learner's shortfall. Both bounds use the halves of ``learning_curve.halves`` and the models fitted without the family
(``learning_curve.fold_fitter``), as the other two do, and pool the 21 test halves:

1. **λ per family, chosen in hindsight** (``hindsight``): each family gets the λ (of a sweep, or "always the top
   stage") that is best for it *on its own test half*, and the families' choices are combined by an exact knapsack
   (``knapsack``): the cheapest pooled compute that loses at most a point's worth of tasks against the top stage.
   Every family-level adaptation of the stop rule (its λ, offsets of its beliefs) is a choice among such policies,
   made without seeing the test half, so it does no better. Made on the family's stream half instead (the
   checker's verdicts, the cheapest λ that loses nothing there: ``chosen_on_stream``), it is what one could have.
2. **A better ranking from similar prompts** (``similar``): each belief about a lower stage j is combined with the
   label mean of the test prompt's ``NEIGHBOURS`` most similar prompts among the family's labelled stream tasks
   (TF-IDF of character 3-5-grams, cosine), by a logistic regression fitted on the *other* families' stream halves.
   Two label streams: the **checker** on every lower answer of every stream task (no production has it: a ceiling),
   and **production**'s labels (the model without the family serving at the config's λ: verification labels of
   the requests it escalated, shadow checks at ``SHADOW_RATE`` of the ones it did not). The rule is replayed over
   the sweep: one λ for all families.

Usage: ``python -m training.family_bounds [--config configs/cpu.yaml]`` (``bench/results/family_bounds.json``, ``.png``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training import dataset, replay
from training.family_recalibration import EVIDENCE, family_args, logit, lower_beliefs, with_lower_beliefs
from training.learning_curve import TARGET_COMPUTE, TARGET_POINTS, Setup, fold_fitter, halves, request_labels, setup, training_rows, visits
from training.replay import Beliefs, UnitCosts

OUT_JSON = Path("bench/results/family_bounds.json")
LAMBDAS = tuple(float(x) for x in np.geomspace(100.0, 100_000.0, 40))  # compute unit; cpu.yaml's default is 1911
NEIGHBOURS = 5
SHADOW_RATE = 0.1  # the learning curve's shadow rate


@dataclass
class Family:
    """One family's halves, the beliefs of the model fitted without it on each, and its stream's labels per lower
    stage j: ``labels[source][j] = (positions in the stream half, values)``."""

    name: str
    stream: np.ndarray
    test: np.ndarray
    stream_beliefs: Beliefs
    test_beliefs: Beliefs
    costs: dict[str, UnitCosts]  # the test half's
    labels: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]


def family(s: Setup, name: str, seed: int) -> Family:
    """The family's halves and model (as ``family_recalibration.family``), and both label streams of its first half."""
    idx = np.flatnonzero(s.full.family == name)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    stream, test = halves(idx, rng)
    model = fold_fitter(EVIDENCE)(*training_rows(s.data, s.prefixes, name, [], s.full.task), seed)
    ts, tt = s.full.rows(stream), s.full.rows(test)
    b_stream = replay.beliefs(ts, model, s.rule_prices)
    c = s.costs["compute"]
    n = s.full.n_stages
    lower = range(n - 1)
    checker = {j: (np.arange(len(stream)), s.full.y[stream, j].astype(int)) for j in lower}
    # production: the model without the family serves the stream at the config's λ, with shadow checks
    out, finished, _ = visits(ts, b_stream, {"compute": UnitCosts(c.full[stream], c.at[stream], c.saving[stream])}, s.lam, s.opt)
    got: dict[int, dict[int, int]] = {j: {} for j in lower}
    for pos, task in enumerate(stream.tolist()):
        final = int(out.final[pos])
        shadow = final + 1 < n and bool(rng.random() < SHADOW_RATE)
        for lb in request_labels(task, finished[pos].tolist(), final, n, s.opt.draft_reuse, shadow, s.agree, SHADOW_RATE):
            got[lb.stage][pos] = lb.value
    production = {j: (np.array(sorted(got[j]), dtype=int), np.array([got[j][p] for p in sorted(got[j])], dtype=int)) for j in lower}
    test_costs = {"compute": UnitCosts(c.full[test], c.at[test], c.saving[test])}
    return Family(name, stream, test, b_stream, replay.beliefs(tt, model, s.rule_prices), test_costs,
                  {"checker": checker, "production": production})  # fmt: skip


# -- 1. λ per family, in hindsight ------------------------------------------------------------------------------------


def knapsack(options: Sequence[Sequence[tuple[int, float]]], max_lost: int) -> dict[int, float]:
    """One option ``(tasks lost, cost)`` per group: the least total cost for each total of tasks lost up to
    ``max_lost`` (exact; a loss may be negative, an option that beats the reference)."""
    best: dict[int, float] = {0: 0.0}
    for group in options:
        step: dict[int, float] = {}
        for lost, cost in best.items():
            for more, extra in group:
                total = lost + more
                if total <= max_lost and cost + extra < step.get(total, math.inf):
                    step[total] = cost + extra
        best = step
    return best


def hindsight(s: Setup, fams: Sequence[Family], max_lost: int) -> dict[str, Any]:
    """Bound 1: each family at its own best λ of the sweep (or always the top stage), the choices combined by
    ``knapsack`` within ``max_lost`` tasks; also with no family's gain making up for another's loss."""
    top = s.full.n_stages - 1
    options = []
    for f in fams:
        tt = s.full.rows(f.test)
        top_correct, top_compute = int(tt.y[:, top].sum()), float(f.costs["compute"].full[:, top].sum())
        row = [(0, top_compute)]
        for lam in LAMBDAS:
            got = replay.cascade(tt, f.test_beliefs, f.costs, lam, s.opt)
            row.append((top_correct - int(got.correct.sum()), float(got.spent["compute"].sum())))
        options.append(row)
    top_compute = sum(o[0][1] for o in options)
    tasks = sum(len(f.test) for f in fams)
    out = {}
    for name, opts in (("gains_make_up_for_losses", options), ("no_gain_counted", [[(max(lost, 0), c) for lost, c in o] for o in options])):
        best = knapsack(opts, max_lost)
        lost = min(best, key=lambda k: best[k])
        out[name] = {
            "tasks_lost": lost,
            "points_vs_top": round(-100 * lost / tasks, 2),
            "compute_vs_top": round(best[lost] / top_compute, 4),
        }
    return out


def chosen_on_stream(s: Setup, fams: Sequence[Family]) -> dict[str, Any]:
    """What bound 1 comes to when each family's λ must be chosen without its test half: the cheapest λ of the sweep
    (or always the top stage) that loses no task against the top on its stream half, by the checker (a ceiling on
    the labels), applied to its test half."""
    top = s.full.n_stages - 1
    c = s.costs["compute"]
    correct = top_correct = 0
    compute = top_compute = 0.0
    for f in fams:
        ts, tt = s.full.rows(f.stream), s.full.rows(f.test)
        on_stream = {"compute": UnitCosts(c.full[f.stream], c.at[f.stream], c.saving[f.stream])}
        pick, cheapest = None, float(on_stream["compute"].full[:, top].sum())
        for lam in LAMBDAS:
            got = replay.cascade(ts, f.stream_beliefs, on_stream, lam, s.opt)
            spent = float(got.spent["compute"].sum())
            if int(got.correct.sum()) >= int(ts.y[:, top].sum()) and spent < cheapest:
                pick, cheapest = lam, spent
        top_correct, top_compute = top_correct + int(tt.y[:, top].sum()), top_compute + float(f.costs["compute"].full[:, top].sum())
        if pick is None:
            correct, compute = correct + int(tt.y[:, top].sum()), compute + float(f.costs["compute"].full[:, top].sum())
        else:
            got = replay.cascade(tt, f.test_beliefs, f.costs, pick, s.opt)
            correct, compute = correct + int(got.correct.sum()), compute + float(got.spent["compute"].sum())
    tasks = sum(len(f.test) for f in fams)
    return {"points_vs_top": round(100 * (correct - top_correct) / tasks, 2), "compute_vs_top": round(compute / top_compute, 4)}


# -- 2. similar prompts' labels ----------------------------------------------------------------------------------------


def neighbour_mean(similarity: np.ndarray, labels: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Per query row of ``similarity`` (queries x labelled prompts): the similarity-weighted mean label of its ``k``
    most similar labelled prompts; ``exclude[q]`` is a column the query may not use (itself), -1 for none; NaN
    where no labelled prompt is left."""
    out = np.full(similarity.shape[0], np.nan)
    for q in range(similarity.shape[0]):
        sim = similarity[q].astype(np.float64)
        allowed = np.ones(len(sim), dtype=bool)
        if exclude is not None and exclude[q] >= 0:
            allowed[exclude[q]] = False
        cols = np.flatnonzero(allowed)
        if len(cols) == 0:
            continue
        near = cols[np.argsort(-sim[cols], kind="stable")[:k]]
        w = np.clip(sim[near], 1e-6, None)
        out[q] = float(np.dot(w, labels[near]) / w.sum())
    return out


def similar(s: Setup, fams: Sequence[Family], texts: Sequence[str], source: str) -> dict[str, Beliefs]:
    """Bound 2's beliefs on each test half for the label stream ``source``: every belief about a lower stage combined
    with the neighbours' label mean by a logistic regression fitted on the other families' stream halves (a belief
    stays as it was where the test prompt has no labelled neighbour, or the fit rows have one class)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(texts)  # no labels
    feats: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # (family, j): (stream, test) neighbour means
    for f in fams:
        for j, (pos, y) in f.labels[source].items():
            ref = f.stream[pos]
            on_stream = (x[f.stream] @ x[ref].T).toarray()
            own = np.full(len(f.stream), -1)
            own[pos] = np.arange(len(pos))  # a stream task does not count its own label
            on_test = (x[f.test] @ x[ref].T).toarray()
            feats[f.name, j] = (neighbour_mean(on_stream, y, NEIGHBOURS, own), neighbour_mean(on_test, y, NEIGHBOURS))
    out = {}
    for f in fams:
        out[f.name], arrays = with_lower_beliefs(f.test_beliefs)
        for name, j, ix in lower_beliefs(f.test_beliefs):
            rows, ys = [], []
            for g in fams:
                if g is f:
                    continue
                pos, y = g.labels[source][j]
                belief, near = getattr(g.stream_beliefs, name)[ix][pos], feats[g.name, j][0][pos]
                ok = ~np.isnan(belief) & ~np.isnan(near)
                rows.append(np.c_[logit(belief[ok]), near[ok]])
                ys.append(y[ok])
            xs, y_all = np.concatenate(rows), np.concatenate(ys)
            if len(np.unique(y_all)) < 2:
                continue
            fit = LogisticRegression(C=1.0).fit(xs, y_all)
            belief, near = arrays[name][ix], feats[f.name, j][1]  # a view: written in place
            ok = ~np.isnan(belief) & ~np.isnan(near)
            if ok.any():
                belief[ok] = fit.predict_proba(np.c_[logit(belief[ok]), near[ok]])[:, 1]
    return out


def sweep(s: Setup, fams: Sequence[Family], beliefs: dict[str, Beliefs], lams: Sequence[float]) -> list[dict[str, float]]:
    """One λ for every family: points against the top stage and compute against it, pooled over the test halves."""
    top = s.full.n_stages - 1
    tasks = sum(len(f.test) for f in fams)
    top_correct = sum(int(s.full.y[f.test, top].sum()) for f in fams)
    top_compute = sum(float(f.costs["compute"].full[:, top].sum()) for f in fams)
    points = []
    for lam in lams:
        correct, compute = 0, 0.0
        for f in fams:
            got = replay.cascade(s.full.rows(f.test), beliefs[f.name], f.costs, lam, s.opt)
            correct, compute = correct + int(got.correct.sum()), compute + float(got.spent["compute"].sum())
        points.append({"lambda": round(lam, 1), "points_vs_top": round(100 * (correct - top_correct) / tasks, 2),
                       "compute_vs_top": round(compute / top_compute, 4)})  # fmt: skip
    return points


def ranking(s: Setup, fams: Sequence[Family], beliefs: dict[str, Beliefs]) -> dict[str, float]:
    """How well each lower stage's p̂ ranks its answers on the test halves by the checker's verdict (ROC AUC, pooled)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for j in range(s.full.n_stages - 1):
        y = np.concatenate([s.full.y[f.test, j] for f in fams])
        p = np.concatenate([beliefs[f.name].p_hat[:, j] for f in fams])
        out[f"stage {j}"] = round(float(roc_auc_score(y, p)), 3)
    return out


def summary(points: Sequence[dict[str, float]], default_lam: float) -> dict[str, Any]:
    """The point at the default λ, and the cheapest within ``TARGET_POINTS`` of the top (the best λ of the sweep
    chosen on the test halves: optimistic)."""
    within = [p for p in points if p["points_vs_top"] >= -TARGET_POINTS]
    return {"at_default": next(p for p in points if p["lambda"] == round(default_lam, 1)),
            "cheapest_within": min(within, key=lambda p: p["compute_vs_top"]) if within else None, "sweep": list(points)}  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """The arms' frontiers over the λ sweep (quality and compute against the top stage), the target's corner, and
    the per-family λ points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, arm in result["arms"].items():
        pts = sorted(arm["sweep"], key=lambda p: p["compute_vs_top"])
        line = ax.plot([p["compute_vs_top"] for p in pts], [p["points_vs_top"] for p in pts], marker=".", label=f"one λ: {name}")
        ax.plot(arm["at_default"]["compute_vs_top"], arm["at_default"]["points_vs_top"], "o", color=line[0].get_color(), mfc="none", ms=10)
    tasks = result["test_tasks"]
    hindsight = result["hindsight_lambda_per_family"]
    marks = [(hindsight["gains_make_up_for_losses"], "*", "λ per family, in hindsight"),
             (hindsight["no_gain_counted"], "P", "λ per family, in hindsight, no gain counted"),
             (result["lambda_per_family_chosen_on_the_stream_half"], "X", "λ per family, chosen on the stream half")]  # fmt: skip
    for p, marker, label in marks:
        ax.plot(p["compute_vs_top"], p["points_vs_top"], marker, ms=11, label=label)
    ax.axhline(-TARGET_POINTS, color="green", ls=":", label=f"target: within {TARGET_POINTS:g} point at ≤ {TARGET_COMPUTE:g}x")
    ax.axvline(TARGET_COMPUTE, color="green", ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("compute vs the top stage alone (pooled test halves)")
    ax.set_ylabel("quality vs the top stage (points)")
    ax.set_ylim(-12, 3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(
        f"a new family's ceilings: {result['families']} families, {tasks} test tasks (ring: λ {result['default_lambda']:g})", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    a = family_args("training.family_bounds", __doc__, OUT_JSON, argv)
    s = setup(a.data, a.config, "agreement", None)
    names = sorted(set(s.full.family.tolist()))
    fams = [family(s, name, a.seed) for name in tqdm(names, desc="families", unit="family")]
    tasks = sum(len(f.test) for f in fams)
    prompts = {r["task"]: "\n".join(r["prompt_texts"]) for r in dataset.read_rows(a.data)}
    texts = [prompts[str(t)] for t in s.full.task]
    lams = sorted({*LAMBDAS, s.lam})
    arms = {"static": {f.name: f.test_beliefs for f in fams}}
    for source in tqdm(("checker", "production"), desc="similar prompts", unit="label stream"):
        arms[f"similar, {source} labels"] = similar(s, fams, texts, source)
    result: dict[str, Any] = {
        "seed": a.seed, "families": len(fams), "test_tasks": tasks, "default_lambda": s.lam, "neighbours": NEIGHBOURS,
        "shadow_rate": SHADOW_RATE, "within_points": TARGET_POINTS,
        "production_labels": {f"stage {j}": sum(len(f.labels["production"][j][0]) for f in fams) for j in range(s.full.n_stages - 1)},
        "hindsight_lambda_per_family": hindsight(s, fams, int(TARGET_POINTS / 100 * tasks)),
        "lambda_per_family_chosen_on_the_stream_half": chosen_on_stream(s, fams),
        "arms": {name: {"auc": ranking(s, fams, b), **summary(sweep(s, fams, b, lams), s.lam)}
                 for name, b in tqdm(arms.items(), desc="replay", unit="arm")},
    }  # fmt: skip
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, a.out.with_suffix(".png"))
    print(json.dumps({k: ({n: {key: v[key] for key in ("auc", "at_default", "cheapest_within")} for n, v in result["arms"].items()}
                          if k == "arms" else v) for k, v in result.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
