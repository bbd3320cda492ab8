"""Learn a ladder from its own traffic: refit on shipped plus logged rows, promote only a model that does better.

The router labels its traffic as it works (``router.labels``, ``router.shadow``)
and, with ``predictor.log_path``, logs each labelled answer with what it takes to
recompute its features (``router.traffic_log``). ``learn`` turns those logs into
a model, in a **registry**: a folder of versions (``v0001``, ``v0002``, ...; each
a whole model directory, never changed once written) and a ``current`` file that
names the version in service. Point ``predictor.path`` at the registry and every
replica loads a newly promoted version by itself (``router.model_reload``).

One ``learn`` run:

1. reads the labelled rows of the logs given (one per replica, or a shared file):
   a row's time orders them (rows without one keep their order in the log);
2. keeps the newest ``holdout`` share of them aside, the **evaluation rows**: only
   rows newer than what the model in service trained on count, so that neither
   model has seen them (fewer than ``min_eval`` such rows: no decision);
3. fits a **candidate** on the shipped collection plus the older logged rows (the
   answer, belief, prior and prefix models, calibrated, as ``training train``
   does) and re-derives its λ table for tenants' targets on the shipped
   collection's validation split (``training calibrate``: only the collection
   has every stage's answer to every task, which a replay needs);
4. **promotes** it only if its log-loss on the evaluation rows is lower than the
   model in service's by at least ``margin``, and, where the log holds enough
   tours outside the train split (``calibrate.tours_needed``; ``cascade.explore``:
   requests every stage answered, which no model fitted), the rule replayed on
   them with the candidate costs no more than with the model in service, beyond
   ``cost_margin``, at matched quality: the quality ``cascade.default_target``
   asks for, or the one the served model reaches at its λ in force; each model
   at its cheapest λ reaching it (agreement with the top stage;
   ``calibrate.matched_cost``). The card (``card.json``) keeps the lineage:
   parent version, rows trained on, the time trained up to, both models'
   evaluation figures.

   A rejected candidate leaves the served version in service; if it has no λ
   table (promoted before the tours could resolve the default target) and the
   tours now can, it gets one, as a new version of the same model
   (``_recalibrated``).

``rollback`` points ``current`` back at the parent of the version in service (or
at a version named). The first ``learn`` on an empty registry seeds it with the
base model (the shipped one by default) as ``v0001``.

**Weights.** A shadow check's row carries ``weight``, 1 / the rate it was sampled at:
returned answers are checked at that rate while escalated ones are all labelled
by verification, so unweighted rows would over-represent the answers the
cascade escalated. Both the fit and the decision count each row ``weight``
times in expectation (``resampled``: importance resampling, seeded, so that the
four models' learners need no sample weights of their own).

**A new ladder** (``shipped`` None, ``--data none``): no collection of this ladder
exists, so the candidate is fitted on the logged rows alone, with their own splits
(the traffic log draws them from each row's id). No checker judged them: the label
is agreement with a higher stage, so the top stage's own logged answers are the
reference, labelled 1 (``label(..., reference=True)``); they train the models but
never decide (they are 1 by definition). Its λ table comes from the logged
**tours** outside the train split (``calibrate.tour_table``: every stage answered
those, and accuracy there is agreement with the top stage), so that targets, the
router's ``cascade.default_target`` among them, are met in agreement; with fewer
than ``calibrate.tours_needed`` of them (enough to resolve the default target: 100
for ``within_points: 1``) the candidate has no table, and the router uses
``cascade.default_lambda`` and goes on touring at ``explore.untrained_rate``. The registry starts empty and, until its first
promotion, the model in service is the config's baseline (``predictor.kind:
baseline`` with ``predictor.path`` at the registry: ``predictor.serving.loader``).

Without tours (``cascade.explore.rate`` 0, the shipped CPU config) the decision is
log-loss alone: other rows hold only the stages the cascade visited, which a
replay of other decisions cannot use.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.settings import Settings
from predictor.serving.calibration import LambdaTable
from predictor.serving.labels import label
from predictor.serving.loader import CURRENT_FILE, baseline_predictor
from predictor.serving.runtime import OnnxPredictor
from training import dataset
from training.replay import BaselineBatch, Table

CARD_FILE = "card.json"
LINEAGE_KEY = "lineage"
DEFAULT_HOLDOUT = 0.2  # the newest share of the labelled logged rows that the decision is made on
DEFAULT_MIN_EVAL = 50  # fewer unseen labelled answers than this: no decision
DEFAULT_MARGIN = 0.0  # the candidate's log-loss must be lower than the served model's by at least this
DEFAULT_COST_MARGIN = 0.0  # its replayed cost at the matched quality may exceed the served model's by this share


# -- the registry ---------------------------------------------------------------------------------------------------


def versions(registry: Path) -> list[str]:
    """The registry's versions, oldest first."""
    return sorted(p.name for p in registry.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())


