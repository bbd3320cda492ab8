"""Shadow checks: a sampled share of the answers the cascade returns from a lower stage, verified after the fact.

The labels that escalations give (``router.labels``) cover only the answers the
cascade escalated, a sample biased by the rule itself. A shadow check covers the
rest: with probability ``cascade.shadow.rate``, an answer returned from stage i is
scored by stage i+1 as a draft (one ``prompt_logprobs`` pass, the collection's
agreement measure, ``router.draft.score_draft``) once the response has gone out.
Its label carries ``1 / rate`` as its weight, so training can weight the rows
without bias.

A check never delays user traffic. It runs as a background task after the
response; at most ``max_concurrent`` run at once in a replica, and a check is
skipped, not queued, when that many are running or when stage i+1 has a call in
flight (``StagePool.idle``). It is skipped as well where verification cannot be
lossless (``router.draft.why_not_verify``: a dialect without prompt logprobs,
sampling, tools, JSON formats, stop strings). A failed check is counted and
dropped. What it costs is stage i+1's prompt processing of the prompt and the
draft: on a GPU about two decode steps, on a CPU the prefill rate, hence a small
default rate.

Every outcome is counted in ``adaptive_sd_shadow_checks_total{stage,outcome}``, each
label in ``adaptive_sd_labels_total`` (source ``shadow``), and the check's row is
appended to the traffic log where one is kept.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from common.errors import APIError
from common.settings import ShadowConfig
from predictor.serving.labels import agreement_label
from router.draft import score_draft, why_not_verify
from router.labels import FreeLabel, count_label
from router.metrics import SHADOW_CHECKS
from router.stage import Stage, StageFailure
from router.stage_pool import StagePool

log = logging.getLogger("adaptive_sd.router.shadow")
Outcome = Literal["checked", "busy", "unverifiable", "failed"]
OnLabel = Callable[[FreeLabel], None]


class ShadowChecks:
    """The shadow checks of one router replica (module docstring)."""

    def __init__(self, config: ShadowConfig, stages: Sequence[Stage], rng: random.Random | None = None) -> None:
        self.rate = config.rate
        self.untrained_rate = config.rate if config.untrained_rate is None else config.untrained_rate
        self.max_concurrent = config.max_concurrent
        self.stages = list(stages)
        self._rng = rng or random.Random()
        self._running: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {"checked": 0, "busy": 0, "unverifiable": 0, "failed": 0}

    def draw(self, stage: int, untrained: bool = False) -> float:
        """Whether to check an answer that stage ``stage`` returned: the rate it was drawn at (its label weighs 1 /
        that), drawn with that probability below the top stage; 0 when not. ``untrained``: the predictor in
        service is not trained on this ladder, and ``untrained_rate`` applies."""
        rate = self.untrained_rate if untrained else self.rate
        return rate if rate > 0 and stage + 1 < len(self.stages) and self._rng.random() < rate else 0.0

    def start(self, stage: int, body: dict[str, Any], answer: str, on_label: OnLabel | None = None, rate: float | None = None) -> bool:
        """Check ``answer`` (drawn at ``rate``, by default ``self.rate``: ``draw``), which stage ``stage`` returned for
        the chat ``body`` (upstream, no model), on the next stage in the background, unless it cannot be verified or
        that would wait (module docstring); True when a check was started. ``on_label`` receives its label when it
        is done."""
        verifier = self.stages[stage + 1]
        if why_not_verify(verifier, body, answer) is not None:
            return self._count(verifier, "unverifiable")
        if len(self._running) >= self.max_concurrent or (isinstance(verifier, StagePool) and not verifier.idle()):
            return self._count(verifier, "busy")
        weight = 1.0 / (rate or self.rate)
        task = asyncio.get_running_loop().create_task(self._check(stage, verifier, body, answer, on_label, weight))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    async def _check(self, stage: int, verifier: Stage, body: dict[str, Any], answer: str, on_label: OnLabel | None,
                     weight: float) -> None:  # fmt: skip
        try:
            check = await score_draft(verifier, {**body, "temperature": 0}, answer)
        except (StageFailure, APIError) as exc:  # APIError: the stage refused the check (a 4xx)
            log.warning("shadow check on %s failed: %s", verifier.name, exc)
            self._count(verifier, "failed")
            return
        if check is None or not check.draft_tokens:
            self._count(verifier, "failed")
            return
        self._count(verifier, "checked")
        name = self.stages[stage].name
        value = agreement_label(check.fraction, answer, check.same)
        label = FreeLabel(stage, name, value, "shadow", check.fraction, verifier.name, weight, same=check.same)
        count_label(label)
        if on_label is not None:
            on_label(label)

    def skip(self, stage: int, outcome: Outcome) -> None:
        """A check drawn for an answer of ``stage`` that does not run: counted, so that the labels lost show (a stream
        that did not end, or an answer that broke the request's rules, has no whole answer to check: ``unverifiable``)."""
        self._count(self.stages[stage + 1], outcome)

    def _count(self, verifier: Stage, outcome: Outcome) -> bool:
        self.counts[outcome] += 1
        SHADOW_CHECKS.labels(verifier.name, outcome).inc()
        return False

    def health(self) -> dict[str, Any]:
        """For ``/health``: the rate, what runs now, and what came of the checks so far in this replica."""
        return {"rate": self.rate, "untrained_rate": self.untrained_rate, "running": len(self._running)} | self.counts

    async def close(self) -> None:
        """Cancel the checks still running (at shutdown: their labels are lost, the users' answers are not)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
