"""Fit, compare, calibrate and export the predictor; write its model card.

Two model families are fitted on the training split (gradient-boosted trees
and a small MLP), the one with the better validation log-loss is kept,
calibrated with isotonic regression on the validation split (never closer to 0 or
1 than that split's size allows: ``calibration_bounds``), exported to ONNX
(calibration and the feature contract travel in the ONNX metadata), and
scored on the held-out test split next to the mean-logprob baseline (a
per-stage logistic regression on mean token logprob, fitted on the same
training split). The prompt-only prior and the belief model get the same
treatment on their inputs. Splits are by task, never by row
(``training.tasks.split_of``).

The prior is a soft vote of two gradient-boosted models, one on the five prompt
statistics and one on those plus the hashed n-grams. Chosen by measurement
(docs/predictor.md): the n-gram model alone ranks held-out tasks of known
families better but tasks of a family it never saw worse than the statistics
alone (leave-one-family-out), and the average keeps most of both.

Besides the held-out test split, the card reports leave-one-family-out
figures: each family in turn is left out of training and scored on, for the
prior (new and the v3 statistics-only one) and the belief model. Those use the
models' raw scores (AUC is a ranking measure; the isotonic step, which needs a
validation split, only adds ties). Everything is seeded: the same data gives
the same models.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor.serving.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    INDEX,
    N_PROMPT_FEATURES,
    POSTERIOR_FEATURE_NAMES,
    PROMPT_FEATURE_NAMES,
    PROMPT_STAT_NAMES,
)
from predictor.serving.lengths import OutputLengths
from predictor.serving.rows import TOP_LOGPROBS
from predictor.serving.runtime import ANSWER_FILE, CARD_FILE, POSTERIOR_FILE, PREFIX_FILE, PRIOR_FILE, Calibration
from training import dataset

ECE_BINS = 10
_MEAN = INDEX["lp_mean"]


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-width bins."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(float(y[m].mean()) - float(p[m].mean()))
    return total


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
    return {"n": len(y), "positive_rate": float(y.mean()) if len(y) else 0.0, "auc": auc,
            "brier": float(np.mean((p - y) ** 2)), "ece": ece(y, p)}  # fmt: skip


def _candidates(seed: int) -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "gbt": GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=2000, random_state=seed)),
    }


# columns of the prior's input: the five statistics + stage, and everything
_STATS_COLUMNS = [*range(len(PROMPT_STAT_NAMES)), N_PROMPT_FEATURES - 1]
_ALL_COLUMNS = list(range(N_PROMPT_FEATURES))


def _prior_gbt(columns: list[int], seed: int) -> Any:
    """Gradient-boosted trees on some columns of the prior's input (leaves of >= 10 rows: 262 inputs and a few
    hundred rows overfit otherwise)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline

    gbt = GradientBoostingClassifier(
        n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, min_samples_leaf=10, random_state=seed
    )
    return make_pipeline(ColumnTransformer([("columns", "passthrough", columns)]), gbt)


def prior_candidates(seed: int) -> dict[str, Any]:
    """The prior: the soft vote of a statistics-only and a statistics + n-grams model (see the module docstring)."""
    from sklearn.ensemble import VotingClassifier

    members = [("stats", _prior_gbt(_STATS_COLUMNS, seed)), ("ngrams", _prior_gbt(_ALL_COLUMNS, seed))]
    return {"gbt-vote": VotingClassifier(members, voting="soft", flatten_transform=False)}


def surface_prior(seed: int) -> Any:
    """The v3 prior, for comparison: the trainer's gradient-boosted trees on the five statistics and the stage."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(ColumnTransformer([("columns", "passthrough", _STATS_COLUMNS)]), _candidates(seed)["gbt"])


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _to_onnx(model: Any, n_inputs: int, metadata: dict[str, str]) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_inputs]))], options={"zipmap": False})
    for key, value in metadata.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(onx.SerializeToString())


@dataclass
class FittedModel:
    name: str
    validation_log_loss: dict[str, float]
    calibration: Calibration
    onnx: bytes = field(repr=False)
    estimator: Any = field(repr=False, default=None)  # the in-memory model the ONNX graph was converted from

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(acceptable) from the in-memory model: what the exported graph computes."""
        out: np.ndarray = np.interp(self.estimator.predict_proba(x)[:, 1], self.calibration.x, self.calibration.y)
        return out

    def export(self, names: tuple[str, ...], kind: str, extra: dict[str, str] | None = None) -> None:
        """Convert to ONNX (``onnx``), the feature contract, calibration and ``extra`` in the graph's metadata."""
        metadata = {
            "kind": kind,
            "model": self.name,
            "feature_version": str(FEATURE_VERSION),
            "feature_names": json.dumps(list(names)),
            "top_logprobs": str(TOP_LOGPROBS),
            "calibration": json.dumps(asdict(self.calibration)),
            **(extra or {}),
        }
        self.onnx = _to_onnx(self.estimator, len(names), metadata)


