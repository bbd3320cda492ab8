"""``adaptive-sd report`` over a traffic log the in-process router wrote: the figures, the windows, the picture, the CLIs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptive_sd import cli as adaptive_sd_cli
from common.settings import Settings
from tests.router.fake_stage import Script
from tests.router.inprocess import ESCALATE, S0, STOP, Router, make_settings, serve
from training import cli as training_cli
from training import report

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JSON_ANSWER = Script('{"answer": 4}', prompt_tokens=11)
# make_settings' per-request prices (s0 1, s1 4), and a per-token unit whose figures tell the token counts apart
S0_PRICES = {"cost": {"request": 1.0}, "tokens": {"prompt_token": 1.0, "output_token": 2.0}}
S1_PRICES = {"cost": {"request": 4.0}, "tokens": {"prompt_token": 1.0, "output_token": 10.0}}


def _settings(log: Path) -> Settings:
    return make_settings(
        {"prices": S0_PRICES}, {"prices": S1_PRICES}, dialect="vllm", shadow={"rate": 1.0}, predictor={"log_path": str(log)}
    )


async def _shadow_checked(r: Router, want: int) -> None:
    for _ in range(300):
        shadow = (await r.client.get("/health")).json()["shadow"]
        if shadow["checked"] >= want and shadow["running"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the shadow check did not settle: {shadow}")


async def _traffic(log: Path) -> None:
    """Five requests, in this order: two stopped at s0 (each checked in the shadow after it: a row of its own), one
    escalated to s1 (which verified s0's answer), one whose s0 answer broke its JSON format, one streamed from s1."""
    settings = _settings(log)
    async with serve(STOP, settings) as r:
        for n in (1, 2):
            resp = await r.chat(temperature=0, max_tokens=32)
            assert resp.headers["x-cascade-stage"] == "s0"
            await _shadow_checked(r, n)
    async with serve(ESCALATE, settings) as r:
        resp = await r.chat(temperature=0, max_tokens=32)
        assert resp.headers["x-cascade-path"] == "s0,s1" and resp.headers["x-cascade-draft"] == "s1:verify"
    async with serve(STOP, settings, scripts=(S0, JSON_ANSWER)) as r:
        resp = await r.chat(temperature=0, max_tokens=32, response_format={"type": "json_object"})
        assert resp.headers["x-cascade-path"] == "s0,s1"  # s0's prose is not JSON: escalated whatever its p̂
    async with serve(ESCALATE, settings) as r:
        resp = await r.chat(temperature=0, max_tokens=32, stream=True)
        assert resp.headers["x-cascade-path"] == "s0,s1" and resp.headers["x-cascade-draft"] == "s1:verify"


def _rows(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _write(log: Path, rows: list[dict[str, Any]]) -> None:
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The router's traffic log, and a checker's verdict on the first request's answer (``passed: false``), as a user adds it."""
    log = tmp_path_factory.mktemp("traffic") / "traffic.jsonl"
    asyncio.run(_traffic(log))
    rows = _rows(log)
    assert [len(r["stages"]) for r in rows] == [1, 1, 1, 1, 2, 2, 2]  # request, shadow, request, shadow, ...
    assert "verifier" in rows[1]["stages"][0] and "verifier" in rows[3]["stages"][0]
    rows[0]["stages"][0]["passed"] = False
    _write(log, rows)
    return log


@pytest.fixture
def log(traffic: Path, tmp_path: Path) -> Path:
    """A copy of ``traffic`` for a test to change."""
    copy = tmp_path / "traffic.jsonl"
    copy.write_text(traffic.read_text())
    return copy


def _config(tmp_path: Path, log: Path) -> Path:
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(_settings(log).model_dump(mode="json")))
    return path


def test_costs_stops_and_labels_of_the_traffic(traffic: Path, tmp_path: Path) -> None:
    res = report.run(traffic, _settings(traffic), tmp_path / "report.png", report.Window(requests=1), progress=False)
    assert res["unit"] == "cost" and res["stages"] == ["s0", "s1"]
    assert res["rows"] == {"requests": 5, "shadow": 2, "streamed": 0, "untimed": 0, "skipped_lines": 0}
    # s0 alone costs 1 where the top stage alone costs 4; an escalation costs 1 + 4, the streamed one too (its answer is
    # logged whole once its stream has ended: router.stream_tap)
    per_request = [(w["cost"]["realised"], w["cost"]["top_stage"]) for w in res["windows"]]
    assert per_request == [(1.0, 4.0), (1.0, 4.0), (5.0, 4.0), (5.0, 4.0), (5.0, 4.0)]
    total = res["total"]
    assert total["cost"] == {"priced_requests": 5, "realised": 17.0, "top_stage": 20.0, "saved": 0.15,
                             "realised_per_request": 3.4, "top_stage_per_request": 4.0}  # fmt: skip
    assert total["stops"] == {"s0": 0.4, "s1": 0.6, "streamed": 0.0}
    assert [w["stops"] for w in res["windows"]][4] == {"s0": 0.0, "s1": 1.0, "streamed": 0.0}
    # s0: a checker's 0 on the first answer (it outranks the shadow check of the same answer, which is a row of its own),
    # two shadow checks (agreement 3/4), two verifications by s1 (the streamed one too), the broken JSON answer's 0;
    # s1 answered last every time: nothing above it looked, and a valid answer is no label on its own.
    # s0's answer is short: a 0 wherever s1's own answer is known to differ (it says 4, not 5), the streamed
    # verifier's too (its answer is put together from its stream)
    assert total["labels"] == 6
    assert total["quality"] == {"s0": {
        "verification": {"labels": 2, "weight": 2.0, "acceptable": 0.0},
        "shadow": {"labels": 2, "weight": 2.0, "acceptable": 0.0},
        "validity": {"labels": 1, "weight": 1.0, "acceptable": 0.0},
        "checker": {"labels": 1, "weight": 1.0, "acceptable": 0.0},
    }}  # fmt: skip
    # each shadow label lies with the request it checked
    assert [w["labels"] for w in res["windows"]] == [2, 1, 1, 1, 1]
    assert res["windows"][1]["quality"] == {"s0": {"shadow": {"labels": 1, "weight": 1.0, "acceptable": 0.0}}}
    assert all(w["seconds"]["measured"] > 0 for w in res["windows"])
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert json.loads((tmp_path / "report.json").read_text()) == res


def test_token_prices_count_the_prompt_once_and_the_kept_draft_once(traffic: Path, tmp_path: Path) -> None:
    res = report.run(traffic, _settings(traffic), tmp_path / "r.json", report.Window(requests=1), unit="tokens", progress=False)
    assert res["unit"] == "tokens" and not (tmp_path / "r.png").exists()
    stopped, _, escalated = ((w["cost"]["realised"], w["cost"]["top_stage"]) for w in res["windows"][:3])
    p0, o0 = S0.prompt_tokens, 4  # "The answer is 5." in the fake's word tokens
    assert stopped == (p0 + 2 * o0, p0 + 10 * o0)
    # s1 verified s0's 4 tokens (kept 3) and wrote 10 tokens in all, the kept ones included; it read the prompt and the
    # draft: the top stage alone reads the prompt (the fewest tokens any stage reported) and writes the same 10
    rows = _rows(traffic)
    s1 = rows[4]["stages"][1]
    assert s1["usage"]["completion_tokens"] == 10 and s1["draft"]["accepted"] == 3 and s1["usage"]["prompt_tokens"] > p0
    assert escalated == (p0 + 2 * o0 + s1["usage"]["prompt_tokens"] + 10 * 10, p0 + 10 * 10)


def test_shadow_labels_are_weighted_by_their_sampling_rate() -> None:
    labels = [
        report.Label(1, None, 0, "shadow", 0, 3.0),
        report.Label(2, None, 0, "shadow", 1, 1.0),
        report.Label(3, None, 0, "verification", 1, 1.0),
    ]
    q = report.figures([], labels, ["s0", "s1"])["quality"]
    assert q == {
        "s0": {"shadow": {"labels": 2, "weight": 4.0, "acceptable": 0.25}, "verification": {"labels": 1, "weight": 1.0, "acceptable": 1.0}}
    }


def test_time_windows(log: Path, tmp_path: Path) -> None:
    rows = _rows(log)
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    for i, row in enumerate(rows):
        row["time"] = start + 20 * 60 * i  # a row every 20 minutes: 2 hours in all
    _write(log, rows)
    res = report.run(log, _settings(log), tmp_path / "r.json", progress=False)
    assert res["window"] == "15m"  # auto: the shortest round span giving at most 20 windows
    assert [w["window"] for w in res["windows"]][:2] == ["2026-01-01 00:00", "2026-01-01 00:15"]
    assert len(res["windows"]) == len(rows)  # every row in a window of its own; empty windows are left out
    assert res["windows"][1]["requests"] == 0 and res["windows"][1]["labels"] == 1  # the first shadow row, 20 min later
    hourly = report.run(log, _settings(log), tmp_path / "h.json", report.parse_window("1h"), progress=False)
    assert [(w["window"], w["requests"]) for w in hourly["windows"]] == [
        ("2026-01-01 00:00", 2),
        ("2026-01-01 01:00", 2),
        ("2026-01-01 02:00", 1),
    ]
    assert [w["from"] for w in hourly["windows"]][1:] == ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]
    assert hourly["total"] == res["total"]