def current(registry: Path) -> str | None:
    """The version in service (None: an empty registry)."""
    path = registry / CURRENT_FILE
    return path.read_text().strip() if path.is_file() else None


def point(registry: Path, version: str) -> None:
    """Put ``version`` in service: ``current`` rewritten atomically (a replica reads the old name or the new one)."""
    if version not in versions(registry):  # a name `current` can hold (not "v0001/", "..", a stray directory)
        raise ValueError(f"{registry} has no version {version!r} (versions: {', '.join(versions(registry)) or 'none'})")
    tmp = registry / f".{CURRENT_FILE}.{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, registry / CURRENT_FILE)


def lineage(registry: Path, version: str) -> dict[str, Any]:
    """What a version's card says of where it came from."""
    card = json.loads((registry / version / CARD_FILE).read_text())
    return dict(card.get(LINEAGE_KEY) or {})


def _add_version(registry: Path, model: Path, record: dict[str, Any]) -> str:
    """Copy ``model`` in as the next version, its lineage ``record`` written into its card; returns the version."""
    existing = versions(registry)
    version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=registry))
    shutil.copytree(model, staging, dirs_exist_ok=True)
    card_path = staging / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card[LINEAGE_KEY] = {"version": version, **record}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(staging, registry / version)  # whole or absent: a replica never loads a half-copied version
    return version


def seed(registry: Path, base: Path) -> str:
    """An empty registry gets ``base`` as its first version, in service."""
    registry.mkdir(parents=True, exist_ok=True)
    version = _add_version(registry, base, {"parent": None, "source": str(base), "created": round(time.time(), 3)})
    point(registry, version)
    return version


BASELINE = "baseline"  # ``rollback --to baseline``: a new ladder's registry back to no version (the baseline serves)


def rollback(registry: Path, to: str | None = None) -> str:
    """Put the served version's parent (or ``to``) back in service; returns the version now in service. ``to``
    ``baseline``: a new ladder's registry names no version any more, and its routers (``predictor.kind: baseline``)
    serve the baseline again."""
    served = current(registry)
    if served is None:
        raise ValueError(f"{registry} has no version in service")
    if to == BASELINE:
        first = versions(registry)[0]
        record = lineage(registry, first)
        if record.get("parent") is not None or (record.get("trained_on") or {}).get("collection", "") is not None:
            raise ValueError(f"--to baseline is for a new ladder's registry, whose first version learned from its traffic "
                             f"alone; {first} here is {record.get('source') or 'a trained model'}: routers serving it "
                             f"(predictor.kind onnx) would have no model left to load. Name a version with --to")  # fmt: skip
        (registry / CURRENT_FILE).unlink()
        return BASELINE
    target = to or lineage(registry, served).get("parent")
    if not target:
        raise ValueError(f"{served} has no parent to roll back to; name a version with --to (or --to baseline on a new ladder)")
    point(registry, target)
    return str(target)


# -- the logged rows ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedRow:
    """A logged request with at least one labelled answer, and when it was logged (or where, for rows without a time)."""

    row: dict[str, Any]
    order: tuple[float, int]


