"""Replaying routing policies over collected answers: what each would have called, paid and answered.

Every collected task has every stage's full answer, verdict, token counts and measured seconds, and the
logprobs of each answer's first t tokens are exactly what that stage streamed at t (greedy decoding). So a
policy is replayed by looking up what it would have seen, and sweeping λ costs seconds, not hours.

Costs are reported in two units, both from the same replay:

* ``compute``: 2 x parameters x tokens (prompt and generated) of every stage call, in GFLOP, from the ladder's
  ``prices.compute`` -- what GPU serving and hosted APIs bill;
* ``seconds``: the stage seconds measured on this machine at collection time (a stage aborted after t tokens
  is charged its time to first token and the share of its decode time up to t).

The rule itself prices stages in one unit (``cascade.cost_unit``), exactly as the router does: the expected
cost of each stage for the prompt (``router.pricing.Pricing``: per-token prices, the stage's learned answer
lengths, cut at the task's ``max_tokens``), and while a stage writes, the price of what is still to come.

Draft reuse is priced in seconds (``reuse.savings``); in compute it saves nothing (scoring a kept token costs
the same flops as generating it). The standard two-stage speculative decoding (stage 1 drafts, the top stage
verifies, every request) is modelled from measured rates: it returns the top stage's answers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.settings import Settings, TokenPrices
from predictor.serving.baseline import MeanLogprobPredictor
from predictor.serving.features import INDEX, N_FEATURES, PromptStats, posterior_features
from predictor.serving.lengths import OutputLengths
from router.policy import StoppingPolicy, shrink
from router.pricing import Pricing
from training import dataset, reuse

UNITS = ("compute", "seconds")
_MEAN = INDEX["lp_mean"]
SPEC_LOOKAHEAD = 4  # tokens the drafter proposes per verification round (vLLM's usual num_speculative_tokens)


class BatchPredictor(Protocol):
    """What the replay needs of a predictor: the serving model (``OnnxPredictor``) or a fold's in-memory one."""

    evidence: float
    lengths: tuple[OutputLengths, ...]
    checkpoints: tuple[int, ...]
    prefix_strengths: tuple[float, ...]

    def predict_batch(self, x: np.ndarray) -> np.ndarray: ...
    def prior_batch(self, x: np.ndarray) -> np.ndarray: ...
    def posterior_batch(self, x: np.ndarray) -> np.ndarray: ...
    def prefix_batch(self, x: np.ndarray) -> np.ndarray: ...


class BaselineBatch:
    """The baseline predictor (``MeanLogprobPredictor``) with the replay's batch interface: p̂ from the mean
    logprob, the configured priors for the prior and for every belief about a higher stage; no prefix model."""

    def __init__(self, baseline: MeanLogprobPredictor) -> None:
        self.b = baseline
        self.evidence = baseline.evidence
        self.lengths = baseline.lengths
        self.checkpoints = baseline.checkpoints
        self.prefix_strengths = baseline.prefix_strengths
        self._priors = np.asarray(baseline.stage_priors, dtype=np.float64)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.b.predict(row) for row in x], dtype=np.float64)

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return self._priors[x[:, -1].astype(np.int64)]  # the last prompt feature is the stage asked about

    def posterior_batch(self, x: np.ndarray) -> np.ndarray:
        return self._priors[x[:, -1].astype(np.int64)]  # the last belief feature is the target stage

    def prefix_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), np.nan)


@dataclass
class Table:
    """Per task (rows) and stage (columns); only tasks with a verdict at every stage. ``k`` indexes checkpoints."""

    task: np.ndarray
    split: np.ndarray
    family: np.ndarray
    y: np.ndarray  # (T, S) 0/1
    sec: np.ndarray  # (T, S) measured seconds
    prompt_tokens: np.ndarray  # (T, S) the stage's usage
    output_tokens: np.ndarray  # (T, S)
    x: np.ndarray  # (T, S, F) answer features
    prior_x: np.ndarray  # (T, S, P)
    n_tokens: np.ndarray  # (T,) the prompt's token estimate the router's rule prices (PromptStats.n_tokens)
    max_tokens: np.ndarray  # (T,) the request's max_tokens (0: none)
    prefix_x: np.ndarray  # (T, S, K, F) features of the first t_k tokens; zeros where the answer ended before
    has_prefix: np.ndarray  # (T, S, K) the answer was still being written at t_k
    checkpoints: tuple[int, ...]
    saving_s: np.ndarray  # (T, S, S) seconds draft reuse saves when j verifies i's draft
    draft_kept: np.ndarray  # (T,) share of the top stage's answer stage 1's draft gives it (speculative decoding)

    def rows(self, sel: np.ndarray) -> Table:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[sel] if isinstance(v, np.ndarray) else v
        return Table(**out)

    def part(self, split: str) -> Table:
        return self.rows(self.split == split)

    @property
    def n_stages(self) -> int:
        return int(self.y.shape[1])


