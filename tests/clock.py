"""The one test clock: time that stands still until a test moves it.

Code under test that has timing rules (the stage pool's ejections, the tenant store's circuit breaker) takes a
``clock`` callable; tests hand it this and step ``t`` by hand, so the rules are checked exactly and no test
races the wall clock on a loaded machine.
"""

from __future__ import annotations


class Clock:
    """Frozen at ``t`` (seconds) until a test moves it; call it for the time."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
