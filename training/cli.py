"""``python -m training``: collect training data from a ladder, train and export the predictor.

python -m training collect --out data/cpu/collect.jsonl        # resumable
python -m training train   --data data/cpu/collect.jsonl --out predictor/models/cpu
python -m training evaluate --data data/cpu/collect.jsonl --model predictor/models/cpu
python -m training calibrate --within-points 2     # the λ that keeps quality within 2 points of the top stage
python -m training calibrate --within-points 1 --confidence 0.8   # ... within 1 point, with 80 % confidence
ADAPTIVE_SD_CASCADE__DRAFT_REUSE=false adaptive-sd up &   # then:
ADAPTIVE_SD_CASCADE__DRAFT_REUSE=false python -m training live-check --lambdas 5,16,50
python -m training report --log traffic.jsonl --out report.png   # savings and quality over time (= adaptive-sd report)
python -m training learn --registry models/live --log traffic.jsonl   # refit on your traffic; promote if it does better
python -m training models --registry models/live      # its versions and lineage
python -m training rollback --registry models/live    # the version in service's parent back in service
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COLLECTED = "data/cpu/collect.jsonl"  # what collect writes and the other commands read
MODEL = "predictor/models/cpu"  # what train writes and evaluate, calibrate and live-check read


def _collect(args: argparse.Namespace) -> int:
    from common.settings import load_settings
    from servers.launcher import Ladder, stages_healthy
    from training import collect
    from training.tasks import registry

    settings = load_settings(args.config)
    tasks = registry.build(args.tasks, per_family=args.per_family, seed=args.seed, humaneval_limit=args.humaneval_limit)
    if args.limit:
        tasks = tasks[: args.limit]
    options = collect.CollectOptions(score_drafts=args.drafts)
    have = collect.done_ids(Path(args.out))
    todo = sum(t.id not in have for t in tasks)
    print(f"{len(tasks)} tasks ({args.tasks}), {todo} to collect, {len(settings.stages)} stages -> {args.out}", file=sys.stderr)
    if todo == 0:
        return 0
    if stages_healthy(settings):
        added = collect.run(settings, tasks, Path(args.out), options)
    else:
        with Ladder(settings) as ladder:
            ladder.wait_healthy(settings.server.startup_timeout_s)
            added = collect.run(settings, tasks, Path(args.out), options)
    print(f"added {added} tasks", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from training import train

    card = train.run(Path(args.data), Path(args.out), seed=args.seed, lofo=not args.no_lofo)
    print(card.summary())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training import evaluate

    res = evaluate.run(Path(args.data), Path(args.model), Path(args.out), Path(args.png), args.config, lofo=not args.no_lofo)
    print(evaluate.summary(res))
    return 0


def _flag(field: str) -> str:
    """A ``QualityTarget`` field as ``calibrate``'s option names it."""
    return "--" + field.replace("_", "-")


def _calibrate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from common.settings import QualityTarget
    from training import calibrate

    try:  # the rules a target follows wherever it is set (a config's default_target, a tenant's target): one definition
        QualityTarget(keep=args.keep, within_points=args.within_points, top_share=args.top_share, confidence=args.confidence)
    except ValidationError as exc:
        for err in exc.errors():
            where = f"{_flag(str(err['loc'][0]))}: " if err["loc"] else ""
            message = str(err["msg"]).removeprefix("Value error, ")
            for field in ("within_points", "top_share", "confidence", "keep"):
                message = message.replace(field, _flag(field))
            print(f"error: {where}{message}", file=sys.stderr)
        return 2
    target = calibrate.Target(args.keep, args.within_points, args.top_share, args.confidence)
    cal, row = calibrate.run(Path(args.data), Path(args.model), target, args.config, write=not args.dry_run)
    print(f"validation split, {cal['tasks']} tasks; the rule prices stages in {cal['rule_unit']}; top stage: {cal['top_quality']:.3f}")
    if row is None:
        print(f"no λ up to {cal['grid'][-1]['lambda']:.4g} meets the target: {target.describe()}", file=sys.stderr)
        return 1
    costs = ", ".join(f"{row[f'cost_{u}'] / cal['top_cost'][u]:.2f}x the top stage's {u}" for u in cal["top_cost"])
    print(
        f"{target.describe()}: λ = {row['lambda']:.4g} (accuracy {row['quality']:.3f}, {row['top_share']:.0%} of requests reach the "
        f"top stage, {costs})"
    )
    print(f"set it with cascade.default_lambda: {row['lambda']:.4g} (or a tenant's lambda; ADAPTIVE_SD_CASCADE__DEFAULT_LAMBDA)")
    return 0


def _live_check(args: argparse.Namespace) -> int:
    import json

    from common.settings import load_settings
    from training import evaluate

    settings = load_settings(args.config)
    if settings.cascade.draft_reuse:
        print(
            "error: run the router with cascade.draft_reuse false (ADAPTIVE_SD_CASCADE__DRAFT_REUSE=false) and pass the same config",
            file=sys.stderr,
        )
        return 2
    lambdas = tuple(float(x) for x in args.lambdas.split(","))
    res = evaluate.live_check(settings, Path(args.data), Path(args.model), lambdas, args.limit)
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from training import report

    return report.command(args, args.report_config)


def _learn(args: argparse.Namespace) -> int:
    import json

    from training import learn

    shipped = None if args.data == "none" else Path(args.data)
    if shipped is None and not args.config:
        print("learn --data none: name the ladder's config (--config): which stage is the top, and its baseline", file=sys.stderr)
        return 2
    outcome = learn.learn(Path(args.registry), [Path(p) for p in args.log], shipped, Path(args.base), args.config,
                          args.holdout, args.min_eval, args.margin, args.seed, args.cost_margin)  # fmt: skip
    print(json.dumps(outcome.to_dict(), indent=2))
    print(("promoted " + str(outcome.candidate) if outcome.promoted else "kept " + str(outcome.served)) + ": " + outcome.reason,
          file=sys.stderr)  # fmt: skip
    return 0


