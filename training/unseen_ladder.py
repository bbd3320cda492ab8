"""A ladder it has never seen, replayed: no trained model, no collection, only its own traffic to learn from.

What a user of a new ladder (vLLM stages on GPUs, say) starts with is ``predictor.kind: baseline``: hand-set
mean-logprob coefficients and priors, the rule running safe (``cascade.untrained_lambda_scale``, shadow checks at
``cascade.shadow.untrained_rate``), the traffic log on and ``training learn --data none`` promoting the first
model learned from the log alone. This replays that on the CPU ladder's collection, the same way for every arm:

1. **Traffic**: the train split, shuffled (seeded), one request at a time through the router's rule
   (``replay.cascade``) with the model in service: first the config's baseline (``default_lambda``, scaled while
   it serves), then each promoted model at the λ its table gives ``cascade.default_target`` (``tour_lambda``).
   Each request yields what the traffic log would hold: every answer
   the cascade finished, labelled as production labels it (``learning_curve.request_labels``: verification of
   each escalated answer by the next stage that answered, a shadow check of the returned one at the rate in
   force), and the top stage's own answer as the reference (``label(..., reference=True)``: 1). A request drawn
   for a **tour** (``cascade.explore``: its rate, or its untrained rate while the baseline serves) asks every
   stage in order, each verifying the one below, and returns the top's answer: a label for every lower stage.
2. **Learning**: every ``learn_every`` requests, the learner's round on the log so far, with no collection: a
   candidate fitted on the older logged answers (splits by task id, as the traffic log assigns them), promoted
   only if its log-loss on the newest 20 % beats the model in service's (``learn.DEFAULT_MIN_EVAL`` of them at
   least) and, on the tours so far outside the train split, its replayed cost at matched quality is no more than
   ``cost_margin`` over the served model's (``calibrate.matched_cost``); its λ table comes from the same tours,
   accuracy being agreement with the top stage (``training.learn``, ``calibrate.tour_table``).
3. **Test**: the collection's test split, replayed with the model in service after each round, against the top
   stage alone and the shipped model (trained offline on the whole collection's train split with checkers) on the
   same tasks: quality (the checker's verdict, top-stage agreement for open prompts) and compute (2 x parameters
   x tokens, ``prices.compute``).

Targets (issue 22): quality within 1 point of the top stage and compute within 10 % of the shipped model's; the
result says after how many requests the model in service first met both, at the λ it serves with. The label a new
ladder learns from is agreement with a higher stage, so its λ comes from a target in agreement (the tours' table),
not from the shipped model's λ; the **frontiers** (both models on the test split over ``LAMBDAS``, the rule
alone: no tours) show what each λ gives, and ``best_within_target`` the learned model's cheapest point within 1
point (a λ production cannot pick without a checker).

Differences from a live run (stated in the JSON): verification agreement with a non-top verifier is estimated from
the collected texts (``reuse.replay``); a shadow check's draft tokens are the answering stage's; the collection
has no tool-call or JSON tasks (no validity labels).

Usage: ``python -m training.unseen_ladder [--config configs/cpu-learn.yaml] [--learn-every 50] [--orders 6] [--shadow 0.3]``
(bench/results/unseen_ladder.json and .png; with ``--orders`` the JSON's ``orders`` has where the same replay ended with
the traffic in other orders, and the medians: ``across_orders``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings, load_settings
from predictor.serving.calibration import LambdaTable
from predictor.serving.loader import baseline_predictor
from predictor.serving.rows import split_of
from predictor.serving.runtime import OnnxPredictor
from training import calibrate, dataset, learn, replay
from training.learning_curve import Agreement, Label, figures, labelled_rows, request_labels, shadow_cost, visits
from training.replay import BaselineBatch, BatchPredictor, Options, Table

OUT_JSON = Path("bench/results/unseen_ladder.json")
OUT_PNG = Path("bench/results/unseen_ladder.png")
CONFIG = Path("configs/cpu-learn.yaml")
SHIPPED = Path("predictor/models/cpu")
SHIPPED_CONFIG = Path("configs/cpu.yaml")  # the shipped model's λ
TARGET_POINTS = 1.0  # within this many points of the top stage
TARGET_VS_SHIPPED = 1.10  # compute at most this multiple of the shipped model's
LAMBDAS = (100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0, 600.0, 892.0, 1500.0)  # the frontiers' sweep (compute unit)
DIFFERENCES = [
    "verification agreement with a non-top verifier is estimated from the collected texts (reuse.replay), not scored",
    "a shadow check's draft tokens are the answering stage's output tokens (the verifier's tokenizer may differ)",
    "no validity labels: the collection has no tool-call or JSON-schema tasks",
]


@dataclass
class Setup:
    settings: Settings
    full: Table
    costs: replay.UnitCosts  # compute
    rule_prices: list[Any]
    prompt_prices: list[float]
    data: dataset.Dataset
    prefixes: dataset.Prefixes
    agree: Agreement
    lam: float
    opt: Options


def setup(data_path: Path, config: Path) -> Setup:
    from training import train
    from training.tasks import registry

    settings = load_settings(config)
    prices = replay.prices_of(settings)
    full = replay.table(data_path, train.CHECKPOINTS, {t.id: t.max_tokens for t in registry.build("mix")})
    rows = {r["task"]: r for r in dataset.read_rows(data_path)}
    return Setup(settings, full, replay.unit_costs(full, "compute", prices["compute"]),
                 [st.price(settings.cascade.cost_unit) for st in settings.stages], [p.prompt_token for p in prices["compute"]],
                 dataset.load(data_path), dataset.prefixes(data_path, train.CHECKPOINTS),
                 Agreement(rows, full.task, full.n_stages, "agreement"), settings.cascade.default_lambda, Options.of(settings))  # fmt: skip


def test_point(s: Setup, test: np.ndarray, model: BatchPredictor, lam: float, tour: float = 0.0) -> dict[str, Any]:
    """The test split replayed with ``model`` at ``lam``; with ``tour`` (the exploration rate in force), in
    expectation over which requests tour: a touring one gets the top's answer and pays every stage's."""
    t = s.full.rows(test)
    costs = {"compute": replay.UnitCosts(s.costs.full[test], s.costs.at[test], s.costs.saving[test])}
    out = replay.cascade(t, replay.beliefs(t, model, s.rule_prices), costs, lam, s.opt)
    top = t.n_stages - 1
    correct = (1 - tour) * out.correct.sum() + tour * t.y[:, top].sum()
    compute = (1 - tour) * out.spent["compute"].sum() + tour * costs["compute"].full.sum()
    return {"tasks": int(len(t.y)), "correct": float(correct), "top_correct": int(t.y[:, top].sum()), "compute": float(compute),
            "top_compute": float(costs["compute"].full[:, top].sum()), "tour": tour,
            "stops": [int((out.final == k).sum()) for k in range(t.n_stages)]}  # fmt: skip


def _logged_split(task: str) -> str:
    """A logged row's split: the traffic log draws it from the row's id (``split_of``), independent of the
    collection's split (which is the same function of the task id: every traffic task would be "train")."""
    return split_of(f"traffic/{task}")


