"""A circuit breaker for the tenant store.

Closed: calls go through. After ``failures`` consecutive errors it opens:
calls are skipped for ``cooldown_s`` and the caller uses its fallback at once
instead of waiting on a dead server for every request. Then one call is let
through (half-open); success closes the breaker, failure re-opens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock or time.monotonic
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go to the store now? In half-open state only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self._clock()
