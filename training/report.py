"""``adaptive-sd report`` (``python -m training report``): the traffic log as realised savings and quality over time.

Reads the router's opt-in traffic log (``predictor.log_path``, ``router.traffic_log``), prices it with the ladder's
config, and reports per window of requests or of time (a PNG or an HTML page, and a JSON summary next to it):

1. **cost**: what the cascade paid, each logged stage answer at its stage's prices on its usage
   (``router.pricing.Pricing.actual``, what the tenants are charged), against what the ladder's top stage alone would
   have cost for the same answer: its prices on the prompt's tokens (the fewest any stage reported: a verifying
   stage's include the draft it scored) and the answer's tokens (the answering stage's completion tokens, which
   include the draft tokens it kept); and the share saved. Also the measured stage seconds per request: realised
   only, since the top stage's own seconds are not known for requests it did not answer (``--unit seconds`` prices
   both sides with the configured ``prices.seconds`` instead);
2. **stops**: the share of requests each stage answered;
3. **quality**: per stage and label source, the share of acceptable answers (``predictor.serving.labels.label``)
   and how many labels there are. Sources: *verification* (the next stage's agreement with an escalated answer),
   *shadow* (a returned answer checked after the response, ``router.shadow``, weighted by 1 / its sampling rate),
   *validity* (an answer that broke the request's tool or JSON rules: always 0) and *checker* (a ``passed`` verdict
   added to the log). The sources sample different answers (verification sees escalated ones only): compare a
   source with itself over time, not with another.

What the log does not hold is not in the figures (``NOTES``): a streamed answer is logged whole once its stream has
ended (``router.stream_tap``), but a stream the client left early, a tool call's and every stream logged before
the router kept them are not (a request whose last logged answer was verified by a stage above went on
to one: it counts in the stops as ``streamed`` and is left out of the costs, as in the router's
``adaptive_sd_cascade_cost_total``); a stream from the first stage without a whole answer writes no row at all;
early-exit aborts, failed stage calls and shadow checks' scoring passes are not counted; and the prices are the
configured ones. Rows written before the log had a ``time`` are ordered by line.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import html
import io
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.settings import ConfigError, Settings
from predictor.serving.labels import label

if TYPE_CHECKING:  # imported where it prices: the CLIs build this command's parser at every start
    from router.pricing import Pricing

SOURCES = ("verification", "shadow", "validity", "checker")
STREAMED = "streamed"  # the stops' name for a request answered by a stream the log does not hold
AUTO_WINDOWS = 20  # --window auto: about this many windows
AUTO_TIME_SPAN_S = 3600.0  # --window auto: time windows when every row has a time and the rows span more than this
_NICE_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
OUTPUTS = (".png", ".html", ".json")
NOTES = [
    "cost: each logged stage answer at its configured prices on its usage; top_stage: the top stage's prices on the "
    "prompt's tokens (the fewest any stage reported) and the answer's tokens",
    "seconds: measured stage seconds of the logged answers only (the top stage's are unknown where it did not answer)",
    "not in the log, so not counted: streams the log does not hold whole (left early by the client, tool calls, "
    "logs written before streamed answers were kept: such requests count in the stops as 'streamed' and not "
    "in the costs; such a stream from the first stage writes no row), early-exit aborts, failed stage "
    "calls, shadow checks' scoring passes",
    "quality: label shares per source; shadow labels weighted by 1 / their sampling rate; sources sample different answers",
]


class ReportError(RuntimeError):
    """A log the report cannot read with this config, or an output it cannot write."""


@dataclass(frozen=True)
class Window:
    """How requests are grouped: ``requests`` per window, or ``seconds`` of time; neither: chosen (``auto``)."""

    requests: int | None = None
    seconds: float | None = None

    def describe(self) -> str:
        if self.requests is not None:
            return f"{self.requests} request{'s' if self.requests != 1 else ''}"
        if self.seconds is not None:
            return _span(self.seconds)
        return "auto"


def parse_window(text: str) -> Window:
    """``auto``, a number of requests (``200``), or a time span (``90s``, ``15m``, ``6h``, ``1d``)."""
    text = text.strip().lower()
    if text == "auto":
        return Window()
    if text.isdigit() and int(text) > 0:
        return Window(requests=int(text))
    m = _SPAN.match(text)
    if m and float(m.group(1)) > 0:
        return Window(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
    raise argparse.ArgumentTypeError(f"{text!r}: give auto, a number of requests (200) or a time span (90s, 15m, 6h, 1d)")


def _span(seconds: float) -> str:
    for suffix, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{suffix}"
    return f"{seconds:g}s"


# -- reading the log ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request's row: where it stopped and what it cost."""

    line: int
    time: float | None
    stage: int | None  # the stage that answered; None: a stream above the last logged stage (STREAMED)
    cost: float | None  # realised, in the report's unit; None when streamed (its tokens are not logged)
    top_cost: float | None  # the top stage alone on the same answer
    seconds: float  # measured seconds of the logged stages


