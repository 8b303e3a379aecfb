"""How a call the server could not take right now is sent again."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a request the server could not take right now (UNAVAILABLE, RESOURCE_EXHAUSTED):
    exponential backoff with full jitter, so clients that were refused together do not return
    together. ``attempts=1`` turns retries off."""

    attempts: int = 4
    base_s: float = 0.05
    max_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))

    def again(self, attempt: int, started: float, timeout: float | None) -> float | None:
        """The pause before attempt ``attempt + 1``, or None when no attempt is left or the call's
        ``timeout`` (seconds since ``started``, monotonic) would pass during it."""
        if attempt + 1 >= self.attempts:
            return None
        pause = self.delay(attempt)
        if timeout is not None and time.monotonic() + pause - started >= timeout:
            return None
        return pause
