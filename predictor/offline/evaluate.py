"""The cost/quality frontier: replay routing policies offline over the collected answers.

Every task of the collection has every stage's answer, verdict and measured
seconds, so a policy is replayed by looking up what it would have seen --
sweeping λ costs milliseconds. Reported figures use the test split only;
thresholds are tuned on the validation split and the prompt-only router is
the prior model trained on the training split. Cost is measured wall seconds
of the stages a policy calls on this machine (the same unit the policy's DP
uses: the per-stage mean seconds of the training split).

Policies: each single stage; random routing at matched cost (the chord
between stages); a fixed-threshold cascade on mean logprob (FrugalGPT /
AutoMix style); a prompt-only router (RouteLLM style); ours (learned
predictor + DP stopping, with and without prior-based skipping, and with the
beliefs after each answer replaced by the prompt-only priors, as before v4);
the oracle (cheapest stage that passes).

Quality must not fall as λ rises: ``monotonicity`` checks ours on the
validation split over the λ sweep (a fall beyond paired-sampling noise fails).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.offline import dataset, reuse
from predictor.serving.features import INDEX, posterior_features
from predictor.serving.runtime import OnnxPredictor
from router.policy import StoppingPolicy, shrink

LAMBDAS = tuple(float(x) for x in np.geomspace(0.05, 500, 41))
POLICIES = (
    "ours",
    "ours + draft reuse",
    "ours, no skipping",
    "ours, prompt-only beliefs",
    "threshold cascade",
    "prompt-only router",
    "random",
)
_MEAN = INDEX["lp_mean"]


@dataclass
class Table:
    """Per task (rows) and stage (columns); only tasks with a verdict at every stage."""

    task: np.ndarray
    split: np.ndarray
    family: np.ndarray
    y: np.ndarray  # (T, S) 0/1
    sec: np.ndarray  # (T, S) seconds
    x: np.ndarray  # (T, S, F)
    prior_x: np.ndarray  # (T, S, P)

    def rows(self, sel: np.ndarray | slice) -> Table:
        return Table(self.task[sel], self.split[sel], self.family[sel], self.y[sel], self.sec[sel], self.x[sel], self.prior_x[sel])

    def part(self, split: str) -> Table:
        return self.rows(self.split == split)


def table(data: dataset.Dataset) -> Table:
    s_count = data.n_stages
    rows: dict[str, dict[int, int]] = {}
    for i, (t, s) in enumerate(zip(data.task, data.stage, strict=False)):
        rows.setdefault(str(t), {})[int(s)] = i
    keep = [(t, idx) for t, idx in rows.items() if len(idx) == s_count]
    order = [[idx[s] for s in range(s_count)] for _, idx in keep]
    ix = np.array(order, dtype=np.int64)
    first = ix[:, 0]
    return Table(data.task[first], data.split[first], data.family[first], data.y[ix], data.seconds[ix], data.x[ix], data.prior_x[ix])


@dataclass
class Point:
    policy: str
    knob: float | None
    cost: float
    quality: float
    latency: float
    stops: list[float]


def _point(policy: str, knob: float | None, final: np.ndarray, cost: np.ndarray, y: np.ndarray, n_stages: int) -> Point:
    quality = float(y[np.arange(len(final)), final].mean())
    stops = [float((final == s).mean()) for s in range(n_stages)]
    return Point(policy, knob, float(cost.mean()), quality, float(cost.mean()), stops)


def single_stages(t: Table) -> list[Point]:
    n = t.y.shape[1]
    return [_point(f"stage {s}", None, np.full(len(t.y), s), t.sec[:, s], t.y, n) for s in range(n)]


def oracle(t: Table) -> Point:
    n = t.y.shape[1]
    passing = t.y.astype(bool)
    final = np.where(passing.any(axis=1), passing.argmax(axis=1), 0)
    return _point("oracle", None, final, t.sec[np.arange(len(final)), final], t.y, n)


def random_routing(singles: list[Point], costs: list[float]) -> list[Point]:
    """Expected quality of mixing the two stages that bracket each target cost (the best random router)."""
    pts = sorted(singles, key=lambda p: p.cost)
    out = []
    for c in costs:
        for a, b in zip(pts, pts[1:], strict=False):
            if a.cost <= c <= b.cost:
                w = (c - a.cost) / (b.cost - a.cost) if b.cost > a.cost else 0.0
                out.append(Point("random", w, c, (1 - w) * a.quality + w * b.quality, c, []))
                break
    return out


def threshold_cascade(t: Table, thresholds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stop at the first stage whose mean logprob >= its threshold (the top stage always stops)."""
    n = t.y.shape[1]
    final = np.full(len(t.y), n - 1)
    cost = np.zeros(len(t.y))
    open_ = np.ones(len(t.y), dtype=bool)
    for s in range(n):
        cost[open_] += t.sec[open_, s]
        if s == n - 1:
            break
        stop = open_ & (t.x[:, s, _MEAN] >= thresholds[s])
        final[stop] = s
        open_ &= ~stop
    return final, cost