@dataclass(frozen=True)
class Label:
    """One stage answer's label (a request's row or a shadow check's)."""

    line: int
    time: float | None
    stage: int
    source: str
    value: int
    weight: float


@dataclass
class Log:
    requests: list[Request]
    labels: list[Label]
    shadow_rows: int = 0
    skipped_lines: int = 0  # not a traffic row: cut by a crash, or another file's rows

    def untimed(self) -> set[int]:
        """The lines of the rows without a time."""
        return {r.line for r in self.requests if r.time is None} | {x.line for x in self.labels if x.time is None}


def source_of(stage_row: dict[str, Any]) -> str:
    """Which source gave a labelled stage answer its label, in the order ``label`` reads them."""
    if stage_row.get("passed") is not None:
        return "checker"
    if stage_row.get("valid") is False:
        return "validity"
    return "shadow" if "verifier" in stage_row else "verification"


def _tokens(stage_row: dict[str, Any]) -> tuple[int, int] | None:
    """(prompt, completion) tokens the stage reported; None when it reported none."""
    usage = stage_row.get("usage") or {}
    if "prompt_tokens" not in usage and "completion_tokens" not in usage:
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def pricing(settings: Settings, unit: str) -> Pricing:
    """The ladder's configured prices in ``unit`` (the rule's own prices; answer lengths are not needed after the fact)."""
    from router.pricing import Pricing

    missing = [s.name for s in settings.stages if unit not in s.prices]
    if missing:
        units = sorted(set.intersection(*(set(s.prices) for s in settings.stages)))
        raise ReportError(f"stages {missing} have no prices.{unit}; units every stage is priced in: {', '.join(units) or 'none'}")
    n = len(settings.stages)
    return Pricing([s.price(unit) for s in settings.stages], [None] * n, [None] * n)


def request_costs(stages: list[dict[str, Any]], prices: Pricing) -> tuple[float, float]:
    """A request row's realised cost (every logged stage at its prices on its usage; one without usage: its price per
    request, as the router charges) and the top stage's alone on the same prompt and answer."""
    realised = 0.0
    prompts = []
    for s in stages:
        tokens = _tokens(s)
        realised += prices.actual(s["stage"], *tokens) if tokens else prices.prices[s["stage"]].request
        if tokens:
            prompts.append(tokens[0])
    answer = _tokens(stages[-1])
    top = prices.actual(len(prices.prices) - 1, min(prompts, default=0), answer[1] if answer else 0)
    return realised, top


def _check_stage(s: dict[str, Any], names: list[str], line: int) -> int:
    stage = s.get("stage")
    if not isinstance(stage, int) or not 0 <= stage < len(names):
        raise ReportError(f"line {line}: stage {stage!r} is not on this config's ladder of {len(names)}: pass the config of the "
                          "router that wrote the log (--config)")  # fmt: skip
    if s.get("name") != names[stage]:
        raise ReportError(f"line {line}: stage {stage} is {s.get('name')!r} in the log but {names[stage]!r} in the config: pass "
                          "the config of the router that wrote the log (--config)")  # fmt: skip
    return stage


def read(path: Path, settings: Settings, unit: str, progress: bool = True) -> Log:
    """Every request and label of the traffic log at ``path``, priced in ``unit``."""
    prices = pricing(settings, unit)
    names = [s.name for s in settings.stages]
    log = Log([], [])
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ReportError(f"cannot read the traffic log {path}: {exc.strerror}") from None
    with f, _progress(path.stat().st_size, progress) as bar:
        for line, raw in enumerate(f, 1):
            if bar is not None:
                bar.update(len(raw))
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.skipped_lines += 1  # a line cut by a crash
                continue
            if not isinstance(row, dict) or row.get("family") != "traffic" or not row.get("stages"):
                log.skipped_lines += 1
                continue
            _add(log, row, line, names, prices)
    if not log.requests and not log.labels:
        raise ReportError(f"{path} holds no traffic rows (the router's predictor.log_path)")
    return log


