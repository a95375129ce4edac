"""The CONSUMER span of each handler run, by OpenTelemetry's messaging conventions (service/tracing.py).

One span per run of one handler for one event, named `process <event type>`. Its parent is the
webhook's SERVER span, whose `traceparent` the API stored with the event, and it links to that span
too, as the conventions ask of a "process" span: one event is then one trace (the webhook, every try
of every handler, and what they called, days of retries or a replay later included), and a backend
that follows links from consumer to producer finds it as well. An event accepted while the API did
not trace has no `traceparent`: each of its runs is then the root of a trace of its own.

`ctx.http` calls made during the run are CLIENT spans under it (the httpx instrumentation). A run that
raised has status ERROR and the exception recorded, by `record_failure` in the worker's except block.
Waiting before the run (order, a pause, a breaker, a limit) is on the span as `oa.waited.*`. The
run's stored entry gets the span's trace id and span id, for `events show` and the console, when the
span is sampled.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from service.tracing import MESSAGING_SYSTEM, context_of, current_ids
from workers.runtime.journal import HandlerStatus, error_type

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import Attributes

    from workers.runtime.job import RunResult
    from workers.runtime.journal import Claimed


class RunTrace(NamedTuple):
    """What a run's span says besides its result: the event, the handler, the try, how it got here."""

    event_id: str
    event_type: str
    handler: str
    attempt: int
    traceparent: str = ""
    waited: tuple[str, int] | None = None  # what it waited for, and since when (ms)
    probe: bool = False

    @classmethod
    def of(
        cls,
        claimed: Claimed,
        event_id: str,
        event_type: str,
        handler: str,
        waited: tuple[str, int] | None,
        *,
        probe: bool,
    ) -> RunTrace:
        """The run of `handler` on a claimed event (its attempt is already counted)."""
        attempt = claimed.handlers[handler].attempts
        return cls(event_id, event_type, handler, attempt, claimed.traceparent, waited, probe)


def _attributes(run: RunTrace) -> Attributes:
    attributes: dict[str, str | int | bool] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": run.event_type,
        "messaging.message.id": run.event_id,
        # Each handler receives every event of its types, as a consumer group receives a topic.
        "messaging.consumer.group.name": run.handler,
        "oa.handler": run.handler,
        "oa.attempt": run.attempt,
    }
    if run.probe:
        attributes["oa.probe"] = True
    if run.waited is not None:
        why, since_ms = run.waited
        attributes |= {
            "oa.waited.reason": why,
            "oa.waited.ms": max(0, time.time_ns() // 1_000_000 - since_ms),
        }
    return attributes


def _outcome(result: RunResult) -> str:
    if result.probe_failed:
        return "probe failed"
    return {HandlerStatus.DONE: "succeeded", HandlerStatus.DEAD: "dead"}.get(result.state.state, "retrying")


def _with_ids(result: RunResult, ids: tuple[str, str]) -> RunResult:
    """`result` with its run's stored entry followed by the span's trace id and span id."""
    if not result.state.runs:
        return result
    *kept, last = result.state.runs
    entry = [*last[:4], *[None] * (4 - len(last)), *ids]  # the error (or a null) stays fourth
    return replace(result, state=replace(result.state, runs=[*kept, entry]))


async def traced_run(tracer: Tracer | None, run: Awaitable[RunResult], about: RunTrace) -> RunResult:
    """Await `run` (`workers.runtime.job.run_handler(...)`) in its CONSUMER span; just await it untraced."""
    if tracer is None:
        return await run
    parent = context_of(about.traceparent)
    links = [Link(trace.get_current_span(parent).get_span_context())] if parent is not None else None
    with tracer.start_as_current_span(
        f"process {about.event_type}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=_attributes(about),
        links=links,
        record_exception=False,  # run_handler catches what the handler raises: see `record_failure`
    ) as span:
        result = await run  # its log lines, the outcome's included, are written inside the span
        span.set_attribute("oa.outcome", _outcome(result))
        ids = current_ids()
    return result if ids is None else _with_ids(result, ids)


def record_failure(exc: BaseException) -> None:
    """On the current run's span (if traced): status ERROR, `error.type`, and the exception as an event."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("error.type", error_type(exc))
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
        span.record_exception(exc)
