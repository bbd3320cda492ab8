"""A new family, replayed: how fast the learner closes the gap on a family it was never trained on.

For each collected family F (``run``):

1. **M0**: the four models fitted without F (``train.FoldPredictor`` on every other family's rows: their train
   split fits, their validation split calibrates), exactly the static leave-one-family-out model;
2. F's tasks are shuffled (seeded per family); the **first half is the stream**, the second half the **test**;
3. the stream is replayed in order through the router's rule (``replay.cascade`` at the config's default λ, in
   its cost unit) with the model in service, and each request yields the labels production would have:

   * **verification**: every answer the cascade finished and escalated from is verified by the next stage it
     called (draft reuse on, as configured); its label is that stage's agreement with it at
     ``AGREEMENT_THRESHOLD`` (a short answer: whether it is that stage's own text; ``router.labels.free_labels``).
     Aborted answers and the answer returned are not labelled;
   * **shadow**: an answer returned from a stage below the top is checked with probability ``rate`` by the stage
     above it (``router.shadow``); that check costs the checker's prompt processing of prompt + answer, priced
     as its prompt tokens in compute (2 x parameters x tokens);

4. every ``retrain_every`` labelled answers the models are refitted on (the rows without F) + (F's labels so
   far, with the label production gave them), as ``training learn`` refits a candidate on shipped + logged rows,
   and the candidate goes into service;
5. the test half is replayed with every model that was in service (M0 is the static LOFO figure; the last one
   the learned figure): quality (the checker's verdict, or top-stage agreement for open prompts: the replay's
   ``correct``) and compute, each against the top stage alone on the same tasks.

**Labels.** The collection ran each stage from scratch, so the agreement of stage i's answer with the stage j
that would have verified it is not measured there. ``label_source="agreement"`` (the default, closest to
production) takes it from the two collected texts with the draft-reuse replay (``reuse.replay``: the share of
i's characters that j's greedy answer keeps), except where j is the top stage and the collection measured that
agreement token by token (open prompts): then that one. ``"checker"`` uses the collection's label (the exact
checker's verdict), an upper bound on what production's labels can teach.

**Simplifications** (stated in the JSON's ``simplifications``): every refit is promoted (the learner's gate,
log-loss on the newest unseen labels, needs 50 of them; ``gate=True`` applies it with the learner's 20 %
hold-out and ``gate_min_eval`` labels); no validity labels (the collection has no tool-call or JSON-schema tasks); a shadow check's answer
tokens are the answering stage's token count (tokenizers differ slightly).

Per-family results are written to the output JSON as each family finishes, and a rerun with the same settings
resumes from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.serving.labels import agreement_label, label, same_answer
from training import dataset, learn, replay, reuse
from training.replay import BatchPredictor, Options, Table, UnitCosts

OUT_JSON = Path("bench/results/learning_curve.json")
OUT_PNG = Path("bench/results/learning_curve.png")
TARGET_POINTS = 1.0  # within this many points of the top stage
TARGET_COMPUTE = 0.77  # at most this share of the top stage's compute
TARGET_SHADOW = 0.05  # shadow checks at most this share of the top stage's compute
STATIC_LOFO = {"points_below_top": 2.1, "compute_vs_top": 0.92}  # the static figure (training evaluate, LOFO)
SIMPLIFICATIONS = [
    "every refit is promoted unless gate is on (the learner's gate needs 50 unseen labels, more than a stream has)",
    "verification agreement with a non-top verifier is estimated from the collected texts (reuse.replay), not scored",
    "no validity labels: the collection has no tool-call or JSON-schema tasks",
    "a shadow check's draft tokens are the answering stage's output tokens (the verifier's tokenizer may differ)",
]

Fitter = Callable[[dataset.Dataset, dataset.Prefixes, int], BatchPredictor]


@dataclass(frozen=True)
class Label:
    """One label production would have for a stream request: task row ``task`` (in the family's table), ``stage``."""

    task: int
    stage: int
    value: int
    source: str  # "verification" | "shadow"
    verifier: int
    weight: float = 1.0  # a shadow label's 1 / rate: it counts this many times in a refit (``training.learn``)


# -- one request's visits and labels --------------------------------------------------------------------------------


def visits(t: Table, b: replay.Beliefs, costs: dict[str, UnitCosts], lam: float,
           opt: Options) -> tuple[replay.Outcome, np.ndarray, np.ndarray]:  # fmt: skip
    """``replay.cascade`` on ``t``, and per task and stage whether the stage finished an answer / was aborted.

    Not a second replay: the cascade is run once with two indicator "units" per stage added to ``costs`` (a finished
    answer of stage s costs 1 in ``finished s``, an abort 1 in ``aborted s``), so what it spent in them is its path.
    """
    n = t.n_stages
    ind = dict(costs)
    zeros_full, zeros_at = np.zeros_like(t.y, dtype=np.float64), np.zeros((len(t.y), n, len(t.checkpoints)))
    for s in range(n):
        full = zeros_full.copy()
        full[:, s] = 1.0
        at = zeros_at.copy()
        at[:, s, :] = 1.0
        ind[f"finished {s}"] = UnitCosts(full, zeros_at, np.zeros((len(t.y), n, n)))
        ind[f"aborted {s}"] = UnitCosts(zeros_full, at, np.zeros((len(t.y), n, n)))
    out = replay.cascade(t, b, ind, lam, opt)
    finished = np.stack([out.spent.pop(f"finished {s}") > 0.5 for s in range(n)], axis=1)
    aborted = np.stack([out.spent.pop(f"aborted {s}") > 0.5 for s in range(n)], axis=1)
    return out, finished, aborted


def request_labels(task: int, finished: Sequence[bool], final: int, n_stages: int, draft_reuse: bool, shadow: bool,
                   agree: Callable[[int, int, int], int], rate: float = 1.0) -> list[Label]:  # fmt: skip
    """The labels one request gives production (``router.labels.free_labels`` + ``router.shadow``): each finished
    answer below the returned one, verified by the next stage that answered (draft reuse only); and, when
    ``shadow`` was drawn (at ``rate``), the returned answer checked by the stage above it, weighing 1 / ``rate``.
    ``agree(task, stage, verifier)``."""
    out = []
    done = [s for s in range(n_stages) if finished[s]]
    if draft_reuse:
        for s, above in zip(done, done[1:], strict=False):
            out.append(Label(task, s, agree(task, s, above), "verification", above))
    if shadow and final + 1 < n_stages:
        out.append(Label(task, final, agree(task, final, final + 1), "shadow", final + 1, 1.0 / rate))
    return out


def shadow_cost(t: Table, task: int, stage: int, prompt_prices: Sequence[float], verifier: int | None = None) -> float:
    """Compute of the verifier (default stage+1) reading the prompt and stage's answer (prompt tokens at its
    prompt-token price)."""
    v = stage + 1 if verifier is None else verifier
    return float(prompt_prices[v] * (t.prompt_tokens[task, v] + t.output_tokens[task, stage]))


class Agreement:
    """Production's label for stage i's answer verified by stage j (module docstring), or the checker's label."""

    def __init__(self, rows: dict[str, dict[str, Any]], tasks: np.ndarray, n_stages: int, source: str = "agreement") -> None:
        if source not in ("agreement", "checker"):
            raise ValueError(f"unknown label source {source!r}")
        self.rows, self.tasks, self.n, self.source = rows, tasks, n_stages, source

    def __call__(self, task: int, stage: int, verifier: int) -> int:
        stages = {s["stage"]: s for s in self.rows[str(self.tasks[task])]["stages"]}
        if self.source == "checker":
            y = label(stages[stage])
            return int(y) if y is not None else 0
        answer, own = stages[stage].get("text") or "", stages[verifier].get("text") or ""
        if verifier == self.n - 1 and stages[stage].get("agreement") is not None:
            agreement = float(stages[stage]["agreement"])
        else:
            agreement = reuse.agreement(own, answer)
        return agreement_label(agreement, answer, same_answer(answer, own))  # a verifier's answer is its own greedy one


# -- training rows ----------------------------------------------------------------------------------------------------


def _concat(a: dataset.Dataset, b: dataset.Dataset) -> dataset.Dataset:
    cat = {f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(a) if f.name != "n_stages"}
    return dataset.Dataset(**cat, n_stages=a.n_stages)


def _concat_prefixes(a: dataset.Prefixes, b: dataset.Prefixes) -> dataset.Prefixes:
    return dataset.Prefixes(**{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(a)})


def training_rows(data: dataset.Dataset, prefixes: dataset.Prefixes, family: str, labels: Sequence[Label],
                  tasks: np.ndarray) -> tuple[dataset.Dataset, dataset.Prefixes]:  # fmt: skip
    """(rows without ``family``) + the gathered ``labels`` (``labelled_rows``)."""
    base, base_pre = data.where(data.family != family), prefixes.where(prefixes.family != family)
    if not labels:
        return base, base_pre
    got, got_pre = labelled_rows(data, prefixes, labels, tasks)
    return _concat(base, got), _concat_prefixes(base_pre, got_pre)


def labelled_rows(data: dataset.Dataset, prefixes: dataset.Prefixes, labels: Sequence[Label], tasks: np.ndarray,
                  split: Callable[[str], str] | None = None) -> tuple[dataset.Dataset, dataset.Prefixes]:  # fmt: skip
    """The answers ``labels`` name (task index into ``tasks``, stage), with the label production gave them, each
    repeated its label's weight, rounded (a shadow label's 1 / rate, whole at the rates replayed; the learner
    resamples fractional weights, ``training.learn.resampled``); ``split(task id)`` reassigns their split, as the
    traffic log does (None: the collection's)."""
    at = {(str(t), int(s)): i for i, (t, s) in enumerate(zip(data.task, data.stage, strict=True))}
    latest = {(str(tasks[lb.task]), lb.stage): lb for lb in labels}  # a later label of the same answer wins
    times = {k: max(1, round(lb.weight)) for k, lb in latest.items()}
    keys = [k for k in latest if k in at for _ in range(times[k])]
    ix = np.array([at[k] for k in keys], dtype=np.int64)
    got = dataclasses.replace(data.where(ix), y=np.array([latest[k].value for k in keys], dtype=np.int64))
    pre_keys = [(str(t), int(s)) for t, s in zip(prefixes.task, prefixes.stage, strict=True)]
    pix = np.array([i for i, k in enumerate(pre_keys) if k in latest for _ in range(times[k])], dtype=np.int64)
    got_pre = dataclasses.replace(prefixes.where(pix), y=np.array([latest[pre_keys[i]].value for i in pix], dtype=np.int64))
    if split is not None:
        got = dataclasses.replace(got, split=np.array([split(str(t)) for t in got.task]))
        got_pre = dataclasses.replace(got_pre, split=np.array([split(str(t)) for t in got_pre.task]))
    return got, got_pre


def fold_fitter(evidence: float) -> Fitter:
    from training import train

    return lambda d, p, seed: train.FoldPredictor(d, p, seed, evidence)


# -- one family -------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every family's replay shares."""

    full: Table
    costs: dict[str, UnitCosts]  # the reporting units
    rule_prices: list[Any]
    prompt_prices: list[float]  # compute per prompt token, per stage (shadow checks)
    data: dataset.Dataset
    prefixes: dataset.Prefixes
    agree: Agreement
    lam: float
    opt: Options


def _test_point(s: Setup, sel: np.ndarray, model: BatchPredictor) -> dict[str, float]:
    t = s.full.rows(sel)
    costs = {"compute": _rows(s.costs["compute"], sel)}
    out = replay.cascade(t, replay.beliefs(t, model, s.rule_prices), costs, s.lam, s.opt)
    top = t.n_stages - 1
    return {"tasks": int(len(t.y)), "correct": int(out.correct.sum()), "top_correct": int(t.y[:, top].sum()),
            "compute": float(out.spent["compute"].sum()), "top_compute": float(costs["compute"].full[:, top].sum())}  # fmt: skip


def _rows(c: UnitCosts, sel: np.ndarray) -> UnitCosts:
    return UnitCosts(c.full[sel], c.at[sel], c.saving[sel])


def _gate(s: Setup, served: BatchPredictor, candidate_fit: Callable[[Sequence[Label]], BatchPredictor], labels: Sequence[Label],
          min_eval: int) -> BatchPredictor | None:  # fmt: skip
    """The learner's decision: hold out the newest 20 % of the labels, fit on the rest, promote on lower log-loss."""
    from training.train import _log_loss

    cut = learn.holdout_start(len(labels))
    older, newest = labels[:cut], labels[cut:]
    if len(newest) < min_eval:
        return None
    cand = candidate_fit(older)
    x = np.stack([s.full.x[lb.task, lb.stage] for lb in newest])
    y = np.array([lb.value for lb in newest], dtype=np.float64)

    return cand if _log_loss(y, cand.predict_batch(x)) < _log_loss(y, served.predict_batch(x)) else None


def halves(idx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A family's tasks (``idx``) shuffled: the first half is the stream (in its order), the second the test (sorted)."""
    order = idx[rng.permutation(len(idx))]
    half = len(order) // 2
    return order[:half], np.sort(order[half:])


def family_run(s: Setup, family: str, fitter: Fitter, rate: float, retrain_every: int, seed: int, gate: bool = False,
               gate_min_eval: int = 5, explore: float = 0.0, tour: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """One family replayed (module docstring); the JSON-ready record, with the labels gathered.

    ``explore`` (not in the router: what it would take): a request the top stage answered with no lower stage
    finished is, with this probability, also answered by one lower stage it skipped or aborted (drawn uniformly), which
    the top stage verifies (its label by agreement with the top); that costs the lower stage's whole answer plus the
    top stage's prompt processing of prompt + that answer, counted apart from the shadow checks.

    ``tour`` (``cascade.explore.rate``): a request tours the ladder with this probability: every stage answers in
    order, each verified by the next (a label for every lower stage), and the top's answer is returned; its compute
    is every stage's (``tour_compute``: beyond the top's)."""
    t0 = time.perf_counter()
    idx = np.flatnonzero(s.full.family == family)
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    stream, test = halves(idx, rng)
    n = s.full.n_stages

    def fit(labels: Sequence[Label]) -> BatchPredictor:
        d, p = training_rows(s.data, s.prefixes, family, labels, s.full.task)
        return fitter(d, p, seed)

    model = fit([])
    points = [{"seen": 0, "labels": 0, **_test_point(s, test, model)}]
    labels: list[Label] = []
    since, refits, promoted = 0, 0, 0
    stream_rec = {"correct": 0, "compute": 0.0, "top_compute": 0.0, "shadow_compute": 0.0, "shadow_checks": 0,
                  "verification_labels": 0, "shadow_labels": 0, "explore_compute": 0.0, "explore_labels": 0, "tours": 0,
                  "tour_compute": 0.0}  # fmt: skip
    one = {"compute": s.costs["compute"]}
    requests: list[dict[str, Any]] = []
    for k, i in enumerate(stream.tolist()):
        sel = np.array([i])
        t = s.full.rows(sel)
        if tour > 0 and bool(rng.random() < tour):  # cascade.explore: every stage in order, the top's answer returned
            final, correct, cost, drawn = n - 1, int(s.full.y[i, n - 1]), float(s.costs["compute"].full[i].sum()), False
            finished_row, aborted_row = [True] * n, [False] * n
            got = request_labels(i, finished_row, final, n, True, False, s.agree)
            stream_rec["tours"] += 1
            stream_rec["tour_compute"] += cost - float(s.costs["compute"].full[i, n - 1])
        else:
            b = replay.beliefs(t, model, s.rule_prices)
            out, finished, aborted = visits(t, b, {u: _rows(c, sel) for u, c in one.items()}, s.lam, s.opt)
            final, correct, cost = int(out.final[0]), int(out.correct[0]), float(out.spent["compute"][0])
            finished_row, aborted_row = finished[0].tolist(), aborted[0].tolist()
            drawn = final + 1 < n and bool(rng.random() < rate)
            got = request_labels(i, finished_row, final, n, s.opt.draft_reuse, drawn, s.agree, rate)
        explored = None
        lower = [j for j in range(n - 1) if not finished_row[j]]
        if explore > 0 and final == n - 1 and not got and lower and rng.random() < explore:
            explored = int(rng.choice(lower))
            got.append(Label(i, explored, s.agree(i, explored, n - 1), "explore", n - 1))
            stream_rec["explore_labels"] += 1
            stream_rec["explore_compute"] += float(s.costs["compute"].full[i, explored]) + shadow_cost(
                s.full, i, explored, s.prompt_prices, n - 1
            )
        labels += got
        requests.append({"task": str(s.full.task[i]), "final": final, "finished": finished_row, "aborted": aborted_row,
                         "shadow": drawn, "explored": explored, "labels": len(got)})  # fmt: skip
        since += len(got)
        stream_rec["correct"] += correct
        stream_rec["compute"] += cost
        stream_rec["top_compute"] += float(s.costs["compute"].full[i, n - 1])
        if drawn:
            stream_rec["shadow_checks"] += 1
            stream_rec["shadow_compute"] += shadow_cost(s.full, i, final, s.prompt_prices)
        stream_rec["verification_labels"] += sum(lb.source == "verification" for lb in got)
        stream_rec["shadow_labels"] += sum(lb.source == "shadow" for lb in got)
        if since >= retrain_every:
            since, refits = 0, refits + 1
            new = _gate(s, model, fit, labels, gate_min_eval) if gate else fit(labels)
            if new is not None:
                model, promoted = new, promoted + 1
                points.append({"seen": k + 1, "labels": len(labels), **_test_point(s, test, model)})
    final_point = points[-1]
    return {"family": family, "tasks": int(len(idx)), "stream": int(len(stream)), "test": int(len(test)), "refits": refits,
            "promoted": promoted, "stream_replay": stream_rec, "points": points, "static": points[0], "learned": final_point,
            "labels": [dataclasses.asdict(lb) | {"task": str(s.full.task[lb.task])} for lb in labels], "requests": requests,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


# -- aggregate --------------------------------------------------------------------------------------------------------


def figures(p: dict[str, Any]) -> dict[str, float]:
    """Quality, the top's quality, the gap in points and compute against the top stage, of a (pooled) test point."""
    q, top = p["correct"] / p["tasks"], p["top_correct"] / p["tasks"]
    return {"quality": q, "top_quality": top, "points_below_top": 100 * (top - q), "compute_vs_top": p["compute"] / p["top_compute"]}


def _pool(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = ("tasks", "correct", "top_correct", "compute", "top_compute")
    return {k: sum(p[k] for p in points) for k in keys}


def at_seen(fam: dict[str, Any], n: int) -> dict[str, Any]:
    """The family's test point with the model in service after ``n`` requests (its last one beyond its stream)."""
    point: dict[str, Any] = [p for p in fam["points"] if p["seen"] <= n][-1]
    return point


def aggregate(fams: Sequence[dict[str, Any]]) -> dict[str, Any]:
    static, learned = _pool([f["static"] for f in fams]), _pool([f["learned"] for f in fams])
    st = {k: sum(f["stream_replay"][k] for f in fams) for k in fams[0]["stream_replay"]}
    longest = max(f["stream"] for f in fams)
    curve = []
    for n in range(longest + 1):
        pooled = _pool([at_seen(f, n) for f in fams])
        curve.append({"seen": n, "families_still_streaming": sum(f["stream"] >= n for f in fams), **figures(pooled),
                      "mean_points_below_top": float(np.mean([figures(at_seen(f, n))["points_below_top"] for f in fams])),
                      "mean_compute_vs_top": float(np.mean([figures(at_seen(f, n))["compute_vs_top"] for f in fams]))})  # fmt: skip
    reached = next((c["seen"] for c in curve if c["points_below_top"] <= TARGET_POINTS and c["compute_vs_top"] <= TARGET_COMPUTE), None)
    lf, sf = figures(learned), figures(static)
    shadow_share = st["shadow_compute"] / st["top_compute"] if st["top_compute"] else 0.0
    return {
        "families": len(fams),
        "test_tasks": static["tasks"],
        "static": sf,
        "learned": lf,
        "mean_over_families": {
            "static": {k: float(np.mean([figures(f["static"])[k] for f in fams])) for k in sf},
            "learned": {k: float(np.mean([figures(f["learned"])[k] for f in fams])) for k in lf},
        },
        "stream": {
            **st,
            "quality": st["correct"] / sum(f["stream"] for f in fams),
            "compute_vs_top": st["compute"] / st["top_compute"],
            "shadow_compute_vs_top": shadow_share,
            "explore_compute_vs_top": st.get("explore_compute", 0.0) / st["top_compute"] if st["top_compute"] else 0.0,
            "tour_compute_vs_top": st.get("tour_compute", 0.0) / st["top_compute"] if st["top_compute"] else 0.0,
        },  # fmt: skip
        "targets": {
            "within_points": TARGET_POINTS,
            "compute_vs_top": TARGET_COMPUTE,
            "shadow_vs_top": TARGET_SHADOW,
            "met": lf["points_below_top"] <= TARGET_POINTS and lf["compute_vs_top"] <= TARGET_COMPUTE and shadow_share <= TARGET_SHADOW,
            "first_requests_seen_meeting_quality_and_compute": reached,
        },  # fmt: skip
        "curve": curve,
    }


# -- run --------------------------------------------------------------------------------------------------------------


def _config_key(**kw: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}


def setup(data_path: Path, config: Path | None, label_source: str, lam: float | None) -> Setup:
    from common.settings import load_settings
    from training import train
    from training.tasks import registry

    settings = load_settings(config)
    prices = replay.prices_of(settings)
    max_tokens = {t.id: t.max_tokens for t in registry.build("mix")}
    full = replay.table(data_path, train.CHECKPOINTS, max_tokens)
    rows = {r["task"]: r for r in dataset.read_rows(data_path)}
    return Setup(full, {"compute": replay.unit_costs(full, "compute", prices["compute"])},
                 [st.price(settings.cascade.cost_unit) for st in settings.stages], [p.prompt_token for p in prices["compute"]],
                 dataset.load(data_path), dataset.prefixes(data_path, train.CHECKPOINTS),
                 Agreement(rows, full.task, full.n_stages, label_source),
                 settings.cascade.default_lambda if lam is None else lam, Options.of(settings))  # fmt: skip


def run(data_path: Path = Path("data/cpu/collect.jsonl"), out_json: Path = OUT_JSON, out_png: Path | None = OUT_PNG,
        config: Path | None = None, families: Sequence[str] | None = None, rate: float = 0.1, retrain_every: int = 20,
        seed: int = 0, label_source: str = "agreement", lam: float | None = None, gate: bool = False,
        fitter: Fitter | None = None, progress: bool = True, resume: bool = True, explore: float = 0.0,
        tour: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Every family (or ``families``) replayed; the JSON (written after each family: resumable) and the PNG."""
    from tqdm import tqdm

    s = setup(data_path, config, label_source, lam)
    fitter = fitter or fold_fitter(50.0)
    names = sorted(set(s.full.family.tolist())) if not families else list(families)
    key = _config_key(data=data_path.name, rate=rate, retrain_every=retrain_every, seed=seed, label_source=label_source,
                      lam=s.lam, gate=gate, rule_unit="compute", explore=explore, **({"tour": tour} if tour else {}))  # fmt: skip
    done: dict[str, Any] = {}
    if resume and out_json.is_file():
        prev = json.loads(out_json.read_text())
        if prev.get("config") == key:
            done = dict(prev.get("per_family") or {})
    result: dict[str, Any] = {"config": key, "simplifications": SIMPLIFICATIONS, "static_lofo_issue": STATIC_LOFO,
                              "families_run": names, "per_family": done}  # fmt: skip
    t0 = time.perf_counter()
    with tqdm(total=len(names), disable=not progress, unit="family", desc="learning curve") as bar:
        for fam in names:
            bar.set_postfix_str(fam)
            if fam not in done:
                done[fam] = family_run(s, fam, fitter, rate, retrain_every, seed, gate, explore=explore, tour=tour)
                _write(out_json, result)
            bar.update()
    fams = [done[f] for f in names]
    result["aggregate"] = aggregate(fams)
    result["per_family_summary"] = {f["family"]: {"static": figures(f["static"]), "learned": figures(f["learned"]),
                                                  "labels": len(f["labels"]), "refits": f["refits"], "stream": f["stream"],
                                                  "test": f["test"],
                                                  "shadow_compute_vs_top": f["stream_replay"]["shadow_compute"]
                                                  / f["stream_replay"]["top_compute"]} for f in fams}  # fmt: skip
    result["seconds"] = round(sum(f["seconds"] for f in fams), 1)
    result["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    _write(out_json, result)
    if out_png is not None:
        plot(result, out_png)
    return result


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def _variant_name(cfg: dict[str, Any]) -> str:
    out = f"shadow {cfg['rate']:g}, refit every {cfg['retrain_every']}, {cfg['label_source']} labels"
    out += f", explore {cfg['explore']:g}" if cfg.get("explore") else ""
    return out + (f", tours {cfg['tour']:g}" if cfg.get("tour") else "") + (", gated" if cfg.get("gate") else "")


def merge(main_json: Path, variants: Sequence[Path], png: Path | None) -> dict[str, Any]:
    """Add other runs' settings, aggregates and per-family summaries to ``main_json`` as ``variants`` (and replot)."""
    result: dict[str, Any] = json.loads(main_json.read_text())
    result["variants"] = result.get("variants") or {}
    for v in variants:
        other = json.loads(v.read_text())
        result["variants"][_variant_name(other["config"])] = {k: other[k] for k in ("config", "aggregate", "per_family_summary", "seconds")}
    _write(main_json, result)
    if png is not None:
        plot(result, png)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = result["aggregate"]
    runs = {_variant_name(result["config"]): agg} | {k: v["aggregate"] for k, v in (result.get("variants") or {}).items()}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, a in runs.items():
        c = a["curve"]
        seen = [p["seen"] for p in c]
        share = 100 * (a["stream"]["shadow_compute_vs_top"] + a["stream"].get("explore_compute_vs_top", 0.0)
                       + a["stream"].get("tour_compute_vs_top", 0.0))  # fmt: skip
        line = axes[0].step(
            seen, [-p["points_below_top"] for p in c], where="post", label=f"{name}, {a['families']} families (labels cost {share:.1f} %)"
        )
        axes[1].step(seen, [p["compute_vs_top"] for p in c], where="post", color=line[0].get_color(), label=name)
    axes[0].axhline(-TARGET_POINTS, color="green", ls=":", label=f"target: within {TARGET_POINTS:g} point")
    axes[0].axhline(-STATIC_LOFO["points_below_top"], color="red", ls=":", label="static LOFO, all tasks (issue)")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("quality vs the top stage (points; pooled test halves)")
    axes[1].axhline(TARGET_COMPUTE, color="green", ls=":", label=f"target: {TARGET_COMPUTE:g}x")
    axes[1].axhline(STATIC_LOFO["compute_vs_top"], color="red", ls=":", label="static LOFO, all tasks (issue)")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_ylabel("compute vs the top stage alone (pooled test halves)")
    for ax in axes:
        ax.set_xlabel("requests of the new family seen (the model in service then, on its second half)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"a new family, replayed: {agg['families']} families, {agg['test_tasks']} test tasks, λ {result['config']['lam']:g} "
                 "(compute); a family past its stream keeps its last model", fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.learning_curve", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/cpu/collect.jsonl"))
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT_JSON)
    ap.add_argument("--png", type=Path, default=OUT_PNG)
    ap.add_argument("--rate", type=float, default=0.1, help="shadow check rate")
    ap.add_argument("--retrain-every", type=int, default=20, help="refit after this many new labelled answers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="*", default=None, help="a subset (default: every family)")
    ap.add_argument("--labels", choices=("agreement", "checker"), default="agreement")
    ap.add_argument("--lam", type=float, default=None, help="λ (default: the config's default_lambda)")
    ap.add_argument("--gate", action="store_true", help="promote a refit only on lower log-loss on the newest labels")
    ap.add_argument("--explore", type=float, default=0.0, help="rate of lower-stage answers verified by the top (not in the router)")
    ap.add_argument("--tour", type=float, default=0.0, help="rate of requests that tour the whole ladder (cascade.explore.rate)")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="add these runs' JSON to --out as variants; no run")
    a = ap.parse_args(argv)
    if a.merge:
        merge(a.out, a.merge, a.png)
        return
    res = run(a.data, a.out, a.png, a.config, a.families, a.rate, a.retrain_every, a.seed, a.labels, a.lam, a.gate,
              resume=not a.no_resume, explore=a.explore, tour=a.tour)  # fmt: skip
    agg = res["aggregate"]
    print(json.dumps({k: agg[k] for k in ("families", "test_tasks", "static", "learned", "stream", "targets")}, indent=1))


if __name__ == "__main__":
    main()