def _add(log: Log, row: dict[str, Any], line: int, names: list[str], prices: Pricing) -> None:
    t = row.get("time")
    when = float(t) if isinstance(t, (int, float)) else None
    stages: list[dict[str, Any]] = row["stages"]
    for s in stages:
        stage = _check_stage(s, names, line)
        value = label(s)
        if value is not None:
            log.labels.append(Label(line, when, stage, source_of(s), value, float(s.get("weight") or 1.0)))
    if any("verifier" in s for s in stages):  # a shadow check's row: a label for an answer already logged and paid for
        log.shadow_rows += 1
        return
    seconds = sum(float(s.get("seconds") or 0.0) for s in stages)
    if stages[-1].get("agreement") is not None:  # a stage above verified the last logged answer: its stream is not logged
        log.requests.append(Request(line, when, None, None, None, seconds))
        return
    realised, top = request_costs(stages, prices)
    log.requests.append(Request(line, when, stages[-1]["stage"], realised, top, seconds))


@contextlib.contextmanager
def _progress(total: int, show: bool) -> Iterator[Any]:
    """A tqdm bar over the log's bytes, shown on a terminal (as ``collect``'s); None without tqdm (the train extra)."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc="report", disable=None if show else True) as bar:
        yield bar


# -- windows and their figures --------------------------------------------------------------------------------------


def choose(log: Log, window: Window) -> Window:
    """``window`` as given, or the automatic one: time windows of a round span (about ``AUTO_WINDOWS`` of them) when
    every row has a time and they span more than an hour, else about ``AUTO_WINDOWS`` windows of requests."""
    times = [r.time for r in log.requests] + [x.time for x in log.labels]
    untimed = len(log.untimed())
    if window.seconds is not None and untimed:
        raise ReportError(f"{untimed} rows have no time (written before the log recorded it): use --window with a number of "
                          "requests, or auto")  # fmt: skip
    if window.requests is not None or window.seconds is not None:
        return window
    timed = [t for t in times if t is not None]
    if not untimed and timed and max(timed) - min(timed) > AUTO_TIME_SPAN_S:
        span = max(timed) - min(timed)
        return Window(seconds=float(next((s for s in _NICE_S if span / s <= AUTO_WINDOWS), _NICE_S[-1])))
    return Window(requests=max(1, math.ceil(len(log.requests) / AUTO_WINDOWS)))


Bucket = tuple[str, tuple[float | None, float | None], list[Request], list[Label]]  # a window's name, time span, rows


def windows(log: Log, window: Window) -> list[Bucket]:
    """The non-empty windows in order: a label, their span in time, their requests and labels."""
    groups: dict[int, tuple[list[Request], list[Label]]] = defaultdict(lambda: ([], []))
    if window.seconds is not None:
        size = window.seconds
        origin = math.floor(min(t for t in [*(r.time for r in log.requests), *(x.time for x in log.labels)] if t is not None) / size)
        for r in log.requests:
            groups[math.floor(r.time / size) - origin if r.time is not None else 0][0].append(r)
        for x in log.labels:
            groups[math.floor(x.time / size) - origin if x.time is not None else 0][1].append(x)
        out: list[Bucket] = []
        for key in sorted(groups):
            start = (origin + key) * size
            shown = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d" if size % 86400 == 0 else "%Y-%m-%d %H:%M")
            out.append((shown, (start, start + size), *groups[key]))
        return out
    size = window.requests or 1
    lines = [r.line for r in log.requests]
    for k, r in enumerate(log.requests):
        groups[k // size][0].append(r)
    for x in log.labels:  # with the request it labels (a shadow row: the latest request logged before it)
        groups[max(bisect.bisect_right(lines, x.line) - 1, 0) // size][1].append(x)
    result: list[Bucket] = []
    for key in sorted(groups):
        reqs, labels = groups[key]
        times = [t for t in (*(r.time for r in reqs), *(x.time for x in labels)) if t is not None]
        first, last = key * size + 1, key * size + len(reqs)
        result.append((f"requests {first}-{last}", (min(times, default=None), max(times, default=None)), reqs, labels))
    return result


def _when(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _share(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def figures(requests: list[Request], labels: list[Label], names: list[str]) -> dict[str, Any]:
    """One window's (or the whole log's) cost, seconds, stops and label shares."""
    priced = [r for r in requests if r.cost is not None and r.top_cost is not None]
    realised = sum((r.cost for r in priced if r.cost is not None), 0.0)
    top = sum((r.top_cost for r in priced if r.top_cost is not None), 0.0)
    stops = {name: _share(sum(r.stage == s for r in requests), len(requests)) for s, name in enumerate(names)}
    stops[STREAMED] = _share(sum(r.stage is None for r in requests), len(requests))
    quality: dict[str, dict[str, Any]] = {}
    for s, name in enumerate(names):
        per: dict[str, Any] = {}
        for source in SOURCES:
            got = [x for x in labels if x.stage == s and x.source == source]
            if got:
                weight = sum(x.weight for x in got)
                per[source] = {"labels": len(got), "weight": round(weight, 4),
                               "acceptable": _share(sum(x.weight * x.value for x in got), weight)}  # fmt: skip
        if per:
            quality[name] = per
    return {
        "requests": len(requests),
        "cost": {"priced_requests": len(priced), "realised": round(realised, 6), "top_stage": round(top, 6),
                 "saved": round(1.0 - realised / top, 4) if top > 0 else None,
                 "realised_per_request": round(realised / len(priced), 6) if priced else None,
                 "top_stage_per_request": round(top / len(priced), 6) if priced else None},
        "seconds": {"measured": round(sum(r.seconds for r in requests), 4),
                    "per_request": round(sum(r.seconds for r in requests) / len(requests), 4) if requests else None},
        "stops": stops,
        "labels": len(labels),
        "quality": quality,
    }  # fmt: skip


def summarise(log: Log, settings: Settings, unit: str, window: Window, path: Path) -> dict[str, Any]:
    """The report's JSON: the log's totals and each window's figures."""
    names = [s.name for s in settings.stages]
    window = choose(log, window)
    return {
        "log": str(path),
        "unit": unit,
        "stages": names,
        "window": window.describe(),
        "rows": {"requests": len(log.requests), "shadow": log.shadow_rows, "streamed": sum(r.stage is None for r in log.requests),
                 "untimed": len(log.untimed()), "skipped_lines": log.skipped_lines},
        "total": figures(log.requests, log.labels, names),
        "windows": [{"window": name, "from": _when(span[0]), "to": _when(span[1]), **figures(reqs, labels, names)}
                    for name, span, reqs, labels in windows(log, window)],
        "notes": NOTES,
    }  # fmt: skip


