"""`workers.testing`: make_event builds events as the worker does, run_handler decides as the worker does."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from workers import Context, Event, LeadCreated, LeadPaid, Payload, PermanentError, RetryLater, on
from workers.registry import HandlerFunc
from workers.testing import NotGiven, make_event, run_handler


@pytest.fixture(autouse=True)
def worker_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OA_* variable and no .env: run_handler sees the worker's defaults (60 s backoff, 16 tries)."""
    for name in list(os.environ):
        if name.startswith("OA_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


pytestmark = pytest.mark.usefixtures("clean_registry")


def _answers(status: int, **headers: str) -> httpx.AsyncClient:
    """A client whose every request the stand-in downstream answers with `status` and `headers`."""
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(status, headers=headers)))


def _push_lead() -> HandlerFunc:
    """A handler as users write one: post the lead, raise for a bad status."""

    @on("lead.created")
    async def push_lead(event: Event, ctx: Context) -> None:
        response = await ctx.http.post("https://crm.example/leads", json={"ref": event.id})
        response.raise_for_status()
        ctx.log.info("lead pushed")

    return push_lead


def test_make_event_gives_the_typed_payload_with_the_given_fields() -> None:
    """make_event("lead.paid", lead_id=5): a LeadPaid with lead_id 5 and the rest of the sample."""
    event = make_event("lead.paid", lead_id=5)
    assert isinstance(event.payload, LeadPaid)
    assert event.payload.lead_id == 5
    assert event.payload.model_extra == {"invoice_id": 987}, "the sample's other fields stay"
    assert event.type == "lead.paid"
    assert event.mismatched_fields == ()
    assert event.id.startswith("evt_")
    assert make_event("lead.paid", id="evt_fixed").id == "evt_fixed"


def test_make_event_hands_a_misfit_payload_over_as_production_does() -> None:
    """lead_id="abc" does not fit LeadPaid: the plain Payload, every field kept, the misfit named."""
    event = make_event("lead.paid", lead_id="abc")
    assert type(event.payload) is Payload
    assert event.mismatched_fields == ("lead_id",)
    assert event.payload.model_extra == {
        "lead_id": "abc",
        "invoice_id": 987,
        "created_at": "2024-03-01T12:00:00Z",
    }


def test_make_event_writes_values_as_json_and_knows_unknown_types() -> None:
    """A datetime becomes the JSON the provider sends; an unknown type gets a plain Payload."""
    when = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    event = make_event("lead.created", created_at=when)
    assert isinstance(event.payload, LeadCreated)
    assert event.payload.created_at == when
    other = make_event("lead.archived", reason="duplicate")
    assert type(other.payload) is Payload
    assert other.payload.model_extra == {"id": 1, "reason": "duplicate"}


async def test_a_handler_that_returns_is_done_and_its_log_lines_are_kept() -> None:
    """A 200 from the downstream: done, no error, no retry, and the handler's own log line."""
    async with _answers(200) as http:
        outcome = await run_handler(_push_lead(), make_event("lead.created"), http=http)
    assert (outcome.state, outcome.error, outcome.retry_in_s) == ("done", None, None)
    assert outcome.logs == ("INFO lead pushed",)


async def test_a_failure_is_retried_after_the_backoff_for_its_attempt() -> None:
    """A 500: retried after 60 s at attempt 1 and 240 s at attempt 3 (OA_RETRY_INITIAL_S=60, doubling)."""
    handler = _push_lead()
    async with _answers(500) as http:
        first = await run_handler(handler, make_event("lead.created"), http=http)
        third = await run_handler(handler, make_event("lead.created"), http=http, attempt=3)
    assert (first.state, first.retry_in_s) == ("retry", 60)
    assert isinstance(first.error, httpx.HTTPStatusError)
    assert (third.state, third.retry_in_s) == ("retry", 240)


async def test_the_settings_the_worker_reads_are_the_ones_run_handler_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """OA_RETRY_INITIAL_S from the environment and OA_MAX_TRIES from .env change the decision."""
    monkeypatch.setenv("OA_RETRY_INITIAL_S", "2")
    (tmp_path / ".env").write_text("OA_MAX_TRIES=4\n", encoding="utf-8")
    handler = _push_lead()
    async with _answers(500) as http:
        second = await run_handler(handler, make_event("lead.created"), http=http, attempt=2)
        fourth = await run_handler(handler, make_event("lead.created"), http=http, attempt=4)
    assert (second.state, second.retry_in_s) == ("retry", 4)
    assert (fourth.state, fourth.retry_in_s) == ("dead", None)


async def test_the_last_try_is_dead() -> None:
    """on(max_tries=3): a failure at attempt 2 is retried, the same failure at attempt 3 is dead."""

    @on("lead.created", max_tries=3)
    async def flaky(event: Event, ctx: Context) -> None:
        raise RuntimeError("CRM down")

    second = await run_handler(flaky, make_event("lead.created"), attempt=2)
    last = await run_handler(flaky, make_event("lead.created"), attempt=3)
    assert second.state == "retry"
    assert (last.state, last.retry_in_s) == ("dead", None)
    assert isinstance(last.error, RuntimeError)


async def test_a_permanent_error_is_dead_at_once() -> None:
    """PermanentError at the first try: dead, with the error kept."""

    @on("lead.paid")
    async def book(event: Event, ctx: Context) -> None:
        if not isinstance(event.payload, LeadPaid):
            raise PermanentError("no numeric lead_id")

    outcome = await run_handler(book, make_event("lead.paid", lead_id="abc"))
    assert (outcome.state, outcome.retry_in_s) == ("dead", None)
    assert isinstance(outcome.error, PermanentError)
    assert (await run_handler(book, make_event("lead.paid", lead_id=7))).state == "done"


