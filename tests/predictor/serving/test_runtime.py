"""The ONNX runtime: loads the shipped model, agrees with the in-memory model, refuses bad files at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from predictor.serving.baseline import MeanLogprobPredictor
from predictor.serving.features import FEATURE_NAMES, N_FEATURES, POSTERIOR_FEATURE_NAMES, PROMPT_FEATURE_NAMES, PromptStats
from predictor.serving.runtime import ANSWER_FILE, POSTERIOR_FILE, PRIOR_FILE, OnnxPredictor, PredictorLoadError, _Graph
from training import dataset, train

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "predictor" / "models" / "cpu"
DATA = ROOT / "data" / "cpu" / "collect.jsonl"


def test_shipped_model_loads_and_predicts_probabilities() -> None:
    p = OnnxPredictor.load(SHIPPED)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=N_FEATURES).astype(np.float32)
        assert 0.0 <= p.predict(x) <= 1.0
    prompt = PromptStats.from_texts(["What is 2 + 2?"])
    priors = p.priors(prompt, 3)
    assert len(priors) == 3 and all(0.0 <= q <= 1.0 for q in priors)
    x = rng.normal(size=N_FEATURES).astype(np.float32)
    for stage, want in ((0, 2), (1, 1), (2, 0)):
        beliefs = p.beliefs_after(stage, x, prompt, 3)
        assert len(beliefs) == want and all(0.0 <= q <= 1.0 for q in beliefs)


def test_predict_takes_any_row_spelling() -> None:
    """A float32 vector is copied straight into the bound input; any other row (float64, 2-D, strided, a list) the
    numpy way: the same p̂, and that p̂ is the batch model's."""
    p = OnnxPredictor.load(SHIPPED)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, N_FEATURES)).astype(np.float32)
    batch = p.predict_batch(x)
    for row, want in zip(x, batch, strict=True):
        got = p.predict(row)
        assert got == pytest.approx(float(want), abs=1e-6)
        wide = np.zeros(2 * N_FEATURES, np.float32)
        wide[::2] = row
        for spelling in (row.astype(np.float64), row[None, :], wide[::2], list(map(float, row))):
            assert p.predict(spelling) == got  # type: ignore[arg-type]


def test_beliefs_move_with_the_answer() -> None:
    """``beliefs_after`` one answer at a time (the router's path) equals the belief graph's batch scores on collected
    answers (the replay's path), and it depends on the answer: not one constant per stage like a prior."""
    p = OnnxPredictor.load(SHIPPED)
    data = dataset.load(DATA)
    pairs = dataset.pairs(data)
    got = [p.beliefs_after(int(i), x[:N_FEATURES], PromptStats.from_texts(["x"]), 3)[int(j) - int(i) - 1]
           for x, i, j in zip(pairs.x[:60], pairs.lower[:60], pairs.target[:60], strict=True)]  # fmt: skip
    want = p.posterior_batch(pairs.x[:60])
    assert np.allclose(got, want, atol=1e-6)
    assert len({round(v, 4) for v in got}) > 3  # not one constant


def test_the_baseline_believes_its_priors() -> None:
    """A predictor without a belief model keeps working: beliefs after an answer are the configured priors above it."""
    b = MeanLogprobPredictor([(0.0, 1.0)] * 3, [0.2, 0.5, 0.8])
    prompt = PromptStats.from_texts(["hi"])
    x = np.zeros(N_FEATURES, dtype=np.float32)
    assert b.beliefs_after(0, x, prompt, 3) == [0.5, 0.8]
    assert b.beliefs_after(1, x, prompt, 3) == [0.8]
    assert b.beliefs_after(2, x, prompt, 3) == []


def test_shipped_card_matches_this_build() -> None:
    card = json.loads((SHIPPED / "card.json").read_text())
    assert card["answer_model"]["features"] == list(FEATURE_NAMES)
    assert card["prior_model"]["features"] == list(PROMPT_FEATURE_NAMES)
    assert card["posterior_model"]["features"] == list(POSTERIOR_FEATURE_NAMES)


def test_onnx_graph_agrees_with_the_in_memory_model(tmp_path: Path) -> None:
    data = dataset.load(DATA)
    tr, va, te = data.part("train"), data.part("val"), data.part("test")
    fitted = train.fit((tr.x, tr.y), (va.x, va.y), FEATURE_NAMES, "answer", seed=0)
    (tmp_path / ANSWER_FILE).write_bytes(fitted.onnx)
    graph = _Graph(tmp_path / ANSWER_FILE, "answer", FEATURE_NAMES)
    want = fitted.estimator.predict_proba(te.x)[:, 1]
    got = graph.raw(te.x.astype(np.float32))
    assert np.max(np.abs(want - got)) < 1e-5
    # and one row at a time, through the serving path with calibration
    prior = train.fit((tr.prior_x, tr.y), (va.prior_x, va.y), PROMPT_FEATURE_NAMES, "prior", seed=0)
    (tmp_path / PRIOR_FILE).write_bytes(prior.onnx)
    pairs = dataset.pairs(data)
    ptr, pva = pairs.part("train"), pairs.part("val")
    posterior = train.fit((ptr.x, ptr.y), (pva.x, pva.y), POSTERIOR_FEATURE_NAMES, "posterior", seed=0)
    (tmp_path / POSTERIOR_FILE).write_bytes(posterior.onnx)
    pte = pairs.part("test")
    assert np.max(np.abs(posterior.estimator.predict_proba(pte.x)[:, 1] - _Graph(tmp_path / POSTERIOR_FILE, "posterior",
                                                                                POSTERIOR_FEATURE_NAMES).raw(pte.x))) < 1e-5  # fmt: skip
    vote = train.fit((tr.prior_x, tr.y), (va.prior_x, va.y), PROMPT_FEATURE_NAMES, "prior", 0, train.prior_candidates(0))
    vote_graph = tmp_path / "vote.onnx"
    vote_graph.write_bytes(vote.onnx)
    got_vote = _Graph(vote_graph, "prior", PROMPT_FEATURE_NAMES).raw(te.prior_x)
    assert np.max(np.abs(vote.estimator.predict_proba(te.prior_x)[:, 1] - got_vote)) < 1e-5  # the soft vote converts exactly
    served = OnnxPredictor.load(tmp_path)
    cal = np.interp(want, graph.cal_x, graph.cal_y)
    assert all(abs(served.predict(row) - c) < 1e-5 for row, c in zip(te.x[:50], cal, strict=False))


