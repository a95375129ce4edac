"""Unit-test a handler without Redis or a secret, and see what the worker would decide.

    import httpx

    from workers.handlers.sales import book_payment
    from workers.testing import make_event, run_handler


    async def test_a_busy_crm_is_tried_again_no_sooner_than_it_asks() -> None:
        crm = httpx.MockTransport(lambda request: httpx.Response(429, headers={"Retry-After": "120"}))
        async with httpx.AsyncClient(transport=crm) as http:
            outcome = await run_handler(book_payment, make_event("lead.paid", lead_id=5), http=http)
        assert outcome.state == "retry"
        assert outcome.retry_in_s == 120

`run_handler` is the worker's own code path, not a copy of it: it runs the handler once with
`workers.runtime.job.attempt` (the worker's one call of user code, cut at `OA_JOB_TIMEOUT_S`) and,
when that raises, asks `workers.runtime.retry.decide` what follows, with the handler's `on(...)`
options and the settings the worker reads (the environment and `.env`; no secret is needed, and
the defaults apply when nothing is set). `make_event` builds the event with the worker's own parsing.

Nothing reaches the outside unless the test says so: `ctx.http` is the client given as `http=`
(an `httpx.MockTransport`, or respx, stands in for the CRM) and `ctx.redis` the client given as
`redis=`. A handler that uses one it was not given fails the test with `NotGiven`, which says so.
"""

from __future__ import annotations

import importlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast

import httpx
from pydantic_core import to_jsonable_python

from service.api.envelope import parse_envelope
from service.settings import OperatorSettings, load
from workers.context import Context, bind_logger
from workers.events import Event, build_event, sample_body, sample_payload
from workers.registry import Handler, HandlerFunc, registered
from workers.runtime.job import attempt as run_once
from workers.runtime.retry import Backoff, Verdict, decide

if TYPE_CHECKING:
    from redis.asyncio import Redis

State = Literal["done", "retry", "dead"]
_STATES: dict[Verdict, State] = {Verdict.DONE: "done", Verdict.RETRY: "retry", Verdict.DEAD: "dead"}


class NotGiven(Exception):
    """The handler used `ctx.http` or `ctx.redis`, and the test gave `run_handler` none to use."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the worker does after this run of the handler.

    - `state`: `"done"`, `"retry"` (it runs again later) or `"dead"` (to dead letters).
    - `error`: what the handler raised, or None.
    - `retry_in_s`: for `"retry"`, the wait before the next try: the backoff for this attempt, or
      longer when a 429/503's `Retry-After` or a `RetryLater` asks for it; None otherwise. The
      backoff's share is its upper bound: the worker waits up to `OA_RETRY_JITTER` of it less (a
      random draw that spreads a burst of failures), and exactly this with `OA_RETRY_JITTER=0`.
    - `logs`: the lines the handler logged through `ctx.log`, each `"LEVEL message"`.
    """

    state: State
    error: Exception | None
    retry_in_s: float | None
    logs: tuple[str, ...]


def make_event(event_type: str, /, *, id: str | None = None, **payload: Any) -> Event:  # noqa: A002
    """An event of `event_type` with a realistic payload (that of `oa-webhooks send`), `payload` overriding.

    The body goes through the worker's own parsing, so a payload that does not fit its type's model
    (say `lead_id="abc"`) comes as the plain `Payload` with `event.mismatched_fields`, as in
    production. `id` is the event's id (random unless given); values may be anything pydantic
    writes as JSON (a `datetime`, a `Decimal`).
    """
    fields = sample_payload(event_type) | to_jsonable_python(payload)
    body = sample_body(event_type, event_id=id, payload=fields)
    return build_event(parse_envelope(body), received_ms=time.time_ns() // 1_000_000)


async def run_handler(
    handler: HandlerFunc | str,
    event: Event,
    *,
    http: httpx.AsyncClient | None = None,
    attempt: int = 1,
    redis: Redis | None = None,
) -> Outcome:
    """Run `handler` (the decorated function, or its dotted name) once on `event`, as try `attempt`.

    Returns what the worker would do next (`Outcome`). `http` becomes `ctx.http` and `redis`
    `ctx.redis`; a handler that uses one not given raises `NotGiven`, as does nothing else here.
    `ValueError` for a handler that does not take `event`'s type, or an attempt it never gets.
    """
    found = _registered(handler)
    if not found.matches(event.type):
        raise ValueError(
            f"{found.name} does not run for {event.type!r}: it is on {', '.join(found.patterns)}"
        )
    settings = load(OperatorSettings)
    max_tries = found.tries(settings.max_tries)
    if not 1 <= attempt <= max_tries:
        raise ValueError(f"attempt={attempt}: {found.name} runs as attempts 1 to {max_tries} (max_tries)")
    lines = _Lines()
    logger = bind_logger(
        lines.logger, event_id=event.id, type=event.type, handler=found.name, attempt=attempt
    )
    async with AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient(transport=httpx.MockTransport(_no_http)))
        ctx = Context(redis or cast("Redis", _NoRedis()), http, logger, found.name, attempt, max_tries)
        try:
            await run_once(found, event, ctx, timeout_s=settings.job_timeout_s)
        except NotGiven:
            raise
        except Exception as exc:
            decision = decide(
                exc,
                attempt=attempt,
                max_tries=max_tries,
                retry_on=found.retry_on,
                backoff=Backoff.from_settings(settings),
                retry_after_max_s=settings.retry_after_max_s,
                draw=0.0,  # the backoff's bound: the worker's random jitter only takes from it
            )
            return Outcome(_STATES[decision.verdict], exc, decision.retry_in_s, tuple(lines.lines))
    return Outcome("done", None, None, tuple(lines.lines))


def _registered(handler: HandlerFunc | str) -> Handler:
    """The registration of a decorated function, or of a dotted name (whose module is imported)."""
    if isinstance(handler, str):
        found = next((h for h in registered() if h.name == handler), None)
        module = handler.rpartition(".")[0]
        if found is None and module:
            importlib.import_module(module)  # its @on(...) registers the handler
            found = next((h for h in registered() if h.name == handler), None)
    else:
        found = next((h for h in registered() if h.func is handler), None)
    if found is None:
        known = ", ".join(sorted(h.name for h in registered())) or "none"
        raise ValueError(
            f"{handler!r} is not a registered handler: decorate it with @on(...) (known: {known})"
        )
    return found


class _Lines(logging.Handler):
    """Keeps what `ctx.log` says, as `"LEVEL message"` lines; the lines still reach pytest's log capture."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.lines: list[str] = []
        # A logger of its own per run (not getLogger's one per name), so that runs side by side keep
        # their own lines; a child of the worker's logger, so that they still reach pytest's capture.
        self.logger = logging.Logger("oa.worker", logging.DEBUG)  # noqa: LOG001
        self.logger.parent = logging.getLogger("oa.worker")
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one line."""
        self.lines.append(self.format(record))


def _no_http(request: httpx.Request) -> NoReturn:
    raise NotGiven(
        f"the handler called {request.method} {request.url}, but run_handler got no http=: pass "
        "http=httpx.AsyncClient(transport=httpx.MockTransport(answer)) to stand in for that system"
    )


class _NoRedis:
    """`ctx.redis` when `run_handler` got no `redis=`: any use says so, and nothing reaches a real Redis."""

    def __getattr__(self, name: str) -> NoReturn:
        raise NotGiven(
            f"the handler used ctx.redis.{name}, but run_handler got no redis=: pass a "
            "redis.asyncio.Redis connected to a Redis for tests (never your real one)"
        )


__all__ = ["NotGiven", "Outcome", "make_event", "run_handler"]
