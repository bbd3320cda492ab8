"""The cost/quality frontier, judged as a user with new prompts would see it.

Two evaluations, on the same replay (``training.replay``) and the same cache of answers:

* **held-out**: the shipped predictor (trained on the training split) on the test split's tasks;
* **leave-one-family-out** (LOFO): for each task family in turn, all four models are refitted without it
  (``train.FoldPredictor``) and the family's tasks are routed by that fold's models; the outcomes of every
  family are pooled. This is what a user whose prompts are unlike the training tasks gets.

Each is reported in both cost units (compute: 2 x parameters x tokens; seconds: measured on this machine),
against every baseline on the same tasks: each stage alone, the top stage with speculative decoding from the
stage below it on every request, random mixing at matched cost, the mean-logprob threshold cascade (FrugalGPT
/ AutoMix style, thresholds tuned on validation), the prompt-only router on the same priors (RouteLLM style),
the oracle; and ours with each part switched off in turn (early exit, draft reuse, prior skipping, beliefs
after an answer). The rule prices stages in the config's ``cascade.cost_unit``, exactly as the router does.

Quality must not fall as λ rises: ``monotonicity`` checks ours on the validation split over the λ sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings, TokenPrices
from training import dataset, replay, reuse
from training.replay import UNITS, Beliefs, Options, Outcome, Table, UnitCosts

LAMBDA_STEPS = 41
OURS = "ours"
VARIANTS: dict[str, Options] = {
    OURS: Options(),
    "ours, no early exit": Options(early_exit=False),
    "ours, no draft reuse": Options(draft_reuse=False),
    "ours, no skipping": Options(skip=False),
    "ours, prompt-only beliefs": Options(beliefs_after=False),
}
BASELINES = ("prompt-only router", "threshold cascade", "random")
_THRESHOLD_QUANTILES = np.linspace(0.0, 1.0, 9).tolist() + [math.inf]


def lambdas(b: Beliefs, t: Table) -> list[float]:
    """The λ sweep, in the rule's unit: from a tenth of the cheapest stage's typical cost to 300x the top stage's."""
    lo = float(np.median(b.rule_cost[:, 0])) * 0.1
    hi = float(np.median(b.rule_cost[:, t.n_stages - 1])) * 300
    return [float(x) for x in np.geomspace(lo, hi, LAMBDA_STEPS)]


@dataclass
class Context:
    """What every evaluation of one collection shares."""

    settings: Settings
    full: Table
    costs: dict[str, UnitCosts]
    prices: dict[str, list[TokenPrices]]
    rule_prices: list[TokenPrices]
    rates: list[reuse.StageRates]
    lambdas: list[float]
    opt: Options


def outcomes(ctx: Context, sel: np.ndarray, b: Beliefs, val_sel: np.ndarray) -> dict[tuple[str, float | None], Outcome]:
    """Every policy's outcome on the tasks ``sel`` (beliefs ``b`` for exactly those), thresholds tuned on ``val_sel``."""
    t = ctx.full.rows(sel)
    costs = {u: _rows(c, sel) for u, c in ctx.costs.items()}
    out: dict[tuple[str, float | None], Outcome] = {}
    for s in range(t.n_stages):
        out[(f"stage {s}", None)] = replay.single(t, costs, s)
    for u in UNITS:
        out[(f"oracle ({u})", None)] = replay.oracle(t, costs, u)
    out[("speculative decoding", None)] = replay.speculative(t, costs, ctx.prices, ctx.rates)
    val = ctx.full.rows(val_sel)
    # thresholds at quantiles of the validation tasks' mean logprob per stage (so that folds pool by quantile)
    grid = itertools.product(_THRESHOLD_QUANTILES, repeat=t.n_stages - 1)
    for k, qs in enumerate(grid):
        th = [_quantile(val.x[:, s, replay._MEAN], q) for s, q in enumerate(qs)]
        out[("threshold cascade", float(k))] = replay.threshold_cascade(t, costs, th)
    for lam in ctx.lambdas:
        out[("prompt-only router", lam)] = replay.prompt_router(t, b, costs, lam)
        for name, opt in VARIANTS.items():
            o = dataclasses.replace(ctx.opt, skip=opt.skip, beliefs_after=opt.beliefs_after, early_exit=opt.early_exit,
                                    draft_reuse=opt.draft_reuse)  # fmt: skip
            out[(name, lam)] = replay.cascade(t, b, costs, lam, o)
    return out


