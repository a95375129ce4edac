"""The worker's decision after a failed run (`workers.runtime.retry.decide`): dead or retry, and how soon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from service.api.envelope import MalformedBody
from workers import PermanentError, RetryLater
from workers.runtime.retry import Backoff, Verdict, decide, retry_after_s

BACKOFF = Backoff(initial_s=1, max_delay_s=60, jitter=0)


def _status_error(status: int, **headers: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://crm.example/leads")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def _decide(
    exc: BaseException,
    *,
    attempt: int = 1,
    max_tries: int = 5,
    retry_on: tuple[type[BaseException], ...] | None = None,
) -> tuple[Verdict, float | None, bool]:
    d = decide(
        exc,
        attempt=attempt,
        max_tries=max_tries,
        retry_on=retry_on,
        backoff=BACKOFF,
        retry_after_max_s=86_400,
    )
    return d.verdict, d.retry_in_s, d.downstream


def test_a_failure_with_tries_left_is_retried_after_the_backoff_for_its_attempt() -> None:
    """Attempt 3 of 5 failed: retry after the third backoff step (1, 2, 4 s), counted for the breaker."""
    assert _decide(RuntimeError("down"), attempt=3) == (Verdict.RETRY, 4.0, True)


def test_the_last_try_and_permanent_failures_are_dead() -> None:
    """The last try is dead (counted for the breaker); PermanentError and a bad body are dead, uncounted."""
    assert _decide(RuntimeError("down"), attempt=5) == (Verdict.DEAD, None, True)
    assert _decide(PermanentError("unknown lead")) == (Verdict.DEAD, None, False)
    assert _decide(MalformedBody("no id")) == (Verdict.DEAD, None, False)


def test_retry_on_narrows_what_is_retried_but_timeouts_and_retry_later_always_are() -> None:
    """Outside retry_on is dead at once; a cut-short run (TimeoutError) and RetryLater are retried anyway."""
    only_http = (httpx.HTTPError,)
    assert _decide(KeyError("x"), retry_on=only_http) == (Verdict.DEAD, None, False)
    assert _decide(httpx.ConnectError("refused"), retry_on=only_http)[0] is Verdict.RETRY
    assert _decide(TimeoutError(), retry_on=only_http)[0] is Verdict.RETRY
    assert _decide(RetryLater(after_s=5), retry_on=only_http)[0] is Verdict.RETRY


def test_retry_after_in_seconds_wins_over_a_shorter_backoff_and_past_its_cap() -> None:
    """A 429 with Retry-After: 3 waits 3 s though the backoff says 1 s; 7200 s passes the 60 s cap."""
    assert _decide(_status_error(429, **{"Retry-After": "3"}))[:2] == (Verdict.RETRY, 3.0)
    assert _decide(_status_error(503, **{"Retry-After": "7200"}))[:2] == (Verdict.RETRY, 7200.0)
    assert _decide(_status_error(429, **{"Retry-After": "0"}), attempt=3)[:2] == (Verdict.RETRY, 4.0)


def test_retry_after_as_an_http_date_and_absurd_values_bounded() -> None:
    """An HTTP date counts from now; a value past OA_RETRY_AFTER_MAX_S is cut to it; junk is ignored."""
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_s(_status_error(429, **{"Retry-After": date}), now=now) == 90
    assert retry_after_s(_status_error(429, **{"Retry-After": "soon"})) is None
    assert retry_after_s(_status_error(500, **{"Retry-After": "30"})) is None, "only 429 and 503"
    far = decide(
        _status_error(429, **{"Retry-After": "999999"}),
        attempt=1,
        max_tries=5,
        retry_on=None,
        backoff=BACKOFF,
        retry_after_max_s=3600,
    )
    assert far.retry_in_s == 3600


@pytest.mark.parametrize("after_s", [0.5, 30, 100_000])
def test_retry_later_asks_for_its_own_wait(after_s: float) -> None:
    """RetryLater(after_s=N) waits N s (bounded), at least the backoff, and still uses a try at the end."""
    verdict, delay, downstream = _decide(RetryLater(after_s=after_s))
    assert verdict is Verdict.RETRY
    assert delay == max(1.0, min(after_s, 86_400))
    assert downstream
    assert _decide(RetryLater(after_s=after_s), attempt=5)[0] is Verdict.DEAD