def held_tours(s: Setup, tours: Sequence[int]) -> tuple[Table | None, str]:
    """The replay's ``calibrate.held_tours``: the requests that toured so far outside the train split (as the
    traffic log draws it), labelled by agreement with the top stage; None with fewer than ``calibrate.tours_needed``."""
    held = [i for i in tours if _logged_split(str(s.full.task[i])) != "train"]
    needed = calibrate.tours_needed(s.settings)
    if len(held) < needed:
        return None, f"{len(held)} tours outside the train split, {needed} needed"
    t = s.full.rows(np.array(held))
    top = t.n_stages - 1
    t.y = np.array([[1 if j == top else s.agree(i, j, top) for j in range(t.n_stages)] for i in held])
    return t, f"{len(held)} tours outside the train split"


def tour_lambda(s: Setup, held: Table | None, model: BatchPredictor) -> tuple[float, bool]:
    """The λ a router on ``s``'s config serves a promoted ``model`` with: ``cascade.default_target`` in the λ table of
    the held tours (the learner's ``calibrate.tour_table``), else ``default_lambda`` (``calibrate.lambda_in_force``);
    and whether it is the target's (until it is, requests tour at the untrained rate, as the router does)."""
    table = LambdaTable.of(calibrate.tour_table(held, model, s.settings)) if held is not None else None
    return calibrate.lambda_in_force(table, s.settings)