def calibration_bounds(n: int) -> tuple[float, float]:
    """How far from 0 and 1 a probability calibrated on ``n`` validation rows may go: 1 / (n + 2) (Laplace's rule
    of succession: n answers all acceptable make the next one so with (n + 1) / (n + 2), not 1).

    Isotonic regression on a small validation split puts whole plateaus at exactly 0 or 1; one answer there that
    goes the other way then costs the log-loss 14 nats (its clip at 1e-6), and the rule trusts the p̂ blindly. A new
    ladder's first candidates are calibrated on a few dozen logged rows: on the live CPU ladder's log they scored
    0.81-1.94 against the baseline's 0.57-0.78 on the unseen rows and were never promoted; bounded, 0.43-0.67,
    and promoted. With the shipped collection's ~470 validation answers the bound is 0.002.
    """
    return 1 / (n + 2), (n + 1) / (n + 2)


def fit(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    names: tuple[str, ...],
    kind: str,
    seed: int,
    candidates: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
    export: bool = True,
) -> FittedModel:
    """Fit each candidate (default: ``_candidates``), keep the best on validation log-loss, calibrate it on validation."""
    from sklearn.isotonic import IsotonicRegression

    losses, fitted = {}, {}
    for name, model in (candidates if candidates is not None else _candidates(seed)).items():
        model.fit(*train)
        losses[name] = _log_loss(val[1], model.predict_proba(val[0])[:, 1])
        fitted[name] = model
    best = min(losses, key=lambda k: losses[k])
    low, high = calibration_bounds(len(val[1]))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=low, y_max=high).fit(fitted[best].predict_proba(val[0])[:, 1], val[1])
    calibration = Calibration(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))
    model = FittedModel(best, losses, calibration, b"", fitted[best])
    if export:
        model.export(names, kind, extra)
    return model


CHECKPOINTS: tuple[int, ...] = (8, 16, 32, 64)  # generated tokens after which a streaming stage is judged (early exit)
_STRENGTHS = np.geomspace(0.5, 500.0, 61)


def output_lengths(train: dataset.Dataset) -> list[OutputLengths]:
    """Each stage's answer lengths on the training split: what per-token prices expect (``predictor.serving.lengths``)."""
    return [OutputLengths.fit(train.output_tokens[train.stage == s].tolist() or [1.0]) for s in range(train.n_stages)]


def prefix_strengths(q: np.ndarray, p_final: np.ndarray, tokens: np.ndarray, checkpoints: tuple[int, ...]) -> list[float]:
    """Per checkpoint, the Beta concentration κ that best explains the finished answers' p̂ around the prefix model's
    estimate q (maximum likelihood of Beta(κq, κ(1-q)) on the validation split): how much the rest of the answer is
    still expected to move the verdict, which is what the early-exit rule's option of waiting is worth."""
    from scipy.stats import beta as beta_dist

    q = np.clip(q, 0.01, 0.99)
    p = np.clip(p_final, 0.01, 0.99)
    out: list[float] = []
    for t in checkpoints:
        m = tokens == t
        if m.sum() < 5:
            out.append(out[-1] if out else 8.0)
            continue
        ll = [float(beta_dist.logpdf(p[m], k * q[m], k * (1 - q[m])).sum()) for k in _STRENGTHS]
        out.append(float(_STRENGTHS[int(np.argmax(ll))]))
    return out