# -- the picture ----------------------------------------------------------------------------------------------------

_MARKERS = {"verification": "-o", "shadow": "--s", "validity": ":x", "checker": "-.^"}


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def plot(result: dict[str, Any], out: Path | io.BytesIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws, names, unit = result["windows"], result["stages"], result["unit"]
    x = list(range(len(ws)))
    fig, axes = plt.subplots(4, 1, figsize=(10.0, 13.0), sharex=True)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(names) + 1)]

    ax = axes[0]
    ax.plot(x, [_nan(w["cost"]["realised_per_request"]) for w in ws], "-o", color="tab:blue", label="realised (cascade)")
    ax.plot(x, [_nan(w["cost"]["top_stage_per_request"]) for w in ws], "--s", color="tab:gray", label="top stage only")
    ax.set_ylabel(f"{unit} per request")
    ax.set_ylim(bottom=0)
    saved = ax.twinx()
    saved.plot(x, [100 * _nan(w["cost"]["saved"]) for w in ws], ":^", color="tab:green", label="saved (right)")
    saved.set_ylabel("saved vs top stage only (%)")
    handles = ax.get_legend_handles_labels()[0] + saved.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="best")
    ax.set_title(f"cost per request, {unit} (configured prices; priced requests only)", fontsize=10)

    ax = axes[1]
    bottom = [0.0] * len(ws)
    for i, name in enumerate([*names, STREAMED]):
        share = [w["stops"][name] or 0.0 for w in ws]
        if any(share):
            ax.bar(x, share, bottom=bottom, color=colors[i] if name != STREAMED else "lightgray", label=name)
            bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of requests")
    ax.set_title("where requests stopped", fontsize=10)
    ax.legend(fontsize=8, loc="best")

    ax = axes[2]
    for i, name in enumerate(names):
        for source in SOURCES:
            if any(source in w["quality"].get(name, {}) for w in ws):
                ys = [_nan(w["quality"].get(name, {}).get(source, {}).get("acceptable")) for w in ws]
                ax.plot(x, ys, _MARKERS[source], color=colors[i], label=f"{name}: {source}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share acceptable")
    ax.set_title("quality of each stage's answers, by label source", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", ncol=2)

    ax = axes[3]
    bottom = [0.0] * len(ws)
    for k, source in enumerate(SOURCES):
        n = [float(sum(q.get(source, {}).get("labels", 0) for q in w["quality"].values())) for w in ws]
        if any(n):
            ax.bar(x, n, bottom=bottom, color=plt.get_cmap("Set2")(k), label=source)
            bottom = [b + v for b, v in zip(bottom, n, strict=True)]
    ax.set_ylabel("labels")
    ax.set_title("labels per window", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    step = max(1, math.ceil(len(ws) / 12))
    ax.set_xticks(x[::step], [w["window"] for w in ws][::step], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(f"window ({result['window']})")

    total = result["total"]
    saved_total = total["cost"]["saved"]
    head = f"{total['requests']} requests, {total['labels']} labels"
    if saved_total is not None:
        head += f"; saved {100 * saved_total:.1f}% of the top stage's cost ({unit})"
    fig.suptitle(f"{Path(result['log']).name}: {head}", fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)


def page(result: dict[str, Any]) -> str:
    """The HTML report: the picture inline, a table of the windows and the JSON."""
    png = io.BytesIO()
    plot(result, png)
    names = result["stages"]

    def cell(v: Any, pct: bool = False) -> str:
        return "" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))

    head = ["window", "requests", "realised", "top stage", "saved", *(f"stop {n}" for n in [*names, STREAMED]), "labels"]
    rows = []
    for w in [*result["windows"], {"window": "total", **result["total"]}]:
        c = w["cost"]
        vals = [cell(w["window"]), cell(w["requests"]), cell(c["realised_per_request"]), cell(c["top_stage_per_request"]),
                cell(c["saved"], True), *(cell(w["stops"][n], True) for n in [*names, STREAMED]), cell(w["labels"])]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>adaptive-sd report</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>adaptive-sd report: {html.escape(Path(result['log']).name)}</h1>"
        f'<img alt="report" src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}">'
        f"<h2>per window ({html.escape(result['window'])}; cost per priced request, in {html.escape(result['unit'])})</h2>"
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>"
        f"<details><summary>JSON</summary><pre>{html.escape(json.dumps(result, indent=2))}</pre></details></body></html>\n"
    )