def table(data_path: Path, checkpoints: tuple[int, ...], max_tokens: dict[str, int]) -> Table:
    """The replay table of the collection at ``data_path``; ``max_tokens`` per task id (from the task registry)."""
    data = dataset.load(data_path)
    n = data.n_stages
    rows: dict[str, dict[int, int]] = {}
    for i, (t, s) in enumerate(zip(data.task, data.stage, strict=True)):
        rows.setdefault(str(t), {})[int(s)] = i
    keep = [(t, idx) for t, idx in rows.items() if len(idx) == n]
    ix = np.array([[idx[s] for s in range(n)] for _, idx in keep], dtype=np.int64)
    order = {t: k for k, (t, _) in enumerate(keep)}
    k_n = len(checkpoints)
    prefix_x = np.zeros((len(keep), n, k_n, N_FEATURES), dtype=np.float32)
    has_prefix = np.zeros((len(keep), n, k_n), dtype=bool)
    n_tokens = np.zeros(len(keep))
    raw = list(dataset.read_rows(data_path))
    by_id = {r["task"]: r for r in raw}
    for tid, k in order.items():
        row = by_id[tid]
        prompt = PromptStats.from_texts(row["prompt_texts"])
        n_tokens[k] = prompt.n_tokens
        for s in row["stages"]:
            for c, t in enumerate(checkpoints):
                if len(s["logprobs"]) > t:
                    prefix_x[k, s["stage"], c] = dataset.prefix_features(prompt, s, t)
                    has_prefix[k, s["stage"], c] = True
    first = ix[:, 0]
    tasks = data.task[first]
    train_rows = [r for r in raw if r["split"] == "train"]
    saving = reuse.savings([by_id[str(t)] for t in tasks], tasks, reuse.rates(train_rows, n))
    kept = np.zeros(len(keep))
    if n >= 3:
        for k, tid in enumerate(tasks):
            stages = {s["stage"]: s for s in by_id[str(tid)]["stages"]}
            own, draft = stages[n - 1].get("text") or "", stages[n - 2].get("text") or ""
            kept[k] = reuse.replay(own, draft).kept_chars / len(own) if own else 0.0
    return Table(tasks, data.split[first], data.family[first], data.y[ix], data.seconds[ix], data.prompt_tokens[ix],
                 data.output_tokens[ix], data.x[ix], data.prior_x[ix], n_tokens,
                 np.array([max_tokens.get(str(t), 0) for t in tasks], dtype=np.float64), prefix_x, has_prefix,
                 tuple(checkpoints), saving, kept)  # fmt: skip


# -- what each unit charges --------------------------------------------------------------------------------------


@dataclass
class UnitCosts:
    """What the stage calls of each task cost in one unit: a full answer, and an answer aborted at each checkpoint."""

    full: np.ndarray  # (T, S)
    at: np.ndarray  # (T, S, K)
    saving: np.ndarray  # (T, S, S) what draft reuse saves (0 in compute)


def unit_costs(t: Table, unit: str, prices: Sequence[TokenPrices]) -> UnitCosts:
    """Every task's cost at every stage in ``unit``: ``seconds`` as measured; any other unit (compute, or an
    operator's own: cost, usd) its prices times the tokens."""
    # each stage's price of every task's whole answer (T, S) and of its first t_k tokens (T, S, K)
    p = {f: np.array([getattr(prices[s], f) for s in range(t.n_stages)]) for f in ("request", "prompt_token", "output_token")}
    base = p["request"] + p["prompt_token"] * t.prompt_tokens
    full = base + p["output_token"] * t.output_tokens
    at = base[:, :, None] + p["output_token"][None, :, None] * np.asarray(t.checkpoints, dtype=np.float64)[None, None, :]
    if unit != "seconds":
        return UnitCosts(full, at, np.zeros_like(t.saving_s))
    # seconds: the measured ones, and for an abort after t tokens the share of them a t-token answer takes at these rates
    share = np.minimum(at / np.maximum(full[:, :, None], 1e-9), 1.0)
    return UnitCosts(t.sec, t.sec[:, :, None] * share, t.saving_s)


# -- what a predictor says about each task --------------------------------------------------------------------------