def baseline(train: dataset.Dataset, test: dataset.Dataset) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The mean-logprob baseline: per-stage logistic regression on ``lp_mean``, fitted on train."""
    from sklearn.linear_model import LogisticRegression

    p = np.zeros(len(test.y))
    coefs = []
    for s in range(train.n_stages):
        tr, te = train.stage == s, test.stage == s
        if len(set(train.y[tr])) < 2:
            rate = float(train.y[tr].mean()) if tr.any() else 0.5
            p[te] = rate
            coefs.append({"intercept": float(np.log(max(rate, 1e-3) / max(1 - rate, 1e-3))), "slope": 0.0})
            continue
        lr = LogisticRegression().fit(train.x[tr][:, [_MEAN]], train.y[tr])
        p[te] = lr.predict_proba(test.x[te][:, [_MEAN]])[:, 1]
        coefs.append({"intercept": float(lr.intercept_[0]), "slope": float(lr.coef_[0, 0])})
    return p, coefs


@dataclass
class ModelCard:
    data: dict[str, Any]
    answer_model: dict[str, Any]
    prior_model: dict[str, Any]
    test: dict[str, Any]
    baseline_coefficients: list[dict[str, float]]
    posterior_model: dict[str, Any] = field(default_factory=dict)
    prefix_model: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        def f(v: float | None) -> str:
            return f"{v:.3f}" if v is not None else "  -  "

        lines = [f"answer model: {self.answer_model['chosen']}  prior model: {self.prior_model['chosen']}  "
                 f"belief model: {self.posterior_model.get('chosen', '-')}",
                 f"{'stage':>5} {'n':>5} {'pos':>5} | {'AUC':>6} {'Brier':>6} {'ECE':>6} | {'AUC base':>8} {'Brier':>6} {'ECE':>6} | {'AUC prior':>9}"]  # fmt: skip  # noqa: E501
        for s, row in self.test["per_stage"].items():
            m, b, pr = row["learned"], row["baseline"], row["prior"]
            lines.append(f"{s:>5} {m['n']:>5} {m['positive_rate']:>5.2f} | {f(m['auc']):>6} {f(m['brier']):>6} {f(m['ece']):>6} | "
                         f"{f(b['auc']):>8} {f(b['brier']):>6} {f(b['ece']):>6} | {f(pr['auc']):>9}")  # fmt: skip
        if "test" in self.prior_model:
            lines += ["", "prior AUC per stage, v3 statistics-only -> v4 (statistics + n-grams):",
                      f"{'stage':>5} | {'test v3':>7} {'test v4':>7} | {'LOFO v3':>7} {'LOFO v4':>7}"]  # fmt: skip
            for s in self.prior_model["test"]:
                t, lo = self.prior_model["test"][s], self.prior_model["lofo"][s]
                lines.append(f"{s:>5} | {f(t['surface']['auc']):>7} {f(t['prior']['auc']):>7} | "
                             f"{f(lo['surface']['auc']):>7} {f(lo['prior']['auc']):>7}")  # fmt: skip
        if self.posterior_model:
            lines += ["", "belief about stage j after stage i answered, AUC: prompt-only prior v3 / v4 -> belief model:",
                      f"{'i->j':>6} {'n':>4} | {'test v3':>7} {'v4':>6} {'belief':>6} | {'LOFO v3':>7} {'v4':>6} {'belief':>6}"]  # fmt: skip  # noqa: E501
            for key in self.posterior_model["test"]:
                t, lo = self.posterior_model["test"][key], self.posterior_model["lofo"][key]
                cells = [f(t["surface"]["auc"]), f(t["prior"]["auc"]), f(t["belief"]["auc"]),
                         f(lo["surface"]["auc"]), f(lo["prior"]["auc"]), f(lo["belief"]["auc"])]  # fmt: skip
                test_cells = f"{cells[0]:>7} {cells[1]:>6} {cells[2]:>6}"
                lines.append(f"{key:>6} {t['belief']['n']:>4} | {test_cells} | {cells[3]:>7} {cells[4]:>6} {cells[5]:>6}")
        return "\n".join(lines)


def fit_prefix(data_path: Path, data: dataset.Dataset, answer: FittedModel, seed: int) -> tuple[FittedModel, dict[str, Any]]:
    """The prefix model (``prefix.onnx``): P(finished answer acceptable | its first t tokens) at each checkpoint, fitted
    like the others; its metadata carries the checkpoints and, per checkpoint, the concentration of the finished
    answer's p̂ around its estimate (``prefix_strengths``, fitted on validation against the calibrated answer model)."""
    rows, _ = dataset.prefixes(data_path, CHECKPOINTS).rows_of(data)
    train, val, test = rows.part("train"), rows.part("val"), rows.part("test")
    model = fit((train.x, train.y), (val.x, val.y), FEATURE_NAMES, "prefix", seed, export=False)
    # the finished answers' calibrated p̂, row by row of the validation prefixes
    _, ix = val.rows_of(data)
    strengths = prefix_strengths(model.predict(val.x), answer.predict(data.x[ix]), val.tokens, CHECKPOINTS)
    model.export(FEATURE_NAMES, "prefix", {"checkpoints": json.dumps(list(CHECKPOINTS)), "strengths": json.dumps(strengths)})
    card = {"chosen": model.name, "validation_log_loss": model.validation_log_loss, "checkpoints": list(CHECKPOINTS),
            "strengths": strengths, "rows": {"train": len(train.y), "val": len(val.y), "test": len(test.y)},
            "_test_x": test.x, "_test_y": test.y, "_test_t": test.tokens, "_test_stage": test.stage}  # fmt: skip
    return model, card


