"""The mechanics of the new-family replay (training.learning_curve), on two small families with a stub model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training import dataset, replay, train
from training import learning_curve as lc

DATA = Path(__file__).resolve().parents[2] / "data" / "cpu" / "collect.jsonl"
FAMILIES = ["open-long", "open-chat"]
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="no CPU collection")


class Stub:
    """A fast stand-in for the fold models: p̂ from the mean logprob, flat priors; records what it was trained on."""

    fits: list[dataset.Dataset] = []

    def __init__(self, data: dataset.Dataset, prefixes: dataset.Prefixes, seed: int) -> None:
        Stub.fits.append(data)
        self.evidence = 50.0
        self.lengths = tuple(train.output_lengths(data.part("train")))
        self.checkpoints = train.CHECKPOINTS
        self.prefix_strengths = (8.0,) * len(train.CHECKPOINTS)
        self.shift = 0.1 * (len(Stub.fits) % 3)  # models differ from refit to refit

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = 1 / (1 + np.exp(-(3 * x[:, replay._MEAN] + 1.5 + self.shift)))
        return out

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 0.5)

    def posterior_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 0.6)

    def prefix_batch(self, x: np.ndarray) -> np.ndarray:
        return self.predict_batch(x)


def test_request_labels_only_escalations_and_shadow() -> None:
    def agree(task: int, stage: int, verifier: int) -> int:
        return 1

    # escalated 0 -> 1 -> 2: stages 0 and 1 verified by the next; the top stage returned: never labelled, no shadow
    got = lc.request_labels(7, [True, True, True], 2, 3, True, True, agree)
    assert [(lb.stage, lb.verifier, lb.source) for lb in got] == [(0, 1, "verification"), (1, 2, "verification")]
    # stage 0 skipped, stage 1 returned, shadow drawn: one shadow label by stage 2
    got = lc.request_labels(7, [False, True, False], 1, 3, True, True, agree, rate=0.25)
    assert [(lb.stage, lb.verifier, lb.source, lb.weight) for lb in got] == [(1, 2, "shadow", 4.0)]
    # stage 0 aborted (not finished), stage 2 returned: nothing; and no draft reuse: no verification labels
    assert lc.request_labels(7, [False, False, True], 2, 3, True, True, agree) == []
    assert lc.request_labels(7, [True, False, True], 2, 3, False, False, agree) == []
    # stage 0 returned, shadow not drawn: nothing
    assert lc.request_labels(7, [True, False, False], 0, 3, True, False, agree) == []


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], lc.Setup]:
    Stub.fits = []
    out = tmp_path_factory.mktemp("lc") / "lc.json"
    res = lc.run(DATA, out, None, families=FAMILIES, rate=1.0, retrain_every=2, lam=300.0, fitter=Stub, progress=False, explore=1.0)
    assert json.loads(out.read_text())["aggregate"]["families"] == len(FAMILIES)
    return res, lc.setup(DATA, None, "agreement", 300.0)


def test_visits_match_the_cascade(result: tuple[dict[str, Any], lc.Setup]) -> None:
    _, s = result
    sel = np.flatnonzero(np.isin(s.full.family, FAMILIES))
    t = s.full.rows(sel)
    b = replay.beliefs(t, Stub(s.data, s.prefixes, 0), s.rule_prices)
    costs = {"compute": lc._rows(s.costs["compute"], sel)}
    plain = replay.cascade(t, b, costs, 300.0, s.opt)
    out, finished, aborted = lc.visits(t, b, costs, 300.0, s.opt)
    assert np.array_equal(out.final, plain.final) and np.allclose(out.spent["compute"], plain.spent["compute"])
    assert set(out.spent) == {"compute"}
    rows = np.arange(len(sel))
    assert finished[rows, out.final].all()
    assert not (finished & aborted).any()
    for i, f in enumerate(out.final):  # nothing above the returned stage was called
        assert not finished[i, f + 1 :].any() and not aborted[i, f + 1 :].any()
    assert (finished.sum(axis=1) + aborted.sum(axis=1) == out.calls).all()


def test_labels_come_only_from_escalations_and_shadow_checks(result: tuple[dict[str, Any], lc.Setup]) -> None:
    res, s = result
    top = s.full.n_stages - 1
    sources = set()
    for fam in FAMILIES:
        rec = res["per_family"][fam]
        by_task = {r["task"]: r for r in rec["requests"]}
        assert len(rec["requests"]) == rec["stream"]
        assert sum(r["labels"] for r in rec["requests"]) == len(rec["labels"])
        for lb in rec["labels"]:
            r = by_task[lb["task"]]  # only stream tasks are labelled, never test ones
            sources.add(lb["source"])
            assert lb["stage"] < top
            if lb["source"] == "explore":  # the top answered alone; a lower stage it did not finish is verified by the top
                assert r["final"] == top and r["explored"] == lb["stage"] and lb["verifier"] == top and r["labels"] == 1
                assert not r["finished"][lb["stage"]]
                continue
            assert not r["aborted"][lb["stage"]]
            assert r["finished"][lb["stage"]]
            if lb["source"] == "verification":
                assert lb["stage"] < r["final"] and r["finished"][lb["verifier"]]
                assert not any(r["finished"][lb["stage"] + 1 : lb["verifier"]])  # the next stage that answered
            else:
                assert lb["source"] == "shadow" and r["shadow"] and lb["stage"] == r["final"] and lb["verifier"] == r["final"] + 1
        # rate 1: every request returned below the top was shadow-checked, and none returned by the top
        assert all(r["shadow"] == (r["final"] < top) for r in rec["requests"])
        assert rec["stream_replay"]["shadow_checks"] == sum(r["shadow"] for r in rec["requests"])
        sr = rec["stream_replay"]
        assert sr["verification_labels"] + sr["shadow_labels"] + sr["explore_labels"] == len(rec["labels"])
        # explore 1: every request the top answered with nothing labelled below explored one lower stage
        assert all((r["explored"] is not None) == (r["final"] == top and r["labels"] > 0 and not any(r["finished"][:top]))
                   for r in rec["requests"])  # fmt: skip
    assert {"verification", "shadow"} <= sources <= {"verification", "shadow", "explore"}


def test_shadow_cost_accounting(result: tuple[dict[str, Any], lc.Setup]) -> None:
    res, s = result
    index = {str(t): i for i, t in enumerate(s.full.task)}
    for fam in FAMILIES:
        rec = res["per_family"][fam]
        want = explore = 0.0
        for r in rec["requests"]:
            i, st = index[r["task"]], r["final"]
            if r["shadow"]:
                want += s.prompt_prices[st + 1] * (s.full.prompt_tokens[i, st + 1] + s.full.output_tokens[i, st])
            if r["explored"] is not None:
                e = r["explored"]
                explore += s.costs["compute"].full[i, e] + s.prompt_prices[-1] * (s.full.prompt_tokens[i, -1] + s.full.output_tokens[i, e])
        assert rec["stream_replay"]["shadow_compute"] == pytest.approx(want)
        assert rec["stream_replay"]["explore_compute"] == pytest.approx(explore)
        top = sum(float(s.costs["compute"].full[index[r["task"]], -1]) for r in rec["requests"])
        assert rec["stream_replay"]["top_compute"] == pytest.approx(top)
    agg = res["aggregate"]["stream"]
    assert agg["shadow_compute_vs_top"] == pytest.approx(agg["shadow_compute"] / agg["top_compute"])


def test_refits_train_on_the_rows_without_the_family_plus_the_labels(result: tuple[dict[str, Any], lc.Setup]) -> None:
    res, s = result
    base = int((s.data.family != FAMILIES[0]).sum())
    first = [d for d in Stub.fits if len(d.y) >= base and not (d.family == FAMILIES[0]).any() and (d.family == FAMILIES[1]).any()]
    assert first, "M0 of the first family trains on every other family"
    rec = res["per_family"][FAMILIES[0]]
    assert rec["refits"] == rec["promoted"] and len(rec["points"]) == rec["promoted"] + 1
    labelled = {(lb["task"], lb["stage"]): lb["value"] for lb in rec["labels"]}
    without, _ = lc.training_rows(s.data, s.prefixes, FAMILIES[0], [], s.full.task)
    assert not (without.family == FAMILIES[0]).any()
    if labelled:
        got = [lc.Label(int(np.flatnonzero(s.full.task == t)[0]), st, v, "x", st + 1) for (t, st), v in labelled.items()]
        d, p = lc.training_rows(s.data, s.prefixes, FAMILIES[0], got, s.full.task)
        mine = d.family == FAMILIES[0]
        assert int(mine.sum()) == len(labelled)
        for t, st, y in zip(d.task[mine], d.stage[mine], d.y[mine], strict=True):
            assert labelled[(str(t), int(st))] == int(y)
        mine_pre = p.family == FAMILIES[0]
        assert set(zip(p.task[mine_pre].tolist(), p.stage[mine_pre].tolist(), strict=True)) <= set(labelled)
        heavy = [dataclasses.replace(got[0], weight=3.0)] + got[1:]  # a shadow label at rate 1/3 counts three times
        d3, _ = lc.training_rows(s.data, s.prefixes, FAMILIES[0], heavy, s.full.task)
        assert int((d3.family == FAMILIES[0]).sum()) == len(labelled) + 2


def test_output_keys(result: tuple[dict[str, Any], lc.Setup]) -> None:
    res, _ = result
    assert {"config", "simplifications", "per_family", "aggregate", "per_family_summary"} <= set(res)
    agg = res["aggregate"]
    assert {"static", "learned", "stream", "targets", "curve", "mean_over_families"} <= set(agg)
    for k in ("quality", "top_quality", "points_below_top", "compute_vs_top"):
        assert k in agg["static"] and k in agg["learned"]
    assert agg["curve"][0]["seen"] == 0 and agg["curve"][-1]["seen"] == max(res["per_family"][f]["stream"] for f in FAMILIES)
    assert agg["static"] == lc.figures(lc._pool([res["per_family"][f]["static"] for f in FAMILIES]))


class TopStub(Stub):
    """Priors that make the rule skip straight to the top stage."""

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return np.where(x[:, -1] >= x[:, -1].max(), 0.95, 0.01)


def test_explore_labels_only_requests_the_top_answered_alone(tmp_path: Path) -> None:
    res = lc.run(DATA, tmp_path / "lc.json", None, families=FAMILIES[:1], rate=0.0, retrain_every=100, lam=1e4, fitter=TopStub,
                 progress=False, explore=1.0)  # fmt: skip
    rec = res["per_family"][FAMILIES[0]]
    top = max(r["final"] for r in rec["requests"])
    assert rec["labels"] and all(lb["source"] == "explore" for lb in rec["labels"])
    for lb, r in zip(rec["labels"], [r for r in rec["requests"] if r["explored"] is not None], strict=True):
        assert r["final"] == top and not any(r["finished"][:top]) and lb["stage"] == r["explored"] < top and lb["verifier"] == top
    assert rec["stream_replay"]["shadow_checks"] == 0 and rec["stream_replay"]["explore_compute"] > 0