def test_rows_without_a_time_go_by_line(log: Path, tmp_path: Path) -> None:
    rows = _rows(log)
    for row in rows[:3]:  # written before the log recorded the time
        del row["time"]
    _write(log, rows)
    with log.open("a") as f:
        f.write('{"task": "traffic/cut-by-a-cra')  # a crash's last line
    res = report.run(log, _settings(log), tmp_path / "r.json", progress=False)
    assert res["rows"]["untimed"] == 3 and res["rows"]["skipped_lines"] == 1
    assert res["window"] == "1 request"  # auto: about 20 windows of requests, in line order
    assert [w["window"] for w in res["windows"]] == [f"requests {i}-{i}" for i in range(1, 6)]
    assert res["windows"][0]["from"] is None and res["windows"][2]["from"] is not None
    with pytest.raises(report.ReportError, match="3 rows have no time"):
        report.run(log, _settings(log), tmp_path / "r.json", report.parse_window("30m"), progress=False)


def test_the_log_must_come_from_the_configured_ladder(traffic: Path, tmp_path: Path) -> None:
    from common.settings import load_settings

    with pytest.raises(report.ReportError, match="stage 0 is 's0' in the log but 'smollm2-135m' in the config"):
        report.run(traffic, load_settings(ROOT / "configs" / "cpu.yaml"), tmp_path / "r.json", progress=False)
    with pytest.raises(report.ReportError, match=r"no prices\.usd.*cost, tokens"):
        report.run(traffic, _settings(traffic), tmp_path / "r.json", unit="usd", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"task": "t1", "family": "arith", "stages": [{"stage": 0}]}) + "\n")  # a collection, not traffic
    with pytest.raises(report.ReportError, match="holds no traffic rows"):
        report.run(empty, _settings(traffic), tmp_path / "r.json", progress=False)
    with pytest.raises(report.ReportError, match="write a .png, .html, .json file"):
        report.run(traffic, _settings(traffic), tmp_path / "r.svg", progress=False)