class FoldPredictor:
    """The four models fitted in memory on some rows (their train split fits, their validation split calibrates),
    with the batch interface the replay uses (``training.replay.BatchPredictor``): how a family left out
    of training is scored (leave-one-family-out), without exporting anything."""

    def __init__(self, data: dataset.Dataset, rows: dataset.Prefixes, seed: int = 0, evidence: float = 50.0) -> None:
        train, val = data.part("train"), data.part("val")
        pairs = dataset.pairs(data)
        ptrain, pval = pairs.part("train"), pairs.part("val")
        rows, _ = rows.rows_of(data)
        xtrain, xval = rows.part("train"), rows.part("val")
        self.answer = fit((train.x, train.y), (val.x, val.y), FEATURE_NAMES, "answer", seed, export=False)
        self.prior = fit(
            (train.prior_x, train.y), (val.prior_x, val.y), PROMPT_FEATURE_NAMES, "prior", seed, prior_candidates(seed), export=False
        )
        self.posterior = fit((ptrain.x, ptrain.y), (pval.x, pval.y), POSTERIOR_FEATURE_NAMES, "posterior", seed, export=False)
        self.prefix = fit((xtrain.x, xtrain.y), (xval.x, xval.y), FEATURE_NAMES, "prefix", seed, export=False)
        self.lengths = tuple(output_lengths(train))
        self.checkpoints: tuple[int, ...] = CHECKPOINTS
        _, ix = xval.rows_of(data)
        self.prefix_strengths = tuple(prefix_strengths(self.prefix_batch(xval.x), self.predict_batch(data.x[ix]), xval.tokens, CHECKPOINTS))
        self.evidence = evidence

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        return self.answer.predict(x)

    def prior_batch(self, x: np.ndarray) -> np.ndarray:
        return self.prior.predict(x)

    def posterior_batch(self, x: np.ndarray) -> np.ndarray:
        return self.posterior.predict(x)

    def prefix_batch(self, x: np.ndarray) -> np.ndarray:
        return self.prefix.predict(x)


def _reliability_png(path: Path, test: dataset.Dataset, curves: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, test.n_stages, figsize=(4.2 * test.n_stages, 4), squeeze=False)
    for s, ax in enumerate(axes[0]):
        m = test.stage == s
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for name, p in curves.items():
            idx = np.minimum((p[m] * ECE_BINS).astype(int), ECE_BINS - 1)
            xs, ys = [], []
            for b in range(ECE_BINS):
                sel = idx == b
                if sel.sum() >= 3:
                    xs.append(float(p[m][sel].mean()))
                    ys.append(float(test.y[m][sel].mean()))
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_title(f"stage {s} (test, n={int(m.sum())})")
        ax.set_xlabel("predicted P(acceptable)")
        ax.set_ylabel("observed rate")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_stage(y: np.ndarray, p: dict[str, np.ndarray], stage: np.ndarray, n_stages: int) -> dict[str, dict[str, Any]]:
    return {str(s): {name: scores(y[stage == s], q[stage == s]) for name, q in p.items()} for s in range(n_stages)}


