"""The retry schedule: exponential backoff with jitter, as a pure function of the attempt number."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """`delay_s(n)` after failed attempt n: `min(max_delay_s, initial_s * 2**(n-1))`, less a random share.

    `jitter=1.0` is full jitter (a uniform draw between 0 and that bound), which spreads a burst
    of failures; `jitter=0.0` makes the schedule exact, for tests and for reasoning.
    """

    initial_s: float
    max_delay_s: float
    jitter: float = 1.0

    def bound_s(self, attempt: int) -> float:
        """The largest delay after failed attempt `attempt` (1-based)."""
        exponent = min(attempt - 1, 64)
        return float(min(self.max_delay_s, self.initial_s * 2**exponent))

    def delay_s(self, attempt: int, *, draw: float | None = None) -> float:
        """The delay after failed attempt `attempt`; `draw` in [0, 1) replaces the random draw."""
        share = random.random() if draw is None else draw
        return self.bound_s(attempt) * (1 - self.jitter * share)

    def longest_schedule_s(self, max_tries: int) -> float:
        """The most time `max_tries` attempts can spend waiting between them."""
        return sum(self.bound_s(n) for n in range(1, max_tries))
