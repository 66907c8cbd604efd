"""A circuit breaker for the teacher: after `failures` consecutive errors it opens for `cooldown`
seconds (calls are skipped and the student answers), then lets one trial call through."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None and self.clock() - self._opened_at < self.cooldown

    def allow(self) -> bool:
        """Whether to call the teacher now (half-open: one trial at a time)."""
        if self._opened_at is None:
            return True
        if self.is_open or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._consecutive += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self.clock()