@dataclass
class Beliefs:
    """A predictor's numbers for every task of a table, and the rule's prices from its lengths; per task, so that a
    leave-one-family-out table can hold each family's own fold model."""

    priors: np.ndarray  # (T, S)
    p_hat: np.ndarray  # (T, S) risk not applied
    after: np.ndarray  # (T, S, S): belief about j once i answered
    prefix_q: np.ndarray  # (T, S, K)
    strengths: np.ndarray  # (T, K)
    rule_cost: np.ndarray  # (T, S) each stage's expected cost, in the rule's unit
    to_finish: np.ndarray  # (T, S, K) price of what is left after t_k, in the rule's unit
    evidence: float

    def rows(self, sel: np.ndarray) -> Beliefs:
        return Beliefs(self.priors[sel], self.p_hat[sel], self.after[sel], self.prefix_q[sel], self.strengths[sel],
                       self.rule_cost[sel], self.to_finish[sel], self.evidence)  # fmt: skip


def beliefs(t: Table, predictor: BatchPredictor, rule_prices: Sequence[TokenPrices]) -> Beliefs:
    n, k = t.n_stages, len(t.checkpoints)
    priors = predictor.prior_batch(t.prior_x.reshape(-1, t.prior_x.shape[-1])).reshape(len(t.y), n)
    p_hat = predictor.predict_batch(t.x.reshape(-1, t.x.shape[-1])).reshape(len(t.y), n)
    after = np.zeros((len(t.y), n, n))
    for i in range(n - 1):
        x = np.concatenate([posterior_features(row, i, n) for row in t.x[:, i]])
        after[:, i, i + 1 :] = predictor.posterior_batch(x).reshape(len(t.y), n - i - 1)
    prefix_q = np.full((len(t.y), n, k), np.nan)
    if predictor.checkpoints and tuple(predictor.checkpoints) == t.checkpoints:
        flat = t.prefix_x.reshape(-1, t.prefix_x.shape[-1])
        prefix_q = predictor.prefix_batch(flat).reshape(len(t.y), n, k)
        prefix_q[~t.has_prefix] = np.nan
    strengths = np.tile(np.asarray(predictor.prefix_strengths or [0.0] * k, dtype=np.float64), (len(t.y), 1))
    pricing = Pricing(rule_prices, list(predictor.lengths[:n]) or [None] * n, [None] * n)
    rule_cost = np.zeros((len(t.y), n))
    to_finish = np.zeros((len(t.y), n, k))
    for i in range(len(t.y)):
        cap = int(t.max_tokens[i]) or None
        rule_cost[i] = pricing.costs(range(n), t.n_tokens[i], cap)
        for s in range(n):
            to_finish[i, s] = [pricing.to_finish(s, c, cap) for c in t.checkpoints]
    return Beliefs(priors, p_hat, after, prefix_q, strengths, rule_cost, to_finish, predictor.evidence)


# -- the policies ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """Which parts of ours are on (the router's defaults: all)."""

    skip: bool = True  # prior-based skipping of the small stages
    beliefs_after: bool = True  # beliefs after each answer replace the prompt-only priors
    early_exit: bool = True  # judge a stage at checkpoints while it writes
    draft_reuse: bool = True  # an escalation verifies the lower stage's draft
    strength: float | None = 8.0
    risk: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def of(cls, settings: Settings, draft_reuse: bool | None = None) -> Options:
        """The options a router on ``settings`` runs with (``draft_reuse`` overrides the config's)."""
        c = settings.cascade
        return cls(c.skip_by_prior, True, c.early_exit, c.draft_reuse if draft_reuse is None else draft_reuse, c.prior_strength,
                   (c.risk.alpha, c.risk.beta))  # fmt: skip


@dataclass
class Outcome:
    """Per task: the stage whose answer was returned, its verdict, what was spent per unit, stage calls, aborts."""

    final: np.ndarray
    correct: np.ndarray
    spent: dict[str, np.ndarray]
    calls: np.ndarray
    aborts: np.ndarray

    def point(self, policy: str, knob: float | None) -> dict[str, Any]:
        n = int(self.final.max()) + 1 if len(self.final) else 0
        return {"policy": policy, "knob": knob, "quality": float(self.correct.mean()),
                **{f"cost_{u}": float(v.mean()) for u, v in self.spent.items()},
                "stops": [float((self.final == s).mean()) for s in range(max(n, 3))],
                "escalation_rate": float((self.calls > 1).mean()), "abort_rate": float((self.aborts > 0).mean())}  # fmt: skip


