"""Endpoint health: passive outlier detection, active probes and vLLM's queue gauges.

Each endpoint of a stage (``router.stage_pool``) has an ``EndpointHealth``, a
small state machine fed by the outcomes of real requests and of probes:

* **healthy**: takes traffic. ``pool.eject_after`` consecutive failures (a refused
  or timed-out connection, a 5xx, a timeout, a body that is not a chat completion)
  eject it. A 4xx is the client's fault and counts as the server answering.
* **ejected** for a cool-down: no traffic. The n-th ejection in a row lasts
  ``eject_base_s * 2**(n-1)``, at most ``eject_max_s``: a server that keeps failing
  is tried less and less often, one that failed once comes back soon.
* **probation** once the cool-down is over: takes traffic again; its first
  failure ejects it at once (with the doubled cool-down), its first success makes
  it healthy and resets the doubling.

Probes (``GET /health``, or ``GET /v1/models`` for a plain OpenAI-compatible
endpoint, every ``pool.probe_interval_s``) feed the same counter, so an idle
endpoint that died is ejected without a request paying for it. A successful
probe ends an ejection early only when the ejection was for being unreachable
(connect errors, failed probes): the server is back, and waiting out the
cool-down would only leave a healthy replica idle. An endpoint ejected for
answering badly (5xx, timeouts, bad bodies) sits out its cool-down even if its
``/health`` says ok, since ``/health`` is exactly what such a server still answers.

A probe counts any HTTP answer below 500 as alive (a 401 on ``/v1/models`` is a
hosted endpoint up, with a key problem that real requests report as they are).

The clock is injectable so the rules are tested without sleeping
(``tests/router/test_stage_pool_rules.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Literal

from common.settings import PoolConfig
from router._http import ConnectTimeout, HttpError, HttpPool, ReadTimeout, Timeouts, TotalTimeout

FailureKind = Literal["connect", "timeout", "error", "probe"]
State = Literal["healthy", "ejected", "probation"]

# the two vLLM gauges the load-aware cost reads (``vllm:num_requests_running`` / ``..._waiting``, any labels)
_GAUGE = re.compile(rb"^vllm:num_requests_(running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


class EndpointHealth:
    """Outlier detection for one endpoint (see the module docstring for the rules)."""

    __slots__ = (
        "_clock",
        "consecutive",
        "ejected_for",
        "ejected_until",
        "ejections",
        "last_error",
        "probation",
        "rules",
        "total_ejections",
    )

    def __init__(self, rules: PoolConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self.consecutive = 0  # failures in a row
        self.ejections = 0  # ejections in a row (the cool-down doubles with each)
        self.total_ejections = 0
        self.ejected_until = 0.0
        self.ejected_for: FailureKind | None = None
        self.probation = False
        self.last_error: str | None = None

    def available(self, now: float) -> bool:
        """May this endpoint take a request now (healthy, or on probation after its cool-down)?"""
        return now >= self.ejected_until

    def state(self, now: float | None = None) -> State:
        now = self._clock() if now is None else now
        if now < self.ejected_until:
            return "ejected"
        return "probation" if self.probation else "healthy"

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until the cool-down ends (0 when not ejected)."""
        now = self._clock() if now is None else now
        return max(0.0, self.ejected_until - now)

    def success(self) -> None:
        self.consecutive = 0
        if self.probation:
            self.probation = False
            self.ejections = 0
            self.ejected_for = None

    def failure(self, kind: FailureKind, message: str) -> bool:
        """Count a failure; True when it ejected the endpoint."""
        self.last_error = message
        if self.state() == "ejected":
            return False  # a request that was already on its way when the endpoint was ejected
        self.consecutive += 1
        if self.probation or self.consecutive >= self.rules.eject_after:
            self.eject(kind)
            return True
        return False

    def eject(self, kind: FailureKind) -> None:
        self.ejections += 1
        self.total_ejections += 1
        cooldown = min(self.rules.eject_base_s * 2.0 ** (self.ejections - 1), self.rules.eject_max_s)
        self.ejected_until = self._clock() + cooldown
        self.ejected_for = kind
        self.probation = True
        self.consecutive = 0

    def probe_ok(self) -> None:
        """A probe answered: an endpoint ejected for being unreachable may take traffic again (on probation)."""
        if self.state() == "ejected":
            if self.ejected_for in ("connect", "probe"):
                self.ejected_until = self._clock()
            return
        self.consecutive = 0  # it answers; a failing real request will count again from here

    def probe_failed(self, message: str) -> bool:
        return self.failure("probe", message)


async def probe(pool: HttpPool, url: str, headers: dict[str, str], timeout_s: float) -> str | None:
    """GET ``url`` (on ``pool``'s origin); None when the server is up (any status < 500), else what went wrong."""
    try:
        status, _ = await pool.get(url, headers, Timeouts.within(timeout_s))
    except (ConnectTimeout, ReadTimeout, TotalTimeout):
        return f"probe {url}: no answer within {timeout_s:g} s"
    except HttpError as exc:
        return f"probe {url}: {type(exc).__name__}: {exc}"
    return None if status < 500 else f"probe {url}: HTTP {status}"


async def queue_gauges(pool: HttpPool, url: str, timeout_s: float) -> tuple[float, float] | Literal["absent"] | None:
    """(running, waiting) from a vLLM ``/metrics`` page, summed over label sets; "absent" when the server has no such
    page or gauges (not a vLLM server: stop asking), None when it could not be read this time."""
    try:
        status, text = await pool.get(url, {}, Timeouts.within(timeout_s))
    except HttpError:
        return None
    if status == 404:
        return "absent"
    if status != 200:
        return None
    return parse_queue_gauges(text) or "absent"


def parse_queue_gauges(text: bytes) -> tuple[float, float] | None:
    found = {b"running": 0.0, b"waiting": 0.0}
    seen = False
    for m in _GAUGE.finditer(text):
        found[m.group(1)] += float(m.group(2))
        seen = True
    return (found[b"running"], found[b"waiting"]) if seen else None