# -- the command ----------------------------------------------------------------------------------------------------


def run(
    log: Path, settings: Settings, out: Path, window: Window = Window(), unit: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Read the traffic log at ``log``, write the report to ``out`` (.png, .html, or .json alone) and its JSON summary
    next to it (``out`` with the suffix .json); returns the summary."""
    if out.suffix.lower() not in OUTPUTS:
        raise ReportError(f"--out {out}: write a {', '.join(OUTPUTS)} file")
    if out.suffix.lower() != ".json":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError("the picture needs matplotlib: pip install 'adaptive-sd[train]' (or --out report.json)") from None
    unit = unit or settings.cascade.cost_unit
    result = summarise(read(log, settings, unit, progress), settings, unit, window, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    if out.suffix.lower() == ".png":
        plot(result, out)
    elif out.suffix.lower() == ".html":
        out.write_text(page(result))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` command's options (``adaptive-sd report`` and ``python -m training report``)."""
    parser.add_argument("--log", required=True, help="the router's traffic log (predictor.log_path)")
    parser.add_argument("--config", dest="report_config", metavar="CONFIG",
                        help="the ladder YAML of the router that wrote the log: its stages and prices "
                             "(default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")  # fmt: skip
    parser.add_argument("--out", default="report.png", help="report.png, report.html or report.json; the JSON summary is written "
                        "next to it (report.json)")  # fmt: skip
    parser.add_argument("--window", type=parse_window, default=Window(),
                        help="auto (default: time windows when every row has a time and they span over an hour, else about "
                             f"{AUTO_WINDOWS} windows of requests), a number of requests (200), or a time span (15m, 6h, 1d)")  # fmt: skip
    parser.add_argument("--unit", help="price in this unit of stages[i].prices (default: cascade.cost_unit)")


def command(args: argparse.Namespace, config: str | None) -> int:
    """Run the report the parsed ``args`` ask for, with the ladder at ``config``; prints the JSON summary."""
    from common.settings import load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    result = run(Path(args.log), settings, out, args.window, args.unit)
    print(json.dumps(result, indent=2))
    written = [out.with_suffix(".json")] if out.suffix.lower() == ".json" else [out, out.with_suffix(".json")]
    print(f"wrote {' and '.join(map(str, written))}", file=sys.stderr)
    return 0
