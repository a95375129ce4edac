"""The retry decision after a failed run, and its schedule: exponential backoff with jitter.

Both are pure functions (of the exception, the attempt number and the settings), so the worker and
`workers.testing` call the same code and cannot disagree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from service.api.envelope import MalformedBody
from workers.context import PermanentError, RetryLater

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Backoff:
    """`delay_s(n)` after failed attempt n: `min(max_delay_s, initial_s * 2**(n-1))`, less a random share.

    `jitter=1.0` is full jitter (a uniform draw between 0 and that bound), which spreads a burst
    of failures; `jitter=0.0` makes the schedule exact, for tests and for reasoning.
    """

    initial_s: float
    max_delay_s: float
    jitter: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        """The worker's schedule: `OA_RETRY_INITIAL_S`, `OA_RETRY_MAX_DELAY_S` and `OA_RETRY_JITTER`."""
        return cls(settings.retry_initial_s, settings.retry_max_delay_s, settings.retry_jitter)

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


class Verdict(StrEnum):
    """What the worker does with a handler after one run."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    """The worker's decision after a failed run: retry in `retry_in_s`, or dead.

    `downstream` is True when the failure counts towards the handler's circuit breaker: a failure
    that would be retried (tries left or not). A `PermanentError`, a payload that cannot be parsed
    or an exception outside `retry_on` is about the event or the code, not about what it calls.
    """

    verdict: Verdict
    retry_in_s: float | None
    downstream: bool


# The statuses whose Retry-After we honour: "too many requests" and "unavailable (for a while)".
_RETRY_AFTER_STATUSES = frozenset({429, 503})


def retry_after_s(exc: BaseException, *, now: datetime | None = None) -> float | None:
    """The wait that `exc` asks for: `RetryLater.after_s`, or a 429/503's `Retry-After` (seconds or a date).

    None when it asks for nothing (or the header cannot be read); never negative.
    """
    if isinstance(exc, RetryLater):
        return max(0.0, exc.after_s)
    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code not in _RETRY_AFTER_STATUSES:
        return None
    value = exc.response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _permanent(exc: BaseException, retry_on: tuple[type[BaseException], ...] | None) -> bool:
    if isinstance(exc, (PermanentError, ValidationError, MalformedBody)):
        return True
    if isinstance(exc, (TimeoutError, RetryLater)):
        return False  # a cut-short run, or an explicit "later": never a reason to give up early
    return retry_on is not None and not isinstance(exc, retry_on)


def decide(
    exc: BaseException,
    *,
    attempt: int,
    max_tries: int,
    retry_on: tuple[type[BaseException], ...] | None,
    backoff: Backoff,
    retry_after_max_s: float,
    draw: float | None = None,
) -> Decision:
    """What the worker does after run `attempt` (1-based) raised `exc`: the one place this is decided.

    Dead for a `PermanentError` (or a payload that cannot be parsed), an exception outside `retry_on`,
    or a failure of the last try (`attempt >= max_tries`). Otherwise a retry after the backoff for this
    attempt, or after what a `RetryLater` or a 429/503's `Retry-After` asks when that is longer (past the
    backoff's cap too: an earlier try would only earn another 429), at most `retry_after_max_s`.
    """
    if _permanent(exc, retry_on):
        return Decision(Verdict.DEAD, None, downstream=False)
    if attempt >= max_tries:
        return Decision(Verdict.DEAD, None, downstream=True)
    delay_s = backoff.delay_s(attempt, draw=draw)
    asked_s = retry_after_s(exc)
    if asked_s is not None:
        delay_s = max(delay_s, min(asked_s, retry_after_max_s))
    return Decision(Verdict.RETRY, delay_s, downstream=True)
