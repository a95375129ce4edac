"""`process_event`: the one arq job. It runs an event's due handlers and records how each went.

Per handler: success -> `done`; a failure -> what `workers.runtime.retry.decide` says: dead for a
`PermanentError`, a body that no longer parses, an exception outside its `retry_on` or the last
try; else retried after the backoff (or a longer `Retry-After` / `RetryLater`).
A payload that does not fit its type's model still runs the handlers, as the plain `Payload`.
Handlers of one event run concurrently, and one that raises does not stop its siblings.
Handlers that the claim held back (order, a limit, a pause, a breaker: workers/runtime/protect.py)
sit the run out, untouched; a breaker's probe that fails gives its try back and waits again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from arq import Retry

from service.api.envelope import MalformedBody, parse_envelope
from workers.context import Context, PermanentError, bind_logger
from workers.events import Event, build_event
from workers.registry import Handler, handlers_for
from workers.runtime.journal import EventOutcome, HandlerState, HandlerStatus, Journal, describe_error
from workers.runtime.order import note_unordered
from workers.runtime.protect import WAIT_RECHECK_MS, log_breaker_changes
from workers.runtime.retry import Verdict, decide
from workers.runtime.spans import RunTrace, record_failure, traced_run

if TYPE_CHECKING:
    import httpx
    from opentelemetry.trace import Tracer
    from redis.asyncio import Redis

    from service.settings import Settings
    from workers.runtime.claim import ClaimedJob
    from workers.runtime.retry import Backoff

log = logging.getLogger("oa.worker")
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
    # Claimed job id -> what the claim decided for its handlers (set by the claim, taken by the job).
    claims: dict[str, ClaimedJob] = field(default_factory=dict)
    tracer: Tracer | None = None  # while tracing is on: each handler run's span (workers/runtime/spans.py)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One handler's run: its new state, how long it took, and what its breaker should learn.

    `downstream` is True for a failure that counts towards the breaker, False for a success, None
    for neither (a permanent failure). `probe_failed`: it was the breaker's probe, and the try was
    given back.
    """

    state: HandlerState
    took_s: float
    downstream: bool | None
    probe_failed: bool = False


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def attempt(handler: Handler, event: Event | BaseException, ctx: Context, *, timeout_s: float) -> None:
    """Run the handler once, cut at `timeout_s`: the one call of user code, for the worker and the tests.

    `event` is the exception instead when the payload could not be parsed: it is raised as the run's.
    """
    if isinstance(event, BaseException):
        raise event
    async with asyncio.timeout(timeout_s):
        await handler.func(event, ctx)


def _failed(
    state: WorkerState,
    handler: Handler,
    current: HandlerState,
    exc: Exception,
    run: list[Any],
    *,
    logger: logging.LoggerAdapter[logging.Logger],
    probe: bool,
) -> RunResult:
    """The state after a run that raised `exc`, as `workers.runtime.retry.decide` says, logged once."""
    settings, number = state.settings, current.attempts
    now_ms, took_s = _now_ms(), run[1] / 1000
    error = describe_error(exc, now_ms=now_ms)
    shown = {"type": error["type"], "message": error["message"]}
    shown["traceback"] = error["traceback"][-_RUN_TRACEBACK_CHARS:]
    runs = current.with_run([*run, shown | ({"probe": True} if probe else {})])
    failed = replace(current, first_error=current.first_error or error, last_error=error, runs=runs)
    fields = {"duration_ms": round(run[1], 1), "error": error["type"]}
    decision = decide(
        exc,
        attempt=number,
        max_tries=handler.tries(settings.max_tries),
        retry_on=handler.retry_on,
        backoff=state.backoff,
        retry_after_max_s=settings.retry_after_max_s,
    )
    if probe and decision.downstream:
        # The downstream is still down: the probe gives its try back and waits for the next one.
        logger.warning("handler probe failed; still tripped", extra=fields | {"outcome": "probe failed"})
        probe_state = replace(failed, attempts=number - 1, next_ms=0)
        return RunResult(probe_state, took_s, downstream=True, probe_failed=True)
    if decision.verdict is Verdict.DEAD:
        # No traceback here: it goes to the dead letter, where `dlq show` prints it.
        logger.error("handler dead", extra=fields | {"outcome": "dead"})
        dead = replace(failed, state=HandlerStatus.DEAD, finished_ms=now_ms)
        return RunResult(dead, took_s, downstream=decision.downstream or None)
    delay_s = decision.retry_in_s or 0.0
    retry = fields | {"outcome": "retrying", "retry_in_s": round(delay_s, 3)}
    logger.warning("handler retrying", extra=retry)
    return RunResult(replace(failed, next_ms=now_ms + int(delay_s * 1000)), took_s, downstream=True)


async def run_handler(
    state: WorkerState,
    handler: Handler,
    current: HandlerState,
    event: Event | BaseException,
    *,
    event_id: str,
    event_type: str,
    probe: bool = False,
) -> RunResult:
    """Run one handler once (its attempt is already counted) and decide what follows."""
    number = current.attempts
    max_tries = handler.tries(state.settings.max_tries)
    logger = bind_logger(log, event_id=event_id, type=event_type, handler=handler.name, attempt=number)
    ctx = Context(state.redis, state.http, logger, handler.name, number, max_tries)
    if number > max_tries:
        # Raised as this run's error, as an unparseable body is.
        event = PermanentError(
            f"{max_tries} attempts used up; earlier ones were cut short by a stopped worker"
        )
    started_ms, started = _now_ms(), time.perf_counter()
    try:
        await attempt(handler, event, ctx, timeout_s=state.settings.job_timeout_s)
    except Exception as exc:
        record_failure(exc)
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        run = [started_ms, took_ms, number]
        return _failed(state, handler, current, exc, run, logger=logger, probe=probe)
    took_s = time.perf_counter() - started
    logger.info("handler succeeded", extra={"outcome": "succeeded", "duration_ms": round(took_s * 1000, 1)})
    run = [started_ms, round(took_s * 1000, 3), number]
    done = replace(current, state=HandlerStatus.DONE, finished_ms=_now_ms(), runs=current.with_run(run))
    return RunResult(done, took_s, downstream=False)