def labelled_rows(logs: Iterable[Path], reference: int | None = None) -> list[LoggedRow]:
    """Every logged row with a labelled answer (or, with ``reference``, an answer of that stage: the top), oldest
    first."""
    out = []
    for n, path in enumerate(logs):
        for i, row in enumerate(dataset.read_rows(path)):
            if _judged(row) or any(s.get("stage") == reference for s in row.get("stages") or ()):
                out.append(LoggedRow(row, (float(row.get("time") or 0.0), n * 10**9 + i)))
    return sorted(out, key=lambda r: r.order)


def _judged(row: dict[str, Any]) -> bool:
    """Whether a logged row has an answer a higher stage (or a checker) judged."""
    return any(label(s) is not None for s in row.get("stages") or ())


def with_reference(row: dict[str, Any], top: int) -> dict[str, Any]:
    """``row`` with its top-stage answer labelled as the reference (module docstring, "A new ladder"): its
    agreement with itself, 1."""
    stages = [{**s, "agreement": 1.0} if s.get("stage") == top and label(s) is None and label(s, reference=True) else s
              for s in row.get("stages") or ()]  # fmt: skip
    return {**row, "stages": stages}


def resampled(rows: Iterable[dict[str, Any]], seed_: int = 0) -> Iterator[dict[str, Any]]:
    """Each row ``weight`` times in expectation (its whole part, plus one more with the probability of the rest);
    a row without a weight once. A shadow check's row carries its weight on its stage answer (``TrafficLog.record``),
    a hand-made row may carry it on the row: the larger counts."""
    rng = np.random.default_rng(seed_)
    for row in rows:
        w = max([float(row.get("weight") or 1.0)] + [float(s.get("weight") or 1.0) for s in row.get("stages") or ()])
        whole = int(w)
        for _ in range(whole + int(rng.random() < w - whole)):
            yield row