def _outcome(t: Table, final: np.ndarray, spent: dict[str, np.ndarray], calls: np.ndarray | None = None,
             aborts: np.ndarray | None = None) -> Outcome:  # fmt: skip
    ones = np.ones(len(final), dtype=np.int64)
    return Outcome(final, t.y[np.arange(len(final)), final].astype(bool), spent, ones if calls is None else calls,
                   0 * ones if aborts is None else aborts)  # fmt: skip


def cascade(t: Table, b: Beliefs, costs: dict[str, UnitCosts], lam: float, opt: Options = Options()) -> Outcome:
    """Ours: the router's stopping rule replayed, early exit included (``router.policy``, ``router.cascade``)."""
    n = t.n_stages
    final = np.zeros(len(t.y), dtype=np.int64)
    calls = np.zeros(len(t.y), dtype=np.int64)
    aborts = np.zeros(len(t.y), dtype=np.int64)
    spent = {u: np.zeros(len(t.y)) for u in costs}
    alpha, beta = opt.risk
    risk = (b.evidence, alpha, beta)
    for i in range(len(t.y)):
        policy = StoppingPolicy(b.rule_cost[i].tolist(), b.priors[i].tolist(), lam, strength=opt.strength)
        stage: int | None = policy.start(opt.skip)
        lower: int | None = None  # the stage whose finished answer is in hand (its draft for the next)
        had_draft = False  # something (an answer or an aborted prefix) the next stage verifies
        while stage is not None:
            calls[i] += 1
            verified = opt.draft_reuse and had_draft
            if opt.early_exit and not verified and stage < n - 1:
                nxt = _judge_while_writing(t, b, i, stage, policy, risk)
                if nxt is not None:
                    k, stage_next = nxt
                    for u, c in costs.items():
                        spent[u][i] += c.at[i, stage, k]
                    aborts[i] += 1
                    had_draft = True
                    stage = stage_next
                    continue
            for u, c in costs.items():
                spent[u][i] += c.full[i, stage] - (c.saving[i, lower, stage] if verified and lower is not None else 0.0)
            final[i] = stage
            if opt.beliefs_after:
                policy.observe(stage, b.after[i, stage, stage + 1 :].tolist())
            d = policy.decide(stage, shrink(float(b.p_hat[i, stage]), *risk))
            lower, had_draft = stage, True
            stage = None if d.stop else d.next_stage
    return Outcome(final, t.y[np.arange(len(t.y)), final].astype(bool), spent, calls, aborts)


def _judge_while_writing(t: Table, b: Beliefs, i: int, stage: int, policy: StoppingPolicy,
                         risk: tuple[float, float, float]) -> tuple[int, int] | None:  # fmt: skip
    """The first checkpoint at which the rule aborts ``stage`` on task ``i``, and where it goes; None: it finishes."""
    cap = t.max_tokens[i]
    for k, c in enumerate(t.checkpoints):
        if not t.has_prefix[i, stage, k] or (cap and c >= cap) or math.isnan(b.prefix_q[i, stage, k]):
            return None
        d = policy.judge_prefix(stage, float(b.prefix_q[i, stage, k]), float(b.to_finish[i, stage, k]),
                                float(b.strengths[i, k]), risk)  # fmt: skip
        if d.abort and d.next_stage is not None:
            return k, d.next_stage
    return None


def single(t: Table, costs: dict[str, UnitCosts], s: int) -> Outcome:
    return _outcome(t, np.full(len(t.y), s), {u: c.full[:, s].copy() for u, c in costs.items()})


def oracle(t: Table, costs: dict[str, UnitCosts], unit: str) -> Outcome:
    """The cheapest stage that passes (in ``unit``; the top stage when none does)."""
    c = costs[unit].full
    masked = np.where(t.y.astype(bool), c, np.inf)
    final = np.where(t.y.any(axis=1), masked.argmin(axis=1), t.n_stages - 1)
    rows = np.arange(len(final))
    return _outcome(t, final, {u: cc.full[rows, final] for u, cc in costs.items()})


def threshold_cascade(t: Table, costs: dict[str, UnitCosts], thresholds: Sequence[float]) -> Outcome:
    """Stop at the first stage whose mean logprob >= its threshold (FrugalGPT / AutoMix style; the top always stops)."""
    n = t.n_stages
    final = np.full(len(t.y), n - 1)
    spent = {u: np.zeros(len(t.y)) for u in costs}
    open_ = np.ones(len(t.y), dtype=bool)
    calls = np.zeros(len(t.y), dtype=np.int64)
    for s in range(n):
        for u, c in costs.items():
            spent[u][open_] += c.full[open_, s]
        calls[open_] += 1
        if s == n - 1:
            break
        stop = open_ & (t.x[:, s, _MEAN] >= thresholds[s])
        final[stop] = s
        open_ &= ~stop
    return _outcome(t, final, spent, calls)