def _quantile(v: np.ndarray, q: float) -> float:
    return math.inf if q == math.inf else float(np.quantile(v, q))


def _rows(c: UnitCosts, sel: np.ndarray) -> UnitCosts:
    return UnitCosts(c.full[sel], c.at[sel], c.saving[sel])


def pool(parts: Sequence[dict[tuple[str, float | None], Outcome]]) -> dict[tuple[str, float | None], Outcome]:
    """Concatenate the per-family outcomes of each (policy, knob) found in every part."""
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    out = {}
    for k in keys:
        os_ = [p[k] for p in parts]
        out[k] = Outcome(np.concatenate([o.final for o in os_]), np.concatenate([o.correct for o in os_]),
                         {u: np.concatenate([o.spent[u] for o in os_]) for u in os_[0].spent},
                         np.concatenate([o.calls for o in os_]), np.concatenate([o.aborts for o in os_]))  # fmt: skip
    return out


def frontier(points: list[dict[str, Any]], unit: str) -> list[dict[str, Any]]:
    """Points not dominated on (lower cost in ``unit``, higher quality)."""
    out, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[f"cost_{unit}"], -p["quality"])):
        if p["quality"] > best + 1e-12:
            out.append(p)
            best = p["quality"]
    return out


def _best_at(front: list[dict[str, Any]], unit: str, c: float) -> float | None:
    """The frontier's best quality at cost <= c (None below its cheapest point)."""
    q = [p["quality"] for p in front if p[f"cost_{unit}"] <= c + 1e-12]
    return max(q) if q else None


def report(outs: dict[tuple[str, float | None], Outcome], unit_list: Sequence[str], default_lambda: float, n_tasks: int) -> dict[str, Any]:
    """Frontiers per unit and policy, the λ sweep of ours, the default point, the targets."""
    points = {k: o.point(k[0], k[1]) for k, o in outs.items()}
    n_stages = sum(1 for k in outs if k[0].startswith("stage "))
    singles = [points[(f"stage {s}", None)] for s in range(n_stages)]
    res: dict[str, Any] = {"tasks": n_tasks, "singles": singles, "speculative decoding": points[("speculative decoding", None)],
                           "oracle": {u: points[(f"oracle ({u})", None)] for u in unit_list}, "units": {}}  # fmt: skip
    sweep = sorted((p for (name, _), p in points.items() if name == OURS), key=lambda p: p["knob"])
    res["lambda_sweep"] = sweep
    lam_default = min(sweep, key=lambda p: abs(math.log(p["knob"] / default_lambda)))["knob"] if sweep else None
    res["default"] = next((p for p in sweep if p["knob"] == lam_default), None)
    for u in unit_list:
        by_policy: dict[str, list[dict[str, Any]]] = {}
        for (name, _), p in points.items():
            if name in VARIANTS or name in ("prompt-only router", "threshold cascade"):
                by_policy.setdefault(name, []).append(p)
        fronts = {name: frontier(pts, u) for name, pts in by_policy.items()}
        ours_costs = [p[f"cost_{u}"] for p in fronts[OURS]]
        fronts["random"] = frontier(replay.random_mix(singles, u, ours_costs), u)
        res["units"][u] = {"frontiers": fronts, "targets": targets(res, fronts, u)}
    return res


def targets(res: dict[str, Any], fronts: dict[str, list[dict[str, Any]]], unit: str) -> dict[str, Any]:
    """The issue's targets in ``unit``: ours within 1 point of the top stage at what share of its cost; the margin over
    each baseline at matched cost (mean over the cost range where both exist); the default λ's quality gap."""
    top = res["singles"][-1]
    key = f"cost_{unit}"
    near = [p for p in fronts[OURS] if p["quality"] >= top["quality"] - 0.01]
    cheapest = min(near, key=lambda p: p[key]) if near else None
    margins = {}
    for name in BASELINES:
        other = fronts.get(name) or []
        if not other or not fronts[OURS]:
            continue
        lo = max(fronts[OURS][0][key], other[0][key])
        hi = min(fronts[OURS][-1][key], other[-1][key])
        if hi <= lo:
            continue
        grid = np.linspace(lo, hi, 50)
        diffs = [(_best_at(fronts[OURS], unit, c) or 0.0) - (_best_at(other, unit, c) or 0.0) for c in grid]
        differ = [d for d in diffs if abs(d) > 1e-9]
        margins[name] = {"mean_points": 100 * float(np.mean(differ)) if differ else 0.0, "min_points": 100 * float(min(diffs)),
                         "cost_range": [float(lo), float(hi)]}  # fmt: skip
    d = res.get("default")
    return {
        "top_quality": top["quality"],
        "top_cost": top[key],
        "ours_best_quality": max(p["quality"] for p in fronts[OURS]),
        "ours_cheapest_within_1pt": cheapest,
        "cost_vs_top_within_1pt": cheapest[key] / top[key] if cheapest else None,
        "oracle_cost_vs_top": res["oracle"][unit][key] / top[key],
        "margin_over": margins,
        "default_quality_gap_points": 100 * (top["quality"] - d["quality"]) if d else None,
        "default_cost_vs_top": d[key] / top[key] if d else None,
    }