def _models(args: argparse.Namespace) -> int:
    import json

    from training import learn

    for record in learn.history(Path(args.registry)):
        print(json.dumps(record))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from training import learn

    try:
        version = learn.rollback(Path(args.registry), args.to)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{version} in service (replicas load it within predictor.reload_s)")
    return 0


def _inputs(command: argparse.ArgumentParser) -> None:
    """``--data`` and ``--model``: the collected answers and the trained predictor, where ``collect`` and ``train`` write them."""
    command.add_argument("--data", default=COLLECTED)
    command.add_argument("--model", default=MODEL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run tasks through every stage; store answers, logprobs, labels")
    c.add_argument("--config", help="ladder YAML (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    c.add_argument("--out", default=COLLECTED)
    c.add_argument("--tasks", default="mix", help="mix (everything the data file holds) | mix-v1 | novel | generated | humaneval | open")
    c.add_argument("--per-family", type=int, default=35, help="generated tasks per family")
    c.add_argument("--humaneval-limit", type=int, default=None)
    c.add_argument("--limit", type=int, default=None, help="only the first N tasks of the set")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--drafts", action="store_true", help="also verify stage i-1's answer on stage i for checked tasks (slow on CPU)")
    t = sub.add_parser("train", help="fit, calibrate, export ONNX and a model card")
    t.add_argument("--data", default=COLLECTED)
    t.add_argument("--out", default=MODEL)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-lofo", action="store_true", help="skip the leave-one-family-out figures of the card (one refit per family)")
    e = sub.add_parser("evaluate", help="replay policies over the collected answers; frontier table + PNG")
    _inputs(e)
    e.add_argument("--out", default="bench/results/frontier.json")
    e.add_argument("--png", default="bench/results/frontier.png")
    e.add_argument("--config", help="the ladder whose prices and rule are replayed (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    e.add_argument("--no-lofo", action="store_true", help="held-out split only (skips one refit per family)")
    ca = sub.add_parser("calibrate", help="the λ that meets a quality or top-stage-share target on the validation split")
    _inputs(ca)
    ca.add_argument("--config", help="the ladder whose rule is calibrated (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    ca.add_argument("--keep", type=float, help="keep this share of the top stage's accuracy, e.g. 0.98")
    ca.add_argument("--within-points", type=float, help="stay within this many accuracy points of the top stage, e.g. 2")
    ca.add_argument("--top-share", type=float, help="send this share of requests to the top stage, e.g. 0.5")
    ca.add_argument(
        "--confidence",
        type=float,
        help="with --keep or --within-points: meet it with this confidence (a lower "
        "bound of the accuracy's paired difference with the top stage), e.g. 0.8",
    )
    ca.add_argument("--dry-run", action="store_true", help="do not write the table next to the model")
    lc = sub.add_parser("live-check", help="compare the offline replay with a running router on test tasks")
    lc.add_argument("--config", help="the running router's config (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    _inputs(lc)
    lc.add_argument("--lambdas", default="5,16,50")
    lc.add_argument("--limit", type=int, default=12)
    lc.add_argument("--out", default="bench/results/live_check.json")
    from training.report import add_arguments as report_arguments  # light: what it plots with is imported when it plots

    report_arguments(sub.add_parser("report", help="the router's traffic log as realised savings and quality over time"))
    from training import learn  # its defaults

    le = sub.add_parser("learn", help="refit on shipped plus logged traffic; promote into a registry if it does better")
    le.add_argument("--registry", required=True, help="the model registry (predictor.path of the routers)")
    le.add_argument("--log", action="append", required=True, help="a traffic log (predictor.log_path); repeat for each replica")
    le.add_argument(
        "--data", default=COLLECTED, help="the shipped collection, trained on too; none: a new ladder, learned from its traffic alone"
    )
    le.add_argument("--base", default=MODEL, help="the model an empty registry starts from")
    le.add_argument("--config", help="the ladder the λ table is calibrated for (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    le.add_argument("--holdout", type=float, default=learn.DEFAULT_HOLDOUT, help="newest share of labelled logged rows to decide on")
    le.add_argument("--min-eval", type=int, default=learn.DEFAULT_MIN_EVAL, help="fewer unseen labelled answers than this: no decision")
    le.add_argument("--margin", type=float, default=learn.DEFAULT_MARGIN, help="log-loss by which the candidate must beat the served model")
    le.add_argument("--cost-margin", type=float, default=learn.DEFAULT_COST_MARGIN,
                    help="share by which the candidate's replayed cost on the tours may exceed the served model's")  # fmt: skip
    le.add_argument("--seed", type=int, default=0)
    mo = sub.add_parser("models", help="a registry's versions and lineage, one JSON line each")
    mo.add_argument("--registry", required=True)
    rb = sub.add_parser("rollback", help="put the parent of the version in service (or --to) back in service")
    rb.add_argument("--registry", required=True)
    rb.add_argument("--to", help="a version to put in service instead of the parent (baseline: a new ladder's registry back to none)")
    args = parser.parse_args(argv)
    commands = {"collect": _collect, "train": _train, "evaluate": _evaluate, "calibrate": _calibrate, "live-check": _live_check,
                "report": _report, "learn": _learn, "models": _models, "rollback": _rollback}  # fmt: skip
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