def _write(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def _concat(paths: Iterable[Path], out: Path) -> Path:
    with out.open("w") as f:
        for p in paths:
            for row in dataset.read_rows(p):
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
    return out


# -- learn ------------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one ``learn`` run decided, and why."""

    promoted: bool
    reason: str
    served: str | None
    candidate: str | None = None
    evaluation_rows: int = 0
    log_loss: dict[str, float] = field(default_factory=dict)
    trained_rows: dict[str, int] = field(default_factory=dict)
    calibration: str = ""  # a new ladder: where the candidate's λ table came from, or why it has none
    replayed: dict[str, Any] = field(default_factory=dict)  # the rule replayed on the held tours (``calibrate.matched_cost``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_start(n: int, holdout: float = DEFAULT_HOLDOUT) -> int:
    """Where the newest ``holdout`` share of ``n`` labelled rows begins (at least one row is held out): the rows a
    promotion is decided on. The learner and its replays cut the same way."""
    return n - max(1, math.ceil(holdout * n))


def log_loss(model: Path | None, rows_path: Path, settings: Settings | None = None) -> tuple[float, int]:
    """The answer model's log-loss on the labelled answers of ``rows_path``, and how many there are; ``model`` None:
    the baseline of ``settings`` (a new ladder's model in service before its first promotion)."""
    from training.train import _log_loss

    data = dataset.load(rows_path)
    if model is None:
        assert settings is not None
        baseline = baseline_predictor(settings)
        p = np.array([baseline.predict(x) for x in data.x])
    else:
        p = OnnxPredictor.load(model).predict_batch(data.x)
    return _log_loss(data.y.astype(np.float64), p), len(data.y)


def learn(
    registry: Path,
    logs: list[Path],
    shipped: Path | None,
    base: Path | None,
    config: Path | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    min_eval: int = DEFAULT_MIN_EVAL,
    margin: float = DEFAULT_MARGIN,
    seed_: int = 0,
    cost_margin: float = DEFAULT_COST_MARGIN,
) -> Outcome:
    """One learning round (module docstring); ``shipped`` None: a new ladder, learned from its traffic alone."""
    from common.settings import load_settings
    from training import calibrate, train

    new_ladder = shipped is None
    if new_ladder and config is None:
        raise ValueError("a new ladder (no collection) needs its config: which stage is the top, and its baseline")
    settings = load_settings(config)
    if current(registry) is None and not new_ladder:
        if base is None:
            raise ValueError("an empty registry starts from a base model: name one, or learn a new ladder (shipped None)")
        seed(registry, base)
    registry.mkdir(parents=True, exist_ok=True)
    served = current(registry)
    served_name = served or "baseline"
    trained_until = float(lineage(registry, served).get("trained_until") or 0.0) if served else 0.0
    top = len(settings.stages) - 1 if new_ladder else None
    every = labelled_rows(logs, len(settings.stages) - 1)  # the logs read once: also rows with only the top's answer
    rows = [r for r in every if _judged(r.row)]  # the decision is made on answers a higher stage (or a checker) judged
    cut = holdout_start(len(rows), holdout) if rows else 0
    older, newest = rows[:cut], rows[cut:]
    if new_ladder:  # the top stage's answers train as the reference, also in rows with nothing else labelled
        horizon = newest[0].order if newest else (math.inf, 0)
        older = [r for r in every if r.order < horizon]
    unseen = [r for r in newest if r.order[0] > trained_until or not r.order[0]]
    outcome = Outcome(False, "", served_name, evaluation_rows=0)
    with tempfile.TemporaryDirectory(prefix="adaptive-sd-learn-") as tmp_name:
        tmp = Path(tmp_name)
        eval_path = _write(resampled((r.row for r in unseen), seed_), tmp / "evaluation.jsonl")
        answers = sum(label(s) is not None for r in unseen for s in r.row["stages"])
        outcome.evaluation_rows = answers
        if answers < min_eval:
            outcome.reason = f"{answers} labelled answers newer than what {served_name} trained on; {min_eval} needed to decide"
            return outcome
        logged_rows = (with_reference(r.row, top) if top is not None else r.row for r in older)
        logged = _write(resampled(logged_rows, seed_), tmp / "logged.jsonl")
        merged = logged if shipped is None else _concat([shipped, logged], tmp / "train.jsonl")
        candidate_dir = tmp / "candidate"
        try:
            train.run(merged, candidate_dir, seed=seed_, lofo=False)
        except (RuntimeError, ValueError) as exc:  # a split with one class, no pairs yet: the log is too small
            outcome.reason = f"no candidate: {exc}"
            return outcome
        # the tours outside the train split: every stage's answer to requests no prior chose, which no model fitted
        tours, tours_why = calibrate.held_tours((r.row for r in every), settings)
        evidence = settings.cascade.risk.evidence
        candidate = OnnxPredictor.load(candidate_dir, evidence)
        if shipped is not None:
            calibration: dict[str, Any] | None = calibrate.table(shipped, candidate_dir, config)
        else:  # a new ladder: its tours are the only requests every stage answered
            calibration = calibrate.tour_table(tours, candidate, settings) if tours is not None else None
            outcome.calibration = (
                f"λ table from {tours_why} (agreement with the top stage)" if tours is not None else f"no λ table: {tours_why}"
            )
        if calibration is not None:
            (candidate_dir / calibrate.CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")

        def kept() -> Outcome:  # the candidate is not promoted; a new ladder's served version may still need its table
            version = _recalibrated(registry, served, tours, settings) if new_ladder and tours is not None else None
            if version is not None:
                outcome.promoted, outcome.candidate = True, version
                outcome.reason += f"; {served} recalibrated on {tours_why} (agreement with the top stage) as {version}"
            return outcome

        mine, _ = log_loss(candidate_dir, eval_path)
        theirs, _ = log_loss(registry / served if served else None, eval_path, settings)
        outcome.log_loss = {"candidate": round(mine, 5), served_name: round(theirs, 5)}
        outcome.trained_rows = {"shipped": sum(1 for _ in dataset.read_rows(shipped)) if shipped else 0, "logged": len(older)}
        if not mine < theirs - margin:
            outcome.reason = f"the candidate's log-loss {mine:.4f} does not beat {served_name}'s {theirs:.4f} by {margin}"
            return kept()
        if tours is None:
            outcome.replayed = {"skipped": tours_why}
        else:  # the rule replayed on the tours: the candidate must not cost more at the served model's quality
            in_service = OnnxPredictor.load(registry / served, evidence) if served else BaselineBatch(baseline_predictor(settings))
            lam, _ = calibrate.lambda_in_force(
                LambdaTable.load(registry / served) if served else None, settings, trained=served is not None
            )
            r = outcome.replayed = calibrate.matched_cost(tours, in_service, lam, candidate, settings)
            if not calibrate.cheaper(r, cost_margin):
                what = "never reaches" if r["candidate_cost"] is None else f"costs {r['candidate_cost']:.4g} {r['unit']} at"
                outcome.reason = (f"the candidate {what} quality {r['quality_matched']:.3f} replayed on {tours_why} "
                                  f"({served_name}: {r['served_cost']:.4g})")  # fmt: skip
                return kept()
        record = {"parent": served, "source": "learn", "created": round(time.time(), 3),
                  "trained_on": {"collection": str(shipped) if shipped else None, "logs": [str(p) for p in logs], **outcome.trained_rows},
                  "trained_until": older[-1].order[0] if older else trained_until,
                  "evaluation": {"answers": answers, "log_loss": outcome.log_loss, "replayed": outcome.replayed},
                  **({"calibration": outcome.calibration} if outcome.calibration else {})}  # fmt: skip
        outcome.candidate = _add_version(registry, candidate_dir, record)
        point(registry, outcome.candidate)
        outcome.promoted = True
        outcome.reason = f"log-loss {mine:.4f} against {served_name}'s {theirs:.4f} on {answers} unseen labelled answers"
        if "served" in outcome.replayed:
            r = outcome.replayed
            theirs_cost = "never" if r["served_cost"] is None else f"{r['served_cost']:.4g}"
            outcome.reason += (f"; replayed on {r['tours']} tours, {r['candidate_cost']:.4g} against {theirs_cost} {r['unit']} "
                               f"at quality {r['quality_matched']:.3f}")  # fmt: skip
        return outcome


def _resolves(table: LambdaTable | None, settings: Settings) -> bool:
    """Whether a λ table serves this ladder: its λ in the ladder's unit and, where there is a default target, one
    for it from as many tours as it needs (``LambdaTable.choose``). Without a target a table in the unit serves
    (tenants' targets are looked up in it): nothing to recalibrate, every learning round."""
    from training import calibrate

    if table is None:
        return False
    if settings.cascade.default_target is None:
        return table.priced_in(settings.cascade.cost_unit)
    return calibrate.lambda_in_force(table, settings)[1]  # its λ for the target, in the ladder's unit


def _recalibrated(registry: Path, served: str | None, tours: Table, settings: Settings) -> str | None:
    """A new ladder's version in service whose λ table does not serve the ladder (``_resolves``: no table, promoted
    before the tours could resolve the default target, or the target or the unit changed since), once the tours can: the same model
    with a table from them, as a new version put in service (a version is never changed once written); its lineage
    says so. A replacement that would not resolve the target either is not written (no version per learning round).
    None where there is nothing to do."""
    from training import calibrate

    if served is None:
        return None
    in_service = LambdaTable.load(registry / served)
    if _resolves(in_service, settings):
        return None
    with tempfile.TemporaryDirectory(prefix="adaptive-sd-recalibrate-") as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(registry / served, model)
        table = calibrate.tour_table(tours, OnnxPredictor.load(model, settings.cascade.risk.evidence), settings)
        if in_service is not None and not _resolves(LambdaTable.of(table), settings):
            return None
        (model / calibrate.CALIBRATION_FILE).write_text(json.dumps(table, indent=2) + "\n")
        before = lineage(registry, served)
        record = {"parent": served, "source": "recalibrated", "created": round(time.time(), 3),
                  "trained_on": before.get("trained_on"), "trained_until": before.get("trained_until"),
                  "calibration": f"λ table from {len(tours.y)} tours outside the train split (agreement with the top stage)"}  # fmt: skip
        version = _add_version(registry, model, record)
    point(registry, version)
    return version


def history(registry: Path) -> Iterator[dict[str, Any]]:
    """Every version's lineage, oldest first, with which one is in service."""
    served = current(registry)
    for v in versions(registry):
        yield {**lineage(registry, v), "version": v, "in_service": v == served}