def _event_outcome(states: dict[str, HandlerState], waiting: set[str]) -> EventOutcome:
    if all(s.state is HandlerStatus.DONE for s in states.values()):
        return EventOutcome.DONE
    pending = [name for name, s in states.items() if s.state is HandlerStatus.PENDING]
    if any(name not in waiting for name in pending):
        return EventOutcome.RETRY
    return EventOutcome.WAITING if pending else EventOutcome.DEAD


def _due_again_ms(states: dict[str, HandlerState], waiting: dict[str, int], now_ms: int) -> int:
    """When the job should run again: the next retry, or when a handler that waits looks again."""
    due = [
        s.next_ms for name, s in states.items() if s.state is HandlerStatus.PENDING and name not in waiting
    ]
    due += waiting.values()
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


def _parse(claimed_body: bytes, handlers: dict[str, Handler], received_ms: int) -> Event | BaseException:
    try:
        envelope = parse_envelope(claimed_body)
        if any(h.ordered for h in handlers.values()):
            note_unordered(list(handlers.values()), envelope)
        return build_event(envelope, received_ms=received_ms)
    except MalformedBody as exc:
        return exc


async def process_event(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
    """The arq job: claim the event, run its due handlers, record the outcome, and ask arq to retry."""
    state: WorkerState = ctx["oa"]
    settings = state.settings
    handlers = {h.name: h for h in handlers_for(event_type)}
    claim = state.claims.pop(event_id, None)
    skip = dict(claim.skip) if claim else {}
    runnable = [name for name in handlers if name not in skip]
    claimed = await state.journal.begin(
        event_id, runnable, now_ms=claim.at_ms if claim and claim.at_ms else _now_ms()
    )
    fields: dict[str, Any] = {"event_id": event_id, "type": event_type}
    if claimed is None or isinstance(claimed, str):
        # The claim may have taken slots for a run that does not happen.
        await state.journal.release_slots(event_id, [n for n in runnable if handlers[n].concurrency])
        if claimed is None:
            log.warning("no ledger entry for this job; it was purged", extra=fields)
        else:
            log.info("event already finished", extra=fields | {"outcome": claimed})
        return
    # No handler matched, or a replay restricted to handlers that do not match this type.
    if not handlers or (not claimed.handlers and not skip):
        await state.journal.finish(
            event_id, event_type, outcome=EventOutcome.UNHANDLED, changed={}, now_ms=_now_ms()
        )
        log.info("event unhandled", extra=fields | {"outcome": "unhandled"})
        return
    event = _parse(claimed.body, handlers, claimed.received_ms)
    if isinstance(event, Event):
        await _note_mismatch(state, event)
    probes, waited = (claim.probes, claim.waited) if claim else (frozenset(), {})
    results = await asyncio.gather(
        *(
            traced_run(
                state.tracer,
                run_handler(
                    state,
                    handlers[name],
                    claimed.handlers[name],
                    event,
                    event_id=event_id,
                    event_type=event_type,
                    probe=name in probes,
                ),
                RunTrace.of(claimed, event_id, event_type, name, waited.get(name), probe=name in probes),
            )
            for name in claimed.due
        )
    )
    ran = dict(zip(claimed.due, results, strict=True))
    now_ms = _now_ms()
    again_ms = claim.again_ms if claim and claim.again_ms else now_ms + WAIT_RECHECK_MS
    waiting = dict.fromkeys(skip, again_ms)
    probe_ms = int(settings.breaker_probe_s * 1000)
    waiting |= {name: now_ms + probe_ms for name, r in ran.items() if r.probe_failed}
    changed = {name: r.state for name, r in ran.items()}
    states = claimed.handlers | {name: HandlerState() for name in skip} | changed
    outcome = _event_outcome(states, set(waiting))
    again = outcome in (EventOutcome.RETRY, EventOutcome.WAITING)
    changes = await state.journal.finish(
        event_id,
        event_type,
        outcome=outcome,
        changed=changed,
        now_ms=now_ms,
        durations_s={name: r.took_s for name, r in ran.items()},
        latency_s=(now_ms - claimed.received_ms) / 1000 if outcome is EventOutcome.DONE else None,
        retry_ms=_due_again_ms(states, waiting, now_ms) if again else None,
        ordered=any(h.ordered for h in handlers.values()),
        wake=[n for n, s in changed.items() if handlers[n].ordered and s.state is not HandlerStatus.PENDING],
        ran={
            name: {"c": bool(handlers[name].concurrency), "b": handlers[name].breaker}
            | ({} if r.downstream is None else {"f": int(r.downstream)})
            for name, r in ran.items()
        },
        breaker=(settings.breaker_failures, probe_ms),
    )
    log_breaker_changes(changes, settings)
    # Each handler already logged its outcome; a line per event adds news only when it is not done.
    level = logging.DEBUG if outcome is EventOutcome.DONE else logging.INFO
    log.log(level, "event %s", outcome.value, extra=fields | {"outcome": outcome.value})
    if again:
        # The finish script has set when the job is due again; arq only has to keep it queued.
        raise Retry