def test_parse_window() -> None:
    assert report.parse_window("auto") == report.Window()
    assert report.parse_window("200") == report.Window(requests=200)
    assert report.parse_window("90s") == report.Window(seconds=90.0)
    assert report.parse_window("6h").describe() == "6h" and report.parse_window("1d").seconds == 86400.0
    for bad in ("0", "-3", "1w", "h", ""):
        with pytest.raises(Exception, match="give auto"):
            report.parse_window(bad)


def test_adaptive_sd_report(traffic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = _config(tmp_path, traffic), tmp_path / "out" / "report.png"
    assert adaptive_sd_cli.main(["report", "--log", str(traffic), "--config", str(config), "--out", str(out), "--window", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert json.loads(out.with_suffix(".json").read_text()) == printed
    assert printed["window"] == "2 requests" and [w["requests"] for w in printed["windows"]] == [2, 2, 1]
    assert printed["total"]["cost"]["saved"] == 0.15
    # the global --config, before the command, is the same ladder
    assert adaptive_sd_cli.main(["--config", str(config), "report", "--log", str(traffic), "--out", str(tmp_path / "g.json")]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == printed["total"]
    # a log from another ladder: an error that says so, exit 1
    other = ROOT / "configs" / "cpu.yaml"
    assert adaptive_sd_cli.main(["report", "--log", str(traffic), "--config", str(other), "--out", str(tmp_path / "x.png")]) == 1
    assert "pass the config of the router that wrote the log" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as exc:
        adaptive_sd_cli.main(["report", "--log", str(traffic), "--window", "soon"])
    assert exc.value.code == 2


def test_python_m_training_report_writes_html(traffic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = _config(tmp_path, traffic), tmp_path / "report.html"
    assert training_cli.main(["report", "--log", str(traffic), "--config", str(config), "--out", str(out), "--unit", "tokens"]) == 0
    printed = json.loads(capsys.readouterr().out)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64,iVBORw0KGgo" in page  # the PNG, inline
    assert "<td>total</td><td>5</td>" in page and printed["unit"] == "tokens"
    assert json.loads(out.with_suffix(".json").read_text()) == printed
    assert training_cli.main(["report", "--log", str(traffic), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
