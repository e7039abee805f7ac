"""The restart policy: exponential backoff with jitter, a sliding budget, decay after healthy time."""

from __future__ import annotations

from sandbox_runtime.config import RestartSettings
from sandbox_runtime.restart import RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _policy(clock: Clock, jitter: float = 0.0, rng: float = 0.5) -> RestartPolicy:
    settings = RestartSettings(backoff_base=1.0, backoff_max=60.0, jitter=jitter, max_restarts=5, window=600.0)
    return RestartPolicy(settings, clock=clock, rng=lambda: rng)


def test_backoff_doubles_then_the_sixth_crash_in_the_window_gives_up() -> None:
    clock = Clock()
    policy = _policy(clock)
    delays = []
    for _ in range(5):
        delays.append(policy.on_crash())
        clock.now += 1
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert policy.on_crash() is None


def test_backoff_is_capped_and_jittered() -> None:
    clock = Clock()
    settings = RestartSettings(backoff_base=1.0, backoff_max=60.0, jitter=2.0, max_restarts=100, window=600.0)
    policy = RestartPolicy(settings, clock=clock, rng=lambda: 0.25)
    delays = [policy.on_crash() for _ in range(8)]
    assert delays[-1] == 60.0 + 0.5 and delays[0] == 1.0 + 0.5


def test_budget_decays_as_restarts_leave_the_window() -> None:
    clock = Clock()
    policy = _policy(clock)
    for _ in range(5):
        assert policy.on_crash() is not None
    clock.now += 601
    assert policy.restarts_in_window == 0
    assert policy.on_crash() is not None


def test_healthy_time_resets_the_backoff_but_not_the_budget() -> None:
    clock = Clock()
    policy = _policy(clock)
    policy.on_crash()
    policy.on_crash()
    policy.on_healthy()
    clock.now += 61
    assert policy.on_crash() == 1.0, "stable for a minute: back to the shortest delay"
    assert policy.restarts_in_window == 3