def _rewrite(src: Path, dst: Path, **meta: str) -> None:
    model = onnx.load(str(src))
    for entry in model.metadata_props:
        if entry.key in meta:
            entry.value = meta[entry.key]
    onnx.save(model, str(dst))


@pytest.mark.parametrize(
    "case,expect",
    [("missing", "does not exist"), ("corrupt", "not a loadable ONNX"), ("version", "feature version"),
     ("names", "expects features"), ("kind", "expected 'answer'"), ("posterior missing", "posterior.onnx does not exist"),
     ("posterior kind", "expected 'posterior'"), ("posterior version", "feature version"), ("posterior names", "expects features"),
     ("posterior top-k", "the belief model at 3")],
)  # fmt: skip
def test_bad_model_files_fail_at_load_with_a_clear_error(tmp_path: Path, case: str, expect: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / PRIOR_FILE).write_bytes((SHIPPED / PRIOR_FILE).read_bytes())
    if case.startswith("posterior"):
        (d / ANSWER_FILE).write_bytes((SHIPPED / ANSWER_FILE).read_bytes())
        meta = {"posterior version": {"feature_version": "3"}, "posterior names": {"feature_names": json.dumps(["a"] * (N_FEATURES + 1))},
                "posterior top-k": {"top_logprobs": "3"}}.get(case)  # fmt: skip
        if case == "posterior kind":
            (d / POSTERIOR_FILE).write_bytes((SHIPPED / ANSWER_FILE).read_bytes())
        elif meta is not None:
            _rewrite(SHIPPED / POSTERIOR_FILE, d / POSTERIOR_FILE, **meta)
        with pytest.raises(PredictorLoadError, match=expect):
            OnnxPredictor.load(d)
        return
    (d / POSTERIOR_FILE).write_bytes((SHIPPED / POSTERIOR_FILE).read_bytes())
    if case == "corrupt":
        (d / ANSWER_FILE).write_bytes(b"not onnx at all")
    elif case == "version":
        _rewrite(SHIPPED / ANSWER_FILE, d / ANSWER_FILE, feature_version="0")
    elif case == "names":
        _rewrite(SHIPPED / ANSWER_FILE, d / ANSWER_FILE, feature_names=json.dumps(["a"] * N_FEATURES))
    elif case == "kind":
        (d / ANSWER_FILE).write_bytes((SHIPPED / PRIOR_FILE).read_bytes())
    with pytest.raises(PredictorLoadError, match=expect):
        OnnxPredictor.load(d)


def test_router_refuses_to_start_with_a_broken_predictor(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    cfg["predictor"] = {"kind": "onnx", "path": str(tmp_path / "nowhere")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "adaptive_sd.cli", "--config", str(path), "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and "nowhere" in out.stderr and "does not exist" in out.stderr


def test_top_k_is_read_from_the_model_and_a_different_configured_k_is_refused(tmp_path: Path) -> None:
    """The features are defined at the k the model was trained with; asking stages for another k would skew every one."""
    from common.settings import Settings
    from router.cascade import CascadeEngine

    predictor = OnnxPredictor.load(ROOT / "predictor" / "models" / "cpu")
    assert predictor.top_k == 5
    stages = [{"name": "a", "model": "a", "url": "http://127.0.0.1:1/v1", "prices": {"cost": {"request": 1.0}}}]
    assert CascadeEngine(Settings(stages=stages), [], predictor).top_k == 5
    with pytest.raises(ValueError, match="top-k 5"):
        CascadeEngine(Settings(stages=stages, cascade={"top_logprobs": 3}), [], predictor)


def test_a_model_without_a_recorded_top_k_is_refused(tmp_path: Path) -> None:
    import shutil

    import onnx

    src = ROOT / "predictor" / "models" / "cpu"
    for name in ("predictor.onnx", "prior.onnx", "posterior.onnx", "card.json"):
        shutil.copy(src / name, tmp_path / name)
    model = onnx.load(tmp_path / "predictor.onnx")
    kept = [p for p in model.metadata_props if p.key != "top_logprobs"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "predictor.onnx")
    with pytest.raises(PredictorLoadError, match="top-k"):
        OnnxPredictor.load(tmp_path)
