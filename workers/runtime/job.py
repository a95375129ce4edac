"""`process_event`: the one arq job. It runs an event's due handlers and records how each went.

Per handler: success -> `done`; `PermanentError`, a body that no longer parses, or an exception
outside its `retry_on` -> `dead`; anything else -> retried with backoff until `max_tries`, then `dead`.
A payload that does not fit its type's model still runs the handlers, as the plain `Payload`.
Handlers of one event run concurrently, and one that raises does not stop its siblings.
Ordered handlers that the claim told to wait (workers/runtime/order.py) sit the run out, untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from arq import Retry
from pydantic import ValidationError

from service.api.envelope import MalformedBody, parse_envelope
from workers.context import Context, PermanentError, bind_logger
from workers.events import Event, build_event
from workers.registry import Handler, handlers_for
from workers.runtime.journal import EventOutcome, HandlerState, HandlerStatus, Journal
from workers.runtime.order import WAIT_RECHECK_MS, note_unordered

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis

    from service.settings import Settings
    from workers.runtime.retry import Backoff

log = logging.getLogger("oa.worker")
_MAX_TRACEBACK_CHARS = 8000
# Each kept attempt (`events show`) has its traceback's last lines; the dead letter's errors keep 8000.
_RUN_TRACEBACK_CHARS = 2000


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What every job of one worker shares; kept in arq's ctx under `"oa"`."""

    settings: Settings
    backoff: Backoff
    http: httpx.AsyncClient
    redis: Redis
    journal: Journal
    # Claimed job id -> its ordered handlers that must wait in this run (set by the claim).
    waiting: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def describe_error(exc: BaseException, *, now_ms: int) -> dict[str, Any]:
    """What a dead letter keeps of an exception: type, message, traceback, time."""
    kind = type(exc)
    return {
        "type": kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc)[:1000],
        "traceback": "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:],
        "at_ms": now_ms,
    }


def _is_permanent(handler: Handler, exc: BaseException) -> bool:
    if isinstance(exc, (PermanentError, ValidationError, MalformedBody)):
        return True
    if isinstance(exc, TimeoutError):
        return False
    return handler.retry_on is not None and not isinstance(exc, handler.retry_on)


async def _attempt(state: WorkerState, handler: Handler, event: Event | BaseException, attempt: int) -> None:
    max_tries = handler.max_tries or state.settings.max_tries
    if attempt > max_tries:
        raise PermanentError(f"{max_tries} attempts used up; earlier ones were cut short by a stopped worker")
    if isinstance(event, BaseException):
        raise event
    logger = bind_logger(log, event_id=event.id, type=event.type, handler=handler.name, attempt=attempt)
    ctx = Context(
        redis=state.redis,
        http=state.http,
        log=logger,
        handler=handler.name,
        attempt=attempt,
        max_tries=max_tries,
    )
    async with asyncio.timeout(state.settings.job_timeout_s):
        await handler.func(event, ctx)


async def run_handler(
    state: WorkerState,
    handler: Handler,
    current: HandlerState,
    event: Event | BaseException,
    *,
    event_id: str,
    event_type: str,
) -> tuple[HandlerState, float]:
    """Run one handler once (its attempt is already counted); return its new state and the seconds it took.

    `event` is the exception instead when the payload could not be validated.
    """
    attempt = current.attempts
    fields = {"event_id": event_id, "type": event_type, "handler": handler.name, "attempt": attempt}
    started_ms = _now_ms()
    started = time.perf_counter()
    try:
        await _attempt(state, handler, event, attempt)
    except Exception as exc:
        now_ms = _now_ms()
        error = describe_error(exc, now_ms=now_ms)
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        fields |= {"duration_ms": round(took_ms, 1), "error": error["type"]}
        run = [
            started_ms,
            took_ms,
            attempt,
            {
                "type": error["type"],
                "message": error["message"],
                "traceback": error["traceback"][-_RUN_TRACEBACK_CHARS:],
            },
        ]
        failed = replace(
            current, first_error=current.first_error or error, last_error=error, runs=current.with_run(run)
        )
        if _is_permanent(handler, exc) or attempt >= (handler.max_tries or state.settings.max_tries):
            # No traceback here: it goes to the dead letter, where `dlq show` prints it.
            log.error("handler dead", extra=fields | {"outcome": "dead"})  # noqa: TRY400
            return replace(
                failed, state=HandlerStatus.DEAD, finished_ms=now_ms
            ), time.perf_counter() - started
        delay_s = state.backoff.delay_s(attempt)
        log.warning(
            "handler retrying", extra=fields | {"outcome": "retrying", "retry_in_s": round(delay_s, 3)}
        )
        return replace(failed, next_ms=now_ms + int(delay_s * 1000)), time.perf_counter() - started
    took_s = time.perf_counter() - started
    log.info(
        "handler succeeded", extra=fields | {"outcome": "succeeded", "duration_ms": round(took_s * 1000, 1)}
    )
    run = [started_ms, round(took_s * 1000, 3), attempt]
    return replace(
        current, state=HandlerStatus.DONE, finished_ms=_now_ms(), runs=current.with_run(run)
    ), took_s