def prompt_router(t: Table, b: Beliefs, costs: dict[str, UnitCosts], lam: float) -> Outcome:
    """Pick one stage before generation (RouteLLM style): argmin expected cost + λ (1 - prior), on the same priors."""
    final = (b.rule_cost + lam * (1.0 - b.priors)).argmin(axis=1)
    rows = np.arange(len(final))
    return _outcome(t, final, {u: c.full[rows, final] for u, c in costs.items()})


def random_mix(points: list[dict[str, Any]], unit: str, targets: Sequence[float]) -> list[dict[str, Any]]:
    """The best random router at each target cost: mixing the two single stages that bracket it."""
    pts = sorted(points, key=lambda p: p[f"cost_{unit}"])
    out = []
    for c in targets:
        for a, z in zip(pts, pts[1:], strict=False):
            ca, cz = a[f"cost_{unit}"], z[f"cost_{unit}"]
            if ca <= c <= cz:
                w = (c - ca) / (cz - ca) if cz > ca else 0.0
                out.append({"policy": "random", "knob": w, "quality": (1 - w) * a["quality"] + w * z["quality"], f"cost_{unit}": c})
                break
    return out


def speculative(t: Table, costs: dict[str, UnitCosts], prices: Mapping[str, Sequence[TokenPrices]], rates: Sequence[reuse.StageRates],
                lookahead: int = SPEC_LOOKAHEAD) -> Outcome:  # fmt: skip
    """The top stage with speculative decoding from the stage below it, on every request: the top stage's answers.

    Per task, the drafter's per-token acceptance α is the share of the top stage's answer its draft gives it
    (``Table.draft_kept``); a round proposes ``lookahead`` tokens and yields (1 - α^(k+1)) / (1 - α) of them.
    Compute: the top stage's own (every token is still processed once by it) plus the drafter's proposals. Seconds:
    both read the prompt, then per round the drafter decodes k tokens and the top stage scores k + 1 in one pass
    (at its measured prefill rate, never less than one decode step).
    """
    n = t.n_stages
    top, drafter = n - 1, n - 2
    alpha = np.clip(t.draft_kept, 0.0, 0.999)
    per_round = (1 - alpha ** (lookahead + 1)) / (1 - alpha)
    out_tokens = t.output_tokens[:, top]
    rounds = np.ceil(out_tokens / per_round)
    proposed = rounds * lookahead
    spent: dict[str, np.ndarray] = {}
    if "compute" in costs:
        p = prices["compute"][drafter]
        spent["compute"] = costs["compute"].full[:, top] + p.prompt_token * t.prompt_tokens[:, drafter] + p.output_token * proposed
    if "seconds" in costs:
        rt, rd = rates[top], rates[drafter]
        step = np.maximum(rt.decode, (lookahead + 1) * rt.prefill)
        own_ttft = costs["seconds"].full[:, top] - rt.decode * out_tokens  # what the top stage spends besides decoding
        spent["seconds"] = np.maximum(own_ttft, 0.0) + rd.prefill * t.prompt_tokens[:, drafter] + rounds * (lookahead * rd.decode + step)
    return _outcome(t, np.full(len(t.y), top), spent)


def prices_of(settings: Settings) -> dict[str, list[TokenPrices]]:
    """Each reporting unit's prices from the ladder's config (``stages[i].prices.compute`` / ``.seconds``)."""
    out = {}
    for unit in UNITS:
        if all(unit in s.prices for s in settings.stages):
            out[unit] = [s.prices[unit] for s in settings.stages]
    missing = [u for u in UNITS if u not in out]
    if missing:
        raise ValueError(f"the ladder config gives no prices.{missing[0]} for every stage: the replay reports both units")
    return out


def table_costs(t: Table, settings: Settings) -> dict[str, UnitCosts]:
    """The costs a λ table reports: each of ``UNITS`` that the ladder prices every stage in, and the rule's own unit
    (``cascade.cost_unit``, which every stage is priced in), so that a ladder priced in its own unit alone (``cost``,
    ``usd``) calibrates and learns as one priced in both."""
    units = [u for u in UNITS if all(u in s.prices for s in settings.stages)]
    units += [settings.cascade.cost_unit] if settings.cascade.cost_unit not in units else []
    return {u: unit_costs(t, u, [s.prices[u] for s in settings.stages]) for u in units}


def sweep(fn: Callable[[float], Outcome], lambdas: Sequence[float], name: str) -> list[dict[str, Any]]:
    return [fn(lam).point(name, lam) for lam in lambdas]