def _by_pair(pairs: dataset.Pairs, p: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Scores per (i -> j), then per target j over every i below it ("*->j")."""
    out: dict[str, dict[str, Any]] = {}
    keys = sorted({(int(i), int(j)) for i, j in zip(pairs.lower, pairs.target, strict=True)})
    for i, j in keys:
        m = (pairs.lower == i) & (pairs.target == j)
        out[f"{i}->{j}"] = {name: scores(pairs.y[m], q[m]) for name, q in p.items()}
    for j in sorted({j for _, j in keys}):
        m = pairs.target == j
        out[f"*->{j}"] = {name: scores(pairs.y[m], q[m]) for name, q in p.items()}
    return out


def _prior_at(data: dataset.Dataset, pairs: dataset.Pairs, p_rows: np.ndarray) -> np.ndarray:
    """The prior of each pair's target stage, looked up from per-(task, stage) prior scores ``p_rows``."""
    at = {(str(t), int(s)): float(q) for t, s, q in zip(data.task, data.stage, p_rows, strict=True)}
    return np.array([at[(str(t), int(j))] for t, j in zip(pairs.task, pairs.target, strict=True)])


def leave_one_family_out(data: dataset.Dataset, pairs: dataset.Pairs, posterior_name: str, seed: int) -> dict[str, Any]:
    """Out-of-family scores: each family in turn is left out of training (all splits of the others are used) and
    scored on; AUCs are of the pooled out-of-family scores (raw, uncalibrated)."""
    from sklearn.base import clone
    from tqdm import tqdm

    families = sorted(set(data.family.tolist()))
    prior_new, prior_old = np.zeros(len(data.y)), np.zeros(len(data.y))
    belief = np.zeros(len(pairs.y))
    posterior_model = _candidates(seed)[posterior_name]
    for fam in tqdm(families, desc="leave-one-family-out", unit="family"):
        out, keep = data.family == fam, data.family != fam
        for model, into in ((prior_candidates(seed)["gbt-vote"], prior_new), (surface_prior(seed), prior_old)):
            into[out] = model.fit(data.prior_x[keep], data.y[keep]).predict_proba(data.prior_x[out])[:, 1]
        pout, pkeep = pairs.family == fam, pairs.family != fam
        if len(set(pairs.y[pkeep])) > 1 and pout.any():
            model = clone(posterior_model).fit(pairs.x[pkeep], pairs.y[pkeep])
            belief[pout] = model.predict_proba(pairs.x[pout])[:, 1]
    return {
        "families": families,
        "prior": _by_stage(data.y, {"prior": prior_new, "surface": prior_old}, data.stage, data.n_stages),
        "posterior": _by_pair(
            pairs, {"belief": belief, "prior": _prior_at(data, pairs, prior_new), "surface": _prior_at(data, pairs, prior_old)}
        ),  # fmt: skip
    }


def run(data_path: Path, out_dir: Path, seed: int = 0, lofo: bool = True) -> ModelCard:
    from predictor.serving.runtime import OnnxPredictor

    t0 = time.perf_counter()
    data = dataset.load(data_path)
    train, val, test = data.part("train"), data.part("val"), data.part("test")
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if len(set(part.y)) < 2:
            raise RuntimeError(f"the {name} split has a single class ({len(part.y)} rows); collect more data")
    pairs = dataset.pairs(data)
    ptrain, pval, ptest = pairs.part("train"), pairs.part("val"), pairs.part("test")
    lengths = output_lengths(train)
    answer = fit((train.x, train.y), (val.x, val.y), FEATURE_NAMES, "answer", seed,
                 extra={"output_lengths": json.dumps([list(le.points) for le in lengths])})  # fmt: skip
    prior = fit((train.prior_x, train.y), (val.prior_x, val.y), PROMPT_FEATURE_NAMES, "prior", seed, prior_candidates(seed))
    posterior = fit((ptrain.x, ptrain.y), (pval.x, pval.y), POSTERIOR_FEATURE_NAMES, "posterior", seed)
    prefix, prefix_card = fit_prefix(data_path, data, answer, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREFIX_FILE).write_bytes(prefix.onnx)
    (out_dir / ANSWER_FILE).write_bytes(answer.onnx)
    (out_dir / PRIOR_FILE).write_bytes(prior.onnx)
    (out_dir / POSTERIOR_FILE).write_bytes(posterior.onnx)

    served = OnnxPredictor.load(out_dir)  # evaluate exactly what the router will run
    p_learned = served.predict_batch(test.x)
    p_prior = served.prior_batch(test.prior_x)
    p_belief = served.posterior_batch(ptest.x)
    p_surface = surface_prior(seed).fit(train.prior_x, train.y).predict_proba(test.prior_x)[:, 1]  # v3's prior, raw
    p_base, coefs = baseline(train, test)
    per_stage = {}
    for s in range(data.n_stages):
        m = test.stage == s
        per_stage[str(s)] = {
            "learned": scores(test.y[m], p_learned[m]),
            "baseline": scores(test.y[m], p_base[m]),
            "prior": scores(test.y[m], p_prior[m]),
        }
    out_of_family = leave_one_family_out(data, pairs, posterior.name, seed) if lofo else None
    p_prefix_test = served.prefix_batch(prefix_card.pop("_test_x"))
    prefix_test_y, prefix_test_t, prefix_test_stage = prefix_card.pop("_test_y"), prefix_card.pop("_test_t"), prefix_card.pop("_test_stage")
    prefix_card["test"] = {
        f"{s}@{t}": scores(prefix_test_y[m], p_prefix_test[m])
        for s in range(data.n_stages)
        for t in CHECKPOINTS
        if (m := (prefix_test_stage == s) & (prefix_test_t == t)).sum() >= 5
    }
    card = ModelCard(
        data={
            "source": data_path.name,
            "tasks": {k: len(set(d.task)) for k, d in (("train", train), ("val", val), ("test", test))},
            "rows": {k: len(d.y) for k, d in (("train", train), ("val", val), ("test", test))},
            "pairs": {k: len(d.y) for k, d in (("train", ptrain), ("val", pval), ("test", ptest))},
            "families": sorted(set(data.family.tolist())),
            "stages": data.n_stages,
            "label": "exact checker verdict; open prompts: top-stage agreement >= threshold",
        },
        answer_model={
            "chosen": answer.name,
            "validation_log_loss": answer.validation_log_loss,
            "feature_version": FEATURE_VERSION,
            "features": list(FEATURE_NAMES),
            "calibration": "isotonic on validation",
        },
        prior_model={
            "chosen": prior.name,
            "validation_log_loss": prior.validation_log_loss,
            "features": list(PROMPT_FEATURE_NAMES),
            "test": _by_stage(test.y, {"prior": p_prior, "surface": p_surface}, test.stage, data.n_stages),
            "lofo": out_of_family["prior"] if out_of_family else None,
        },
        test={
            "pooled": {"learned": scores(test.y, p_learned), "baseline": scores(test.y, p_base), "prior": scores(test.y, p_prior)},
            "per_stage": per_stage,
        },
        baseline_coefficients=coefs,
        posterior_model={
            "chosen": posterior.name,
            "validation_log_loss": posterior.validation_log_loss,
            "features": list(POSTERIOR_FEATURE_NAMES),
            "calibration": "isotonic on validation",
            "test": _by_pair(
                ptest, {"belief": p_belief, "prior": _prior_at(test, ptest, p_prior), "surface": _prior_at(test, ptest, p_surface)}
            ),
            "lofo": out_of_family["posterior"] if out_of_family else None,
        },
    )
    card.prefix_model = prefix_card
    card.data["output_tokens_mean"] = [round(le.mean(), 1) for le in lengths]
    if not lofo:  # the summary's tables need both evaluations
        card.prior_model.pop("test")
        card.posterior_model = {}
    card.data["train_seconds"] = round(time.perf_counter() - t0, 2)
    (out_dir / CARD_FILE).write_text(json.dumps(asdict(card), indent=2) + "\n")
    (out_dir / "card.md").write_text(_markdown(card))
    _reliability_png(out_dir / "reliability.png", test, {"learned": p_learned, "mean-logprob baseline": p_base})
    return card


def _markdown(card: ModelCard) -> str:
    return (
        "# Predictor model card\n\n"
        "Predicts P(answer acceptable) for one stage's answer on the CPU ladder, from the "
        f"feature vector v{card.answer_model['feature_version']} (`predictor/serving/features.py`).\n\n"
        f"* Data: `{card.data['source']}` -- tasks train/val/test {card.data['tasks']}, rows {card.data['rows']}; "
        f"families: {', '.join(card.data['families'])}.\n"
        f"* Label: {card.data['label']}.\n"
        f"* Answer model: {card.answer_model['chosen']} (validation log-loss {card.answer_model['validation_log_loss']}), "
        "isotonic calibration on validation.\n"
        f"* Prior (prompt-only) model: {card.prior_model['chosen']} (validation log-loss {card.prior_model['validation_log_loss']}): "
        "soft vote of gradient-boosted trees on the prompt statistics and on statistics + hashed n-grams.\n"
        f"* Belief model (P(stage j acceptable | stage i's answer), `posterior.onnx`): {card.posterior_model.get('chosen', '-')} "
        f"(validation log-loss {card.posterior_model.get('validation_log_loss', '-')}), isotonic calibration on validation; "
        f"rows per pair of stages: {card.data['pairs']}.\n"
        "* Reliability diagram: `reliability.png`. Regenerate with `make predictor`.\n\n"
        "## Held-out test split and leave-one-family-out\n\n"
        "LOFO: each family left out of training in turn and scored on (pooled scores, raw). v3 is the statistics-only prior "
        "refitted on the same rows.\n\n```\n" + card.summary() + "\n```\n"
    )
