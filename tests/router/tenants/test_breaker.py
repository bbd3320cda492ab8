from __future__ import annotations

from router.tenants.breaker import CircuitBreaker
from tests.clock import Clock


def test_opens_after_consecutive_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock(0.0)
    b = CircuitBreaker(failures=3, cooldown_s=1.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.t = 1.5
    assert b.state == "half-open"
    assert b.allow() and not b.allow(), "only one probe at a time"
    b.failure()
    assert b.state == "open"
    clock.t = 3.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failures=2, cooldown_s=1.0, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"