def tuned_thresholds(val: Table, grid: int = 9) -> list[tuple[float, ...]]:
    """Threshold pairs on the validation split's Pareto frontier (cost vs quality)."""
    n = val.y.shape[1]
    qs = [np.quantile(val.x[:, s, _MEAN], np.linspace(0, 1, grid)).tolist() + [math.inf] for s in range(n - 1)]
    cands: list[tuple[float, float, tuple[float, ...]]] = []
    for row in np.array(np.meshgrid(*qs)).T.reshape(-1, n - 1):
        final, cost = threshold_cascade(val, tuple(row))
        cands.append((float(cost.mean()), float(val.y[np.arange(len(final)), final].mean()), tuple(float(v) for v in row)))
    cands.sort()
    frontier: list[tuple[float, ...]] = []
    best = -1.0
    for _c, q, th in cands:
        if q > best:
            frontier.append(th)
            best = q
    return frontier


def prompt_router(t: Table, predictor: OnnxPredictor, costs: list[float], lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Pick one stage before generation: argmin cost + λ (1 - prior)."""
    n = t.y.shape[1]
    priors = predictor.prior_batch(t.prior_x.reshape(-1, t.prior_x.shape[-1])).reshape(len(t.y), n)
    score = np.asarray(costs)[None, :] + lam * (1.0 - priors)
    final = score.argmin(axis=1)
    return final, t.sec[np.arange(len(final)), final]


def beliefs(t: Table, predictor: OnnxPredictor) -> np.ndarray:
    """``b[task, i, j]``: the predictor's belief about stage j > i once stage i has answered (``beliefs_after``); 0 elsewhere."""
    n = t.y.shape[1]
    out = np.zeros((len(t.y), n, n))
    for i in range(n - 1):
        x = np.concatenate([posterior_features(row, i, n) for row in t.x[:, i]])
        out[:, i, i + 1 :] = predictor.posterior_batch(x).reshape(len(t.y), n - i - 1)
    return out


def cascade(t: Table, predictor: OnnxPredictor, costs: list[float], lam: float, skip: bool, strength: float | None,
            risk: tuple[float, float], saving: np.ndarray | None = None,
            belief: np.ndarray | None | bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Ours: the router's own stopping rule replayed with the learned predictor; also how many stages each request called.

    ``saving[task, i, j]``: seconds an escalation from i to j saves by verifying i's draft (predictor/offline/reuse.py).
    ``belief``: after each answer the policy takes the predictor's beliefs about the stages above, as the router
    does (True: computed here; an array: ``beliefs(t, predictor)`` computed once; False: keep the prompt-only priors).
    """
    n = t.y.shape[1]
    priors = predictor.prior_batch(t.prior_x.reshape(-1, t.prior_x.shape[-1])).reshape(len(t.y), n)
    p_hat = predictor.predict_batch(t.x.reshape(-1, t.x.shape[-1])).reshape(len(t.y), n)
    b = beliefs(t, predictor) if belief is True else (belief if isinstance(belief, np.ndarray) else None)
    alpha, beta = risk
    final = np.zeros(len(t.y), dtype=np.int64)
    cost = np.zeros(len(t.y))
    calls = np.zeros(len(t.y), dtype=np.int64)
    for i in range(len(t.y)):
        policy = StoppingPolicy(costs, priors[i].tolist(), lam, max_stage=n - 1, strength=strength)
        stage: int | None = policy.start(skip)
        while stage is not None:
            cost[i] += t.sec[i, stage] - (saving[i, final[i], stage] if saving is not None and calls[i] else 0.0)
            calls[i] += 1
            final[i] = stage
            if b is not None:
                policy.observe(stage, b[i, stage, stage + 1 :].tolist())
            d = policy.decide(stage, shrink(float(p_hat[i, stage]), predictor.evidence, alpha, beta))
            stage = None if d.stop else d.next_stage
    return final, cost, calls


def _draft_savings(data_path: Path, full: Table, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Test-split savings of draft reuse per (task, i, j); a pair whose mean saving on the training
    split is not positive regenerates (as the router's acceptance gate would have it)."""
    rows = list(dataset.read_rows(data_path))
    stage_rates = reuse.rates([r for r in rows if r["split"] == "train"], n)
    all_saving = reuse.savings(rows, full.task, stage_rates)
    train = full.split == "train"
    pairs = {}
    for i in range(n):
        for j in range(i + 1, n):
            mean = float(all_saving[train, i, j].mean())
            pairs[f"{i}->{j}"] = {"train_mean_saving_s": mean, "reused": mean > 0}
            if mean <= 0:
                all_saving[:, i, j] = 0.0
    test = full.split == "test"
    info = {"stage_rates_s_per_token": [vars(r) for r in stage_rates], "pairs": pairs,
            "test_mean_saving_s": {f"{i}->{j}": float(all_saving[test, i, j].mean()) for i in range(n) for j in range(i + 1, n)}}  # fmt: skip  # noqa: E501
    return all_saving[test], info


def frontier(points: list[Point]) -> list[Point]:
    """Points not dominated on (lower cost, higher quality)."""
    out, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if p.quality > best + 1e-12:
            out.append(p)
            best = p.quality
    return out


def run(data_path: Path, model_dir: Path, out_json: Path, out_png: Path, strength: float | None = 8.0,
        risk: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:  # fmt: skip
    data = dataset.load(data_path)
    full = table(data)
    train, val, test = full.part("train"), full.part("val"), full.part("test")
    predictor = OnnxPredictor.load(model_dir)
    n = full.y.shape[1]
    costs = [float(train.sec[:, s].mean()) for s in range(n)]  # calibrated: mean measured seconds per stage
    saving, reuse_info = _draft_savings(data_path, full, n)
    singles = single_stages(test)
    points: list[Point] = [*singles, oracle(test)]
    for th in tuned_thresholds(val):
        final, cost = threshold_cascade(test, th)
        points.append(_point("threshold cascade", th[0], final, cost, test.y, n))
    sweep = []
    b_test = beliefs(test, predictor)
    for lam in LAMBDAS:
        final, cost = prompt_router(test, predictor, costs, lam)
        points.append(_point("prompt-only router", lam, final, cost, test.y, n))
        variants = (("ours", True, None, b_test), ("ours, no skipping", False, None, b_test), ("ours + draft reuse", True, saving, b_test),
                    ("ours, prompt-only beliefs", True, None, False))  # fmt: skip
        for name, skip, save, bel in variants:
            final, cost, calls = cascade(test, predictor, costs, lam, skip, strength, risk, save, bel)
            p = _point(name, lam, final, cost, test.y, n)
            points.append(p)
            if skip:
                sweep.append(
                    {"lambda": lam, "cost_s": p.cost, "quality": p.quality, "stops": p.stops, "escalation_rate": float((calls > 1).mean())}
                )
    ours_costs = [p.cost for p in points if p.policy == "ours"]
    points += random_routing(singles, ours_costs)
    result = {
        "data": data_path.name,
        "test_tasks": len(test.y),
        "families": sorted(set(test.family.tolist())),
        "stage_cost_s": costs,
        "singles": [vars(p) for p in singles],
        "oracle": vars(oracle(test)),
        "frontiers": {name: [vars(p) for p in frontier([p for p in points if p.policy == name])] for name in POLICIES},
        "lambda_sweep": sweep,
        "draft_reuse": reuse_info,
        "monotonicity": monotonicity(val, predictor, costs, strength, risk),
    }
    result["targets"] = targets(result)
    result["targets_with_draft_reuse"] = targets(result, "ours + draft reuse")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out_png)
    return result


MONOTONE_Z = 2.0  # a fall counts when it exceeds this many standard errors of the paired difference


def monotonicity(t: Table, predictor: OnnxPredictor, costs: list[float], strength: float | None, risk: tuple[float, float],
                 lambdas: tuple[float, ...] = LAMBDAS, z: float = MONOTONE_Z) -> dict[str, Any]:  # fmt: skip
    """Does ours lose quality as λ rises? Accuracy over ``lambdas`` on ``t`` (the validation split), each point
    against the best at any lower λ.

    Two policies replayed on the same tasks differ only on the tasks where one is right and the other wrong
    (``b`` and ``c`` of them); under equal quality the difference ``(c - b) / n`` has standard error
    ``sqrt(b + c) / n`` (McNemar's paired test). A fall larger than ``z`` of those, and larger than one task, is
    a fall in quality; smaller ones are noise. Reported: the accuracies, the largest fall, its tolerance.
    """
    b = beliefs(t, predictor)
    n = len(t.y)
    correct = []
    for lam in lambdas:
        final, _, _ = cascade(t, predictor, costs, lam, True, strength, risk, None, b)
        correct.append(t.y[np.arange(n), final].astype(bool))
    worst: dict[str, Any] = {"fall": 0.0, "tolerance": None, "at_lambda": None, "from_lambda": None}
    beyond_noise = []
    for k in range(1, len(lambdas)):
        best = max(range(k), key=lambda j: (int(correct[j].sum()), -j))
        fall = (int(correct[best].sum()) - int(correct[k].sum())) / n
        if fall <= 0:
            continue
        discordant = int((correct[best] != correct[k]).sum())
        tolerance = max(z * math.sqrt(discordant) / n, 1.0 / n)
        if fall > tolerance + 1e-12:
            beyond_noise.append(lambdas[k])
        if fall > worst["fall"]:
            worst = {"fall": fall, "tolerance": tolerance, "at_lambda": lambdas[k], "from_lambda": lambdas[best]}
    return {
        "split": "val",
        "tasks": n,
        "z": z,
        "accuracy": [float(c.mean()) for c in correct],
        "lambdas": list(lambdas),
        "worst_fall": worst,
        "falls_beyond_noise_at": beyond_noise,
        "monotone_within_noise": not beyond_noise,
    }


def targets(result: dict[str, Any], policy: str = "ours") -> dict[str, Any]:
    """The issue's target: at quality within 1 point of the best single stage, cost <= 50% of the top stage."""
    singles = result["singles"]
    best = max(s["quality"] for s in singles)
    top_cost = singles[-1]["cost"]
    ok = [p for p in result["frontiers"][policy] if p["quality"] >= best - 0.01]
    cheapest = min(ok, key=lambda p: p["cost"]) if ok else None
    cheapest_single = min((s for s in singles if s["quality"] >= best - 0.01), key=lambda s: s["cost"])
    return {
        "best_single_quality": best,
        "ours_cheapest_within_1pt": cheapest,
        "cost_vs_top_stage": cheapest["cost"] / top_cost if cheapest else None,
        "cheapest_single_within_1pt": cheapest_single,
        "cost_vs_cheapest_single": cheapest["cost"] / cheapest_single["cost"] if cheapest else None,
        # the floor for any policy: every task at the cheapest stage that passes it, nothing wasted
        "oracle_cost_vs_top_stage": result["oracle"]["cost"] / top_cost,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        "ours": "-o",
        "ours + draft reuse": "-D",
        "ours, no skipping": "--.",
        "ours, prompt-only beliefs": ":x",
        "threshold cascade": "-s",
        "prompt-only router": "-^",
        "random": ":",
    }
    for name, pts in result["frontiers"].items():
        if pts:
            ax.plot([p["cost"] for p in pts], [p["quality"] for p in pts], styles[name], label=name, markersize=4)
    for s in result["singles"]:
        ax.scatter(s["cost"], s["quality"], marker="*", s=120, zorder=5)
        ax.annotate(s["policy"], (s["cost"], s["quality"]), textcoords="offset points", xytext=(5, -10), fontsize=8)
    o = result["oracle"]
    ax.scatter(o["cost"], o["quality"], marker="x", s=80, color="black", label="oracle", zorder=5)
    ax.set_xlabel("mean cost per request (measured stage seconds, this machine)")
    ax.set_ylabel("accuracy (test split)")
    ax.set_title(f"cost/quality frontier, {result['test_tasks']} test tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(result: dict[str, Any]) -> str:
    """A markdown table: each policy's frontier at a few matched costs, plus the λ sweep."""
    lines = [f"test tasks: {result['test_tasks']}; stage cost (s): " + ", ".join(f"{c:.2f}" for c in result["stage_cost_s"]), "",
             "| policy | cost (s) | accuracy | stops per stage |", "|---|---|---|---|"]  # fmt: skip
    for s in result["singles"]:
        lines.append(f"| {s['policy']} | {s['cost']:.2f} | {s['quality']:.3f} | |")
    o = result["oracle"]
    lines.append(f"| oracle | {o['cost']:.2f} | {o['quality']:.3f} | {' / '.join(f'{x:.2f}' for x in o['stops'])} |")
    for name, pts in result["frontiers"].items():
        for p in pts[:: max(1, len(pts) // 6)]:
            stops = " / ".join(f"{x:.2f}" for x in p["stops"]) if p["stops"] else ""
            lines.append(f"| {name} | {p['cost']:.2f} | {p['quality']:.3f} | {stops} |")
    lines += ["", "| λ | cost (s) | accuracy | escalation rate | stops 0 / 1 / 2 |", "|---|---|---|---|---|"]
    for row in result["lambda_sweep"][::5]:
        lines.append(f"| {row['lambda']:.3g} | {row['cost_s']:.2f} | {row['quality']:.3f} | {row['escalation_rate']:.2f} | "
                     + " / ".join(f"{x:.2f}" for x in row["stops"]) + " |")  # fmt: skip
    for key, name in (("targets", "ours"), ("targets_with_draft_reuse", "ours + draft reuse")):
        t = result[key]
        vs_top = "-" if t["cost_vs_top_stage"] is None else f"{t['cost_vs_top_stage']:.2f}"
        vs_single = "-" if t["cost_vs_cheapest_single"] is None else f"{t['cost_vs_cheapest_single']:.2f}"
        lines += [
            "",
            (
                f"best single stage accuracy {t['best_single_quality']:.3f}; {name} within 1 point of it costs {vs_top} x the top stage, "
                f"{vs_single} x the cheapest single stage within 1 point (the oracle: {t['oracle_cost_vs_top_stage']:.2f} x the top stage)"
            ),
        ]
    return "\n".join(lines)


def live_check(settings: Any, data_path: Path, model_dir: Path, lambdas: tuple[float, ...], limit: int) -> dict[str, Any]:
    """Send test-split tasks through a live router and compare with the offline replay.

    The router must run ``settings`` (the same predictor, costs and ladder) with
    ``cascade.draft_reuse: false`` -- a verified answer's features include its
    draft acceptance, which the replay (full generations) does not model.
    Compares the stages called and the final answer text per request.
    """
    import httpx

    from predictor.offline.tasks import registry

    tasks = {t.id: t for t in registry.build("mix")}
    full = table(dataset.load(data_path)).part("test")
    predictor = OnnxPredictor.load(model_dir)
    costs = [s.cost for s in settings.stages]
    texts = {}
    for row in dataset.read_rows(data_path):
        texts[row["task"]] = [s["text"] for s in row["stages"]]
    sub = full.rows(slice(0, limit))
    ids = [str(t) for t in sub.task]
    names = [s.name for s in settings.stages]
    url = f"http://{settings.server.host}:{settings.server.port}/v1/chat/completions"
    risk = (settings.cascade.risk.alpha, settings.cascade.risk.beta)
    out: dict[str, Any] = {"tasks": len(ids), "lambdas": {}}
    for lam in lambdas:
        final, _, _ = cascade(sub, predictor, costs, lam, settings.cascade.skip_by_prior, settings.cascade.prior_strength, risk)
        same_stop = same_text = 0
        for i, tid in enumerate(ids):
            task = tasks[tid]
            body = {"model": settings.cascade.model_name, "messages": list(task.messages), "max_tokens": task.max_tokens,
                    "temperature": 0.0, "seed": 1234, "cascade_lambda": lam}  # fmt: skip
            r = httpx.post(url, json=body, timeout=600)
            r.raise_for_status()
            live_final = names.index(r.headers["x-cascade-stage"])
            same_stop += live_final == int(final[i])
            same_text += r.json()["choices"][0]["message"]["content"] == texts[tid][live_final]
        out["lambdas"][str(lam)] = {"same_final_stage": same_stop / len(ids), "same_answer_text": same_text / len(ids)}
    return out