def _log_loss(model: BatchPredictor, x: np.ndarray, y: np.ndarray) -> float:
    from training.train import _log_loss as ll

    return float(ll(y.astype(np.float64), model.predict_batch(x)))


def run(data_path: Path = Path("data/cpu/collect.jsonl"), config: Path = CONFIG, shipped: Path = SHIPPED,
        learn_every: int = 50, seed: int = 0, out_json: Path | None = OUT_JSON, out_png: Path | None = OUT_PNG,
        progress: bool = True, limit: int | None = None, tour: float | None = None, tour_untrained: float | None = None,
        lambdas: Sequence[float] = LAMBDAS, cost_margin: float = learn.DEFAULT_COST_MARGIN,
        shadow_rate: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole replay (module docstring); the JSON-ready result. ``tour``, ``tour_untrained`` and ``shadow_rate``
    stand in for the config's ``cascade.explore`` rates and ``cascade.shadow.rate`` (None: the config's)."""
    from tqdm import tqdm

    from training import train

    t0 = time.perf_counter()
    s = setup(data_path, config)
    n, top = s.full.n_stages, s.full.n_stages - 1
    if s.settings.predictor.kind != "baseline":
        raise ValueError(f"{config} serves a trained model: a new ladder starts with predictor.kind: baseline")
    baseline = baseline_predictor(s.settings)  # what serves until the first promotion (not a registry's version)
    rng = np.random.default_rng(seed)
    traffic = np.flatnonzero(s.full.split == "train")
    traffic = traffic[rng.permutation(len(traffic))][:limit]
    test = np.flatnonzero(s.full.split == "test")
    shadow = s.settings.cascade.shadow
    if shadow_rate is not None:
        shadow = shadow.model_copy(update={"rate": shadow_rate})
    untrained_rate = shadow.rate if shadow.untrained_rate is None else shadow.untrained_rate
    scale = s.settings.cascade.untrained_lambda_scale
    explore = s.settings.cascade.explore
    tour = explore.rate if tour is None else tour
    if tour_untrained is None:
        tour_untrained = explore.rate if explore.untrained_rate is None else explore.untrained_rate

    model: BatchPredictor = BaselineBatch(baseline)
    trained, version, lam_served, resolved = False, "baseline", s.lam, False
    shipped_model = OnnxPredictor.load(shipped)
    shipped_lam = load_settings(SHIPPED_CONFIG).cascade.default_lambda
    target = s.settings.cascade.default_target
    shipped_point = test_point(s, test, shipped_model, shipped_lam)
    curve: list[dict[str, Any]] = [
        {"seen": 0, "version": version, "labels": 0, **test_point(s, test, model, s.lam * scale, tour_untrained)}
    ]
    labels: list[Label] = []
    tours: list[int] = []  # the traffic requests that toured: a new ladder's λ table comes from them
    stamps: list[int] = []  # the request index each label came from: "time" in the log
    rounds: list[dict[str, Any]] = []
    trained_until = -1
    spent = {"compute": 0.0, "top_compute": 0.0, "shadow_compute": 0.0, "correct": 0, "shadow_checks": 0, "tours": 0,
             "tour_compute": 0.0}  # fmt: skip
    one = {"compute": s.costs}
    for k, i in enumerate(tqdm(traffic.tolist(), disable=not progress, unit="request", desc="traffic")):
        sel = np.array([i])
        t = s.full.rows(sel)
        lam = lam_served if trained else s.lam * scale
        rate = shadow.rate if trained else untrained_rate
        toured = bool(rng.random() < (tour if trained and resolved else tour_untrained))
        if toured:  # every stage in order, each verifying the one below; the top's answer returned
            final, correct, cost, drawn = top, int(s.full.y[i, top]), float(s.costs.full[i].sum()), False
            got = request_labels(i, [True] * n, top, n, True, False, s.agree)
            spent["tours"] += 1
            tours.append(i)
            spent["tour_compute"] += cost - float(s.costs.full[i, top])
        else:
            costs = {u: replay.UnitCosts(c.full[sel], c.at[sel], c.saving[sel]) for u, c in one.items()}
            out, finished, _ = visits(t, replay.beliefs(t, model, s.rule_prices), costs, lam, s.opt)
            final, correct, cost = int(out.final[0]), int(out.correct[0]), float(out.spent["compute"][0])
            drawn = rate > 0 and final + 1 < n and bool(rng.random() < rate)
            got = request_labels(i, finished[0].tolist(), final, n, s.opt.draft_reuse, drawn, s.agree, rate or 1.0)
        if final == top:
            got.append(Label(i, top, 1, "reference", top))
        labels += got
        stamps += [k] * len(got)
        spent["compute"] += cost
        spent["top_compute"] += float(s.costs.full[i, top])
        spent["correct"] += correct
        if drawn:
            spent["shadow_checks"] += 1
            spent["shadow_compute"] += shadow_cost(s.full, i, final, s.prompt_prices)
        if (k + 1) % learn_every:
            continue
        # the learner's round on the log so far (training.learn): the newest 20 % decide, the rest train
        # (the top stage's reference labels are 1 by definition: they neither decide nor count toward the holdout)
        judged = [k for k, lb in enumerate(labels) if lb.source != "reference"]
        cut = judged[learn.holdout_start(len(judged))] if judged else len(labels)
        newest = [lb for lb, at in zip(labels[cut:], stamps[cut:], strict=True) if at > trained_until and lb.source != "reference"]
        record: dict[str, Any] = {"seen": k + 1, "labels": len(labels), "evaluation": len(newest), "promoted": False}
        rounds.append(record)
        if len(newest) < learn.DEFAULT_MIN_EVAL:
            record["reason"] = f"{len(newest)} unseen labels, {learn.DEFAULT_MIN_EVAL} needed"
            continue
        d, p = labelled_rows(s.data, s.prefixes, labels[:cut], s.full.task, _logged_split)
        try:
            cand = train.FoldPredictor(d, p, seed)
        except (RuntimeError, ValueError) as exc:  # a split with one class, no pairs yet: not enough log
            record["reason"] = f"no candidate: {exc}"
            continue
        x = np.stack([s.full.x[lb.task, lb.stage] for lb in newest])
        y = np.array([lb.value for lb in newest])
        mine, theirs = _log_loss(cand, x, y), _log_loss(model, x, y)
        record["log_loss"] = {"candidate": round(mine, 4), version: round(theirs, 4)}
        held, why = held_tours(s, tours)
        record["tours"] = why
        better = mine < theirs
        if better and held is not None:  # the learner's second test: no dearer at the matched quality, replayed
            replayed = calibrate.matched_cost(held, model, lam_served if trained else s.lam * scale, cand, s.settings)
            record["replayed"] = replayed
            better = calibrate.cheaper(replayed, cost_margin)
        if not better and not (trained and not resolved and held is not None):
            continue
        # promoted, or (the learner's ``_recalibrated``) the served model, tableless, gets its table from the tours
        version = f"v{sum(r['promoted'] for r in rounds) + 1:04d}"
        if better:
            model, trained, trained_until = cand, True, stamps[cut - 1]
        lam_served, resolved = tour_lambda(s, held, model)
        record.update(promoted=True, version=version, recalibrated=not better, **{"lambda": lam_served, "target_resolved": resolved})
        priors = model.prior_batch(s.full.prior_x[test].reshape(-1, s.full.prior_x.shape[-1])).reshape(len(test), n)
        curve.append({"seen": k + 1, "version": version, "labels": len(labels), "lambda": lam_served,
                      **test_point(s, test, model, lam_served, tour if resolved else tour_untrained),
                      "mean_prior": [round(float(v), 3) for v in priors.mean(axis=0)]})  # fmt: skip
    top_point = curve[0]
    result = {
        "config": {
            "data": data_path.name,
            "config": str(config),
            "shipped": str(shipped),
            "learn_every": learn_every,
            "tour": tour,
            "tour_untrained": tour_untrained,
            "seed": seed,
            "lam": s.lam,
            "default_target": target.model_dump(exclude_none=True) if target else None,
            "shipped_lam": shipped_lam,
            "untrained_lambda_scale": scale,
            "shadow_rate": shadow.rate,
            "shadow_untrained_rate": untrained_rate,
            "traffic": int(len(traffic)),
            "test": int(len(test)),
        },  # fmt: skip
        "differences_from_live": DIFFERENCES,
        "traffic": {
            **spent,
            "requests": int(len(traffic)),
            "labels": len(labels),
            "labels_by_source": {src: sum(lb.source == src for lb in labels) for src in ("verification", "shadow", "reference")},
            "compute_vs_top": spent["compute"] / spent["top_compute"],
            "shadow_compute_vs_top": spent["shadow_compute"] / spent["top_compute"],
            "tour_compute_vs_top": spent["tour_compute"] / spent["top_compute"],
        },  # fmt: skip
        "rounds": rounds,
        "curve": [c | _vs(c, shipped_point) for c in curve],
        "shipped": shipped_point | figures(shipped_point),
        "top_quality": top_point["top_correct"] / top_point["tasks"],
    }
    met = [c for c in result["curve"] if c["points_below_top"] <= TARGET_POINTS and c["compute_vs_shipped"] <= TARGET_VS_SHIPPED]
    result["targets"] = {"within_points": TARGET_POINTS, "compute_vs_shipped": TARGET_VS_SHIPPED,
                         "met": bool(met) and met[-1] is result["curve"][-1],
                         "first_requests_seen_meeting_both": met[0]["seen"] if met else None}  # fmt: skip
    result["frontiers"] = {name: [_frontier_point(s, test, m, lam, shipped_point) for lam in lambdas]
                           for name, m in (("learned", model), ("shipped", shipped_model))}  # fmt: skip
    within = [p for p in result["frontiers"]["learned"] if p["points_below_top"] <= TARGET_POINTS]
    result["best_within_target"] = min(within, key=lambda p: p["compute"]) if within else None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=1) + "\n")
    if out_png is not None:
        plot(result, out_png)
    return result


def _served(result: dict[str, Any]) -> dict[str, Any]:
    """One replay's end: the model in service after the traffic, at the λ it serves with, and the learned frontier's
    cheapest point within the target (``best_within_target``)."""
    last, best = result["curve"][-1], result["best_within_target"]
    keys = ("points_below_top", "compute_vs_top", "compute_vs_shipped")
    return {"seed": result["config"]["seed"], "version": last["version"], "lambda": last.get("lambda"),
            **{k: round(last[k], 4) for k in keys}, "met": result["targets"]["met"],
            "traffic_compute_vs_top": round(result["traffic"]["compute_vs_top"], 4),
            "best_within_target": None if best is None else {"lambda": best["lambda"], **{k: round(best[k], 4) for k in keys}}}  # fmt: skip


def across_orders(first: dict[str, Any], seeds: Sequence[int], progress: bool = True, **kw: Any) -> dict[str, Any]:
    """``first`` (a ``run``'s result) and the same replay with the traffic in other orders (``seeds``): where each
    ended and the medians. One order is one draw: which requests tour, and so the tours a λ table rests on (about 115
    outside the train split), and which candidates the learner sees, move the served point by a point of quality
    or more (each test task is 0.6 points)."""
    from tqdm import tqdm

    ends = [_served(first)]
    for seed in tqdm(seeds, disable=not progress, unit="order", desc="traffic orders"):
        ends.append(_served(run(**kw, seed=seed, out_json=None, out_png=None, progress=False)))
    best = [e["best_within_target"] for e in ends if e["best_within_target"] is not None]
    median = {k: float(np.median([e[k] for e in ends])) for k in ("points_below_top", "compute_vs_top", "compute_vs_shipped")}
    return {"orders": len(ends), "ends": ends, "median": median, "met": sum(e["met"] for e in ends),
            "within_points": sum(e["points_below_top"] <= TARGET_POINTS for e in ends),
            "within_compute": sum(e["compute_vs_shipped"] <= TARGET_VS_SHIPPED for e in ends),
            "best_within_target_median_vs_shipped": float(np.median([b["compute_vs_shipped"] for b in best])) if best
            else None}  # fmt: skip


def _frontier_point(s: Setup, test: np.ndarray, model: BatchPredictor, lam: float, shipped: dict[str, Any]) -> dict[str, Any]:
    point = test_point(s, test, model, lam)
    return {"lambda": lam} | point | _vs(point, shipped)


def _vs(point: dict[str, Any], shipped: dict[str, Any]) -> dict[str, float]:
    return figures(point) | {"compute_vs_shipped": point["compute"] / shipped["compute"]}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, sh = result["curve"], result["shipped"]
    seen = [p["seen"] for p in c] + [result["traffic"]["requests"]]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    axes[0].step(seen, [-p["points_below_top"] for p in c] + [-c[-1]["points_below_top"]], where="post", label="model in service")
    axes[0].axhline(-sh["points_below_top"], color="purple", ls="--", label="shipped model (offline, checkers)")
    axes[0].axhline(-TARGET_POINTS, color="green", ls=":", label=f"target: within {TARGET_POINTS:g} point")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("test-split quality vs the top stage (points)")
    axes[1].step(seen, [p["compute_vs_top"] for p in c] + [c[-1]["compute_vs_top"]], where="post", label="model in service")
    axes[1].axhline(sh["compute_vs_top"], color="purple", ls="--", label="shipped model")
    axes[1].axhline(
        sh["compute_vs_top"] * TARGET_VS_SHIPPED, color="green", ls=":", label=f"target: {TARGET_VS_SHIPPED:g}x the shipped model"
    )
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_ylabel("test-split compute vs the top stage alone")
    for name, pts in result.get("frontiers", {}).items():
        axes[2].plot([p["compute_vs_top"] for p in pts], [-p["points_below_top"] for p in pts], marker="o", label=f"{name} model, λ swept")
    axes[2].axhline(-TARGET_POINTS, color="green", ls=":")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_xlabel("test-split compute vs the top stage alone")
    axes[2].set_ylabel("quality vs the top stage (points)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xlabel("requests of traffic seen (train split)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    cfg = result["config"]
    fig.suptitle(f"a new ladder learning from its own traffic: {cfg['traffic']} requests, a learning round every "
                 f"{cfg['learn_every']}, {cfg['test']} test tasks; λ: the default target {cfg.get('default_target')} on the tours, "
                 f"{cfg['lam']:g} until it is resolved", fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.unseen_ladder", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/cpu/collect.jsonl"))
    ap.add_argument("--config", type=Path, default=CONFIG, help="a ladder config with predictor.kind: baseline")
    ap.add_argument("--shipped", type=Path, default=SHIPPED, help="the offline-trained model to compare with")
    ap.add_argument("--learn-every", type=int, default=50, help="a learning round after this many requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tour", type=float, default=None, help="cascade.explore.rate (default: the config's)")
    ap.add_argument("--tour-untrained", type=float, default=None, help="cascade.explore.untrained_rate (default: the config's)")
    ap.add_argument("--shadow", type=float, default=None, help="cascade.shadow.rate (default: the config's)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many traffic requests")
    ap.add_argument("--cost-margin", type=float, default=learn.DEFAULT_COST_MARGIN, help="the learner's --cost-margin")
    ap.add_argument("--orders", type=int, default=1, help="replay the traffic in this many orders (seeds from --seed on)")
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--png", type=Path, default=OUT_PNG)
    a = ap.parse_args(argv)
    kw: dict[str, Any] = dict(data_path=a.data, config=a.config, shipped=a.shipped, learn_every=a.learn_every, limit=a.limit,
                              tour=a.tour, tour_untrained=a.tour_untrained, cost_margin=a.cost_margin, shadow_rate=a.shadow)  # fmt: skip
    res = run(**kw, seed=a.seed, out_json=None if a.orders > 1 else a.out, out_png=a.png)
    if a.orders > 1:  # the JSON once, with where every order ended
        res["orders"] = across_orders(res, range(a.seed + 1, a.seed + a.orders), **kw)
        if a.out is not None:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("traffic", "shipped", "targets")} | {"last": res["curve"][-1]}, indent=1))
    if "orders" in res:
        print(json.dumps({k: v for k, v in res["orders"].items() if k != "ends"}, indent=1))


if __name__ == "__main__":
    main()