def run(data_path: Path, model_dir: Path, out_json: Path, out_png: Path, config: Path | None = None, lofo: bool = True,
        seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Both evaluations, both units; writes the JSON and the PNG (four panels) and returns the result."""
    from tqdm import tqdm

    from common.settings import load_settings
    from predictor.serving.runtime import OnnxPredictor
    from training import train
    from training.tasks import registry

    settings = load_settings(config)
    prices = replay.prices_of(settings)
    rule_unit = settings.cascade.cost_unit
    rule_prices = [s.price(rule_unit) for s in settings.stages]
    max_tokens = {t.id: t.max_tokens for t in registry.build("mix")}
    full = replay.table(data_path, train.CHECKPOINTS, max_tokens)
    rows = list(dataset.read_rows(data_path))
    rates = reuse.rates([r for r in rows if r["split"] == "train"], full.n_stages)
    costs = {u: replay.unit_costs(full, u, prices[u]) for u in UNITS}
    shipped = OnnxPredictor.load(model_dir, settings.cascade.risk.evidence)
    b_full = replay.beliefs(full, shipped, rule_prices)
    # the sweep, and the config's default λ itself: the default's figures are at exactly that λ
    sweep = sorted({*lambdas(b_full, full), settings.cascade.default_lambda})
    ctx = Context(settings, full, costs, prices, rule_prices, rates, sweep, Options.of(settings))
    test, val = full.split == "test", full.split == "val"
    result: dict[str, Any] = {"data": data_path.name, "rule_unit": rule_unit, "lambdas": ctx.lambdas,
                              "default_lambda": settings.cascade.default_lambda, "families": sorted(set(full.family.tolist()))}  # fmt: skip
    held = outcomes(ctx, test, b_full.rows(test), val)
    result["held_out"] = report(held, UNITS, settings.cascade.default_lambda, int(test.sum()))
    result["monotonicity"] = monotonicity(full.rows(val), b_full.rows(val), {u: _rows(c, val) for u, c in costs.items()}, ctx)
    if lofo:
        data = dataset.load(data_path)
        prefixes = dataset.prefixes(data_path, train.CHECKPOINTS)
        parts = []
        for fam in tqdm(result["families"], desc="leave-one-family-out", unit="family"):
            fold = train.FoldPredictor(data.where(data.family != fam), prefixes.where(prefixes.family != fam), seed,
                                       settings.cascade.risk.evidence)  # fmt: skip
            sel = full.family == fam
            b = replay.beliefs(full.rows(sel), fold, rule_prices)
            parts.append(outcomes(ctx, sel, b, (full.family != fam) & val))
        result["lofo"] = report(pool(parts), UNITS, settings.cascade.default_lambda, len(full.y))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out_png)
    return result


MONOTONE_Z = 2.0  # a fall counts when it exceeds this many standard errors of the paired difference


def monotonicity(t: Table, b: Beliefs, costs: dict[str, UnitCosts], ctx: Context, lams: Sequence[float] | None = None,
                 z: float = MONOTONE_Z) -> dict[str, Any]:  # fmt: skip
    """Does ours lose quality as λ rises? Accuracy over the λ sweep on ``t`` (the validation split), each point
    against the best at any lower λ.

    Two policies replayed on the same tasks differ only on the tasks where one is right and the other wrong;
    under equal quality the difference has standard error ``sqrt(discordant) / n`` (McNemar's paired test). A
    fall larger than ``z`` of those, and larger than one task, is a fall in quality; smaller ones are noise.
    """
    lams = list(lams if lams is not None else ctx.lambdas)
    n = len(t.y)
    correct = [replay.cascade(t, b, costs, lam, ctx.opt).correct for lam in lams]
    worst: dict[str, Any] = {"fall": 0.0, "tolerance": None, "at_lambda": None, "from_lambda": None}
    beyond_noise = []
    for k in range(1, len(lams)):
        best = max(range(k), key=lambda j: (int(correct[j].sum()), -j))
        fall = (int(correct[best].sum()) - int(correct[k].sum())) / n
        if fall <= 0:
            continue
        discordant = int((correct[best] != correct[k]).sum())
        tolerance = max(z * math.sqrt(discordant) / n, 1.0 / n)
        if fall > tolerance + 1e-12:
            beyond_noise.append(lams[k])
        if fall > worst["fall"]:
            worst = {"fall": fall, "tolerance": tolerance, "at_lambda": lams[k], "from_lambda": lams[best]}
    return {"split": "val", "tasks": n, "z": z, "accuracy": [float(c.mean()) for c in correct], "lambdas": lams,
            "worst_fall": worst, "falls_beyond_noise_at": beyond_noise, "monotone_within_noise": not beyond_noise}  # fmt: skip


_STYLES = {
    OURS: "-o",
    "ours, no early exit": "--.",
    "ours, no draft reuse": ":.",
    "ours, no skipping": "-.",
    "ours, prompt-only beliefs": ":x",
    "threshold cascade": "-s",
    "prompt-only router": "-^",
    "random": ":",
}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [k for k in ("held_out", "lofo") if k in result]
    fig, axes = plt.subplots(len(evals), len(UNITS), figsize=(7.0 * len(UNITS), 4.8 * len(evals)), squeeze=False)
    for r, ev in enumerate(evals):
        res = result[ev]
        for c, unit in enumerate(UNITS):
            ax = axes[r][c]
            key = f"cost_{unit}"
            for name, pts in res["units"][unit]["frontiers"].items():
                if pts:
                    ax.plot([p[key] for p in pts], [p["quality"] for p in pts], _STYLES.get(name, "-"), label=name, markersize=3)
            for s in [*res["singles"], res["speculative decoding"]]:
                ax.scatter(s[key], s["quality"], marker="*", s=110, zorder=5)
                ax.annotate(s["policy"], (s[key], s["quality"]), textcoords="offset points", xytext=(5, -10), fontsize=7)
            o = res["oracle"][unit]
            ax.scatter(o[key], o["quality"], marker="x", s=70, color="black", label="oracle", zorder=5)
            if res.get("default"):
                d = res["default"]
                ax.scatter(d[key], d["quality"], marker="P", s=110, color="red", label="ours at the default λ", zorder=6)
            label = "GFLOP per request (2 x parameters x tokens)" if unit == "compute" else "seconds per request (measured, this machine)"
            ax.set_xlabel(label)
            ax.set_ylabel("accuracy")
            title = "held-out test split" if ev == "held_out" else "leave-one-family-out (pooled)"
            ax.set_title(f"{title}, {res['tasks']} tasks — {unit}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(result: dict[str, Any]) -> str:
    """Markdown tables: per evaluation and unit, each policy's frontier at a few points, and the targets."""
    lines = [f"rule priced in: {result['rule_unit']}; default λ {result['default_lambda']:g}; families: {len(result['families'])}"]
    for ev in ("held_out", "lofo"):
        if ev not in result:
            continue
        res = result[ev]
        lines += ["", f"## {'held-out test split' if ev == 'held_out' else 'leave-one-family-out'} ({res['tasks']} tasks)", "",
                  "| policy | accuracy | GFLOP | seconds | stops 0 / 1 / 2 |", "|---|---|---|---|---|"]  # fmt: skip
        fixed = [*res["singles"], res["speculative decoding"], *res["oracle"].values()]
        if res.get("default"):
            fixed.append({**res["default"], "policy": "ours at the default λ"})
        for p in fixed:
            lines.append(f"| {p['policy']} | {p['quality']:.3f} | {p['cost_compute']:.0f} | {p['cost_seconds']:.2f} | "
                         + " / ".join(f"{x:.2f}" for x in p.get("stops", [])) + " |")  # fmt: skip
        for unit in UNITS:
            u = res["units"][unit]
            t = u["targets"]
            vs = "-" if t["cost_vs_top_within_1pt"] is None else f"{t['cost_vs_top_within_1pt']:.2f}x"
            gap = t["default_quality_gap_points"]
            side = f"{gap:.1f} points below" if gap > 0 else f"{-gap:.1f} points above" if gap < 0 else "level with"
            lines += ["", f"**{unit}**: top stage {t['top_quality']:.3f}; ours best {t['ours_best_quality']:.3f}; ours within 1 point of "
                      f"the top at {vs} its cost (oracle {t['oracle_cost_vs_top']:.2f}x); default λ: "
                      f"{side} the top at {t['default_cost_vs_top']:.2f}x its cost", "",
                      "| vs | mean margin at matched cost (points) | worst (points) |", "|---|---|---|"]  # fmt: skip
            for name, m in t["margin_over"].items():
                lines.append(f"| {name} | {m['mean_points']:+.1f} | {m['min_points']:+.1f} |")
            lines += ["", f"| policy ({unit} frontier) | cost | accuracy |", "|---|---|---|"]
            for name, pts in u["frontiers"].items():
                for p in pts[:: max(1, len(pts) // 4)]:
                    lines.append(f"| {name} | {p[f'cost_{unit}']:.2f} | {p['quality']:.3f} |")
    m = result["monotonicity"]
    lines += ["", f"monotone in λ on validation within noise: {m['monotone_within_noise']} (worst fall {m['worst_fall']['fall']:.3f})"]
    return "\n".join(lines)


def live_check(settings: Settings, data_path: Path, model_dir: Path, lams: tuple[float, ...], limit: int) -> dict[str, Any]:
    """Send test-split tasks through a live router and compare with the offline replay: stops, aborts, answers.

    The router must run ``settings`` (same predictor, prices and ladder) with ``cascade.draft_reuse: false`` -- a
    verified answer's features include its draft acceptance, which the replay of full generations does not model.
    Compares per request the stages called (``x-cascade-path``: an aborted stage is marked there), the final stage
    and the final answer text.
    """
    import httpx

    from predictor.serving.runtime import OnnxPredictor
    from training import train
    from training.tasks import registry

    tasks = {t.id: t for t in registry.build("mix")}
    full = replay.table(data_path, train.CHECKPOINTS, {k: t.max_tokens for k, t in tasks.items()})
    test_idx = np.flatnonzero(full.split == "test")[:limit]
    t = full.rows(test_idx)
    predictor = OnnxPredictor.load(model_dir, settings.cascade.risk.evidence)
    rule_prices = [s.price(settings.cascade.cost_unit) for s in settings.stages]
    b = replay.beliefs(t, predictor, rule_prices)
    costs = {u: replay.unit_costs(t, u, p) for u, p in replay.prices_of(settings).items()}
    opt = Options.of(settings, draft_reuse=False)
    texts = {row["task"]: [s["text"] for s in row["stages"]] for row in dataset.read_rows(data_path)}
    names = [s.name for s in settings.stages]
    url = f"http://{settings.server.host}:{settings.server.port}/v1/chat/completions"
    out: dict[str, Any] = {"tasks": len(t.y), "lambdas": {}}
    for lam in lams:
        o = replay.cascade(t, b, costs, lam, opt)
        same_stop = same_text = same_aborts = live_aborted = 0
        mismatches = []
        for i, tid in enumerate(t.task.tolist()):
            task = tasks[tid]
            body = {"model": settings.cascade.model_name, "messages": list(task.messages), "max_tokens": task.max_tokens,
                    "temperature": 0.0, "seed": 1234, "cascade_lambda": lam}  # fmt: skip
            r = httpx.post(url, json=body, timeout=600)
            r.raise_for_status()
            live_final = names.index(r.headers["x-cascade-stage"])
            live_aborts = r.headers.get("x-cascade-path", "").count("(aborted")
            same_stop += live_final == int(o.final[i])
            same_aborts += live_aborts == int(o.aborts[i])
            live_aborted += live_aborts > 0
            same_text += r.json()["choices"][0]["message"]["content"] == texts[tid][live_final]
            if live_final != int(o.final[i]) or live_aborts != int(o.aborts[i]):
                mismatches.append({"task": tid, "live_path": r.headers.get("x-cascade-path"), "replay_final": int(o.final[i]),
                                   "replay_aborts": int(o.aborts[i])})  # fmt: skip
        out["lambdas"][str(lam)] = {"same_final_stage": same_stop / len(t.y), "same_aborts": same_aborts / len(t.y),
                                    "same_answer_text": same_text / len(t.y), "aborted_live": live_aborted,
                                    "aborted_replay": int((o.aborts > 0).sum()), "mismatches": mismatches}  # fmt: skip
    return out