def _event_outcome(states: dict[str, HandlerState], waiting: tuple[str, ...]) -> EventOutcome:
    if all(s.state is HandlerStatus.DONE for s in states.values()):
        return EventOutcome.DONE
    pending = [name for name, s in states.items() if s.state is HandlerStatus.PENDING]
    if any(name not in waiting for name in pending):
        return EventOutcome.RETRY
    return EventOutcome.WAITING if pending else EventOutcome.DEAD


def _due_again_ms(states: dict[str, HandlerState], waiting: tuple[str, ...], now_ms: int) -> int:
    """When the job should run again: the next retry, or the fallback of a handler that waits."""
    due = [
        s.next_ms for name, s in states.items() if s.state is HandlerStatus.PENDING and name not in waiting
    ]
    if waiting:
        due.append(now_ms + WAIT_RECHECK_MS)
    return max(now_ms, min(due))


async def _note_mismatch(state: WorkerState, event: Event) -> None:
    """A payload that does not fit its model still reaches the handlers: say so, and count it once."""
    if not event.mismatched_fields:
        return
    fields = ",".join(event.mismatched_fields)
    log.warning(
        "payload does not fit the %s model; handlers get the plain Payload",
        event.type,
        extra={"event_id": event.id, "type": event.type, "fields": fields},
    )
    await state.journal.count_payload_mismatch(event.id, event.type)


async def process_event(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
    """The arq job: claim the event, run its due handlers, record the outcome, and ask arq to retry."""
    state: WorkerState = ctx["oa"]
    handlers = {h.name: h for h in handlers_for(event_type)}
    waiting = state.waiting.pop(event_id, ())
    runnable = [name for name in handlers if name not in waiting]
    claimed = await state.journal.begin(event_id, runnable, now_ms=_now_ms())
    fields: dict[str, Any] = {"event_id": event_id, "type": event_type}
    if claimed is None:
        log.warning("no ledger entry for this job; it was purged", extra=fields)
        return
    if isinstance(claimed, str):
        log.info("event already finished", extra=fields | {"outcome": claimed})
        return
    # No handler matched, or a replay restricted to handlers that do not match this type.
    if not handlers or (not claimed.handlers and not waiting):
        await state.journal.finish(
            event_id, event_type, outcome=EventOutcome.UNHANDLED, changed={}, now_ms=_now_ms()
        )
        log.info("event unhandled", extra=fields | {"outcome": "unhandled"})
        return
    ordered = any(h.ordered for h in handlers.values())
    event: Event | BaseException
    try:
        envelope = parse_envelope(claimed.body)
        if ordered:
            note_unordered(list(handlers.values()), envelope)
        event = build_event(envelope, received_ms=claimed.received_ms)
    except MalformedBody as exc:
        event = exc
    else:
        await _note_mismatch(state, event)
    runs = [
        run_handler(
            state, handlers[name], claimed.handlers[name], event, event_id=event_id, event_type=event_type
        )
        for name in claimed.due
    ]
    results = await asyncio.gather(*runs)
    changed = {name: new for name, (new, _) in zip(claimed.due, results, strict=True)}
    states = claimed.handlers | {name: HandlerState() for name in waiting} | changed
    outcome = _event_outcome(states, waiting)
    now_ms = _now_ms()
    again = outcome in (EventOutcome.RETRY, EventOutcome.WAITING)
    await state.journal.finish(
        event_id,
        event_type,
        outcome=outcome,
        changed=changed,
        now_ms=now_ms,
        durations_s={name: took for name, (_, took) in zip(claimed.due, results, strict=True)},
        latency_s=(now_ms - claimed.received_ms) / 1000 if outcome is EventOutcome.DONE else None,
        retry_ms=_due_again_ms(states, waiting, now_ms) if again else None,
        ordered=ordered,
        wake=[n for n, s in changed.items() if handlers[n].ordered and s.state is not HandlerStatus.PENDING],
    )
    # Each handler already logged its outcome; a line per event adds news only when it is not done.
    level = logging.DEBUG if outcome is EventOutcome.DONE else logging.INFO
    log.log(level, "event %s", outcome.value, extra=fields | {"outcome": outcome.value})
    if again:
        # The finish script has set when the job is due again; arq only has to keep it queued.
        raise Retry