async def test_an_exception_outside_retry_on_is_dead_and_one_inside_is_retried() -> None:
    """on(retry_on=(httpx.HTTPError,)): a KeyError is dead at once, a refused connection is retried."""

    @on("lead.created", retry_on=(httpx.HTTPError,))
    async def narrow(event: Event, ctx: Context) -> None:
        await ctx.http.get("https://crm.example/config")
        raise KeyError("region")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _answers(200) as http:
        dead = await run_handler(narrow, make_event("lead.created"), http=http)
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as down:
        retried = await run_handler(narrow, make_event("lead.created"), http=down)
    assert (dead.state, type(dead.error)) == ("dead", KeyError)
    assert (retried.state, type(retried.error), retried.retry_in_s) == ("retry", httpx.ConnectError, 60)


async def test_retry_after_is_honoured_past_the_backoff() -> None:
    """A 429 with Retry-After: 300 waits 300 s (the backoff says 60); an HTTP date counts from now."""
    handler = _push_lead()
    async with _answers(429, **{"Retry-After": "300"}) as http:
        busy = await run_handler(handler, make_event("lead.created"), http=http)
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=3600), usegmt=True)
    async with _answers(503, **{"Retry-After": date}) as http:
        down = await run_handler(handler, make_event("lead.created"), http=http)
    async with _answers(429, **{"Retry-After": "5"}) as http:
        short = await run_handler(handler, make_event("lead.created"), http=http)
    assert (busy.state, busy.retry_in_s) == ("retry", 300)
    assert down.state == "retry"
    assert down.retry_in_s is not None
    assert 3590 < down.retry_in_s <= 3600
    assert (short.state, short.retry_in_s) == ("retry", 60), "a shorter Retry-After leaves the backoff"


async def test_retry_later_asks_for_its_own_wait_and_still_uses_a_try() -> None:
    """RetryLater(after_s=900): retry in 900 s; at the last try it is dead like any failure."""

    @on("lead.created", max_tries=2)
    async def queue_full(event: Event, ctx: Context) -> None:
        raise RetryLater(after_s=900)

    first = await run_handler(queue_full, make_event("lead.created"))
    last = await run_handler(queue_full, make_event("lead.created"), attempt=2)
    assert (first.state, first.retry_in_s) == ("retry", 900)
    assert last.state == "dead"


async def test_a_run_is_cut_at_the_job_timeout_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that never finishes is cut at OA_JOB_TIMEOUT_S: a TimeoutError, retried."""
    monkeypatch.setenv("OA_JOB_TIMEOUT_S", "0.2")

    @on("lead.created")
    async def hangs(event: Event, ctx: Context) -> None:
        await asyncio.Event().wait()

    outcome = await run_handler(hangs, make_event("lead.created"))
    assert (outcome.state, type(outcome.error), outcome.retry_in_s) == ("retry", TimeoutError, 60)


GREETER = """
from workers import Context, Event, on


@on("lead.sold")
async def greet(event: Event, ctx: Context) -> None:
    ctx.log.info("sold: %s", event.id)
"""


async def test_a_handler_can_be_named_by_its_dotted_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dotted name whose module is not imported yet: run_handler imports it, and runs what it registers."""
    (tmp_path / "toolkit_greeter.py").write_text(GREETER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toolkit_greeter", raising=False)  # and gone again after the test
    outcome = await run_handler("toolkit_greeter.greet", make_event("lead.sold", id="evt_g"))
    assert outcome.state == "done"
    assert outcome.logs == ("INFO sold: evt_g",)


async def test_http_not_given_fails_the_test_and_says_what_to_pass() -> None:
    """A handler that calls out without http=: NotGiven names the request and http=, nothing is sent."""
    with pytest.raises(NotGiven, match=r"POST https://crm.example/leads.*http=httpx.AsyncClient"):
        await run_handler(_push_lead(), make_event("lead.created"))


async def test_redis_not_given_fails_the_test_and_redis_given_is_used(redis_url: str) -> None:
    """ctx.redis without redis= raises NotGiven (never the machine's Redis); with redis= it is that client."""

    @on("lead.created")
    async def remember(event: Event, ctx: Context) -> None:
        await ctx.redis.set(f"seen:{event.id}", "1")

    with pytest.raises(NotGiven, match=r"ctx\.redis\.set.*redis="):
        await run_handler(remember, make_event("lead.created", id="evt_r"))
    client = Redis.from_url(redis_url)
    try:
        outcome = await run_handler(remember, make_event("lead.created", id="evt_r"), redis=client)
        assert outcome.state == "done"
        assert await client.get("seen:evt_r") == b"1"
    finally:
        await client.aclose()


async def test_mistakes_in_the_test_itself_are_refused_clearly() -> None:
    """An undecorated function, a type the handler does not take, an attempt past max_tries: ValueError."""

    async def plain(event: Event, ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match=r"not a registered handler: decorate it with @on"):
        await run_handler(plain, make_event("lead.created"))
    with pytest.raises(ValueError, match=r"does not run for 'invoice.paid': it is on lead.created"):
        await run_handler(_push_lead(), make_event("invoice.paid"))
    with pytest.raises(ValueError, match=r"attempt=17: .* runs as attempts 1 to 16"):
        await run_handler(_push_lead(), make_event("lead.created"), attempt=17)
