"""The restart policy for supervised children.

Two separate decays, because they answer different questions:

* the *budget* (at most ``max_restarts`` within a sliding ``window``) decides when to
  give up: each restart ages out of the window on its own;
* the *backoff exponent* (``delay = min(base * 2**n, max_delay) + jitter``) decides how
  long to wait: ``n`` counts consecutive crashes and resets once the child has run
  healthily for ``stable_after`` seconds, so a child that crashes once a day restarts fast.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

from sandbox_runtime.config import RestartSettings


class RestartPolicy:
    """Tracks one child's crashes; :meth:`on_crash` returns the delay or None (give up)."""

    def __init__(
        self,
        settings: RestartSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._s = settings
        self._clock = clock
        self._rng = rng
        self._restarts: deque[float] = deque()
        self._consecutive = 0
        self._healthy_since: float | None = None

    @property
    def restarts_in_window(self) -> int:
        """Restarts still counted against the budget."""
        self._prune(self._clock())
        return len(self._restarts)

    def _prune(self, now: float) -> None:
        while self._restarts and now - self._restarts[0] >= self._s.window:
            self._restarts.popleft()

    def on_healthy(self) -> None:
        """The child (re)started and passed its readiness check."""
        self._healthy_since = self._clock()

    def on_crash(self) -> float | None:
        """Record an unexpected exit; the backoff delay in seconds, or None when the budget is spent."""
        now = self._clock()
        if self._healthy_since is not None and now - self._healthy_since >= self._s.stable_after:
            self._consecutive = 0
        self._healthy_since = None
        self._prune(now)
        if len(self._restarts) >= self._s.max_restarts:
            return None
        delay = min(self._s.backoff_base * (2.0**self._consecutive), self._s.backoff_max)
        self._consecutive += 1
        self._restarts.append(now)
        return delay + self._rng() * self._s.jitter
