"""The console's read-only pages: the overview, the event list (with search), one event.

Each is one function that reads through the shared query code (service/store/stats.py,
service/store/history.py) and renders one template; filters and paging live in the query string.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import typer
from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at run time

from service.api.state import runtime_of
from service.ops.cli.options import parse_time_ms
from service.ops.console.charts import minute_chart
from service.ops.console.web import PREFIX, redirect, render
from service.store.handlers import WAIT_REASONS
from service.store.history import (
    FILTER_STATES,
    FINAL_STATES,
    Attempt,
    EventState,
    Filters,
    HandlerRecord,
    Replay,
    known_types,
    lead_timeline,
    list_events,
    show_event,
    valid_type_pattern,
)
from service.store.ledger import event_key
from service.store.replay import ReplayStatus
from service.store.stats import read_minutes, read_snapshot
from service.store.summary import parse_cursor
from service.tracing import trace_url

if TYPE_CHECKING:
    from starlette.responses import Response

OVERVIEW_REFRESH_S = 5
EVENT_REFRESH_S = 2  # while an event is not finished, its page follows it
PAGE_SIZE = 50
_FILTERS = ("q", "type", "state", "since", "until")
_TIME_HINT = "Enter a duration such as 15m, 2h or 7d, or a time such as 2026-03-01T08:00Z."


async def overview(request: Request) -> Response:
    """Queue depth and lag, events per minute over the last hour, live workers, secrets in use."""
    runtime = runtime_of(request)
    snapshot = await read_snapshot(runtime.redis, heartbeat_interval_s=runtime.settings.heartbeat_interval_s)
    minutes = await read_minutes(runtime.redis, now_ms=int(snapshot.now_s * 1000))
    workers = [
        {**w, "age_s": max(0.0, snapshot.now_s - int(w.get("heartbeat_ms", 0)) / 1000)}
        for w in snapshot.workers
    ]
    secrets = sorted((int(i), n) for i, n in snapshot.per_type("secret").items())
    return render(
        request,
        "overview.html",
        {
            "s": snapshot,
            "status": snapshot.as_json(),
            "chart": minute_chart(minutes),
            "workers": workers,
            "secrets": secrets,
            "secrets_configured": len(runtime.settings.webhook_secret),
            "refresh_s": OVERVIEW_REFRESH_S,
            "changed": _changed(request),
        },
    )


def _changed(request: Request) -> str:
    """The banner after a pause or resume (the POST redirects here with `?paused=` or `?resumed=`)."""
    for action in ("paused", "resumed"):
        if name := request.query_params.get(action):
            return f"{name} is {action}."
    return ""


def _parse_time(value: str, errors: dict[str, str], field: str) -> int | None:
    if not value:
        return None
    try:
        return parse_time_ms(value)  # the parser of `events list --since`, shared
    except typer.BadParameter:
        errors[field] = f"{value!r} is not a time. {_TIME_HINT}"
        return None


def _filters(params: dict[str, str], errors: dict[str, str], *, lead: str | None) -> Filters:
    """The `Filters` of the query string; a bad value becomes an error on its field instead."""
    event_type, state, cursor = params["type"], params["state"], params["cursor"]
    if event_type and not valid_type_pattern(event_type):
        errors["type"] = "Choose an event type from the list."
    if state and state not in FILTER_STATES:
        errors["state"] = f"Choose a state from the list: {', '.join(FILTER_STATES)}."
    if cursor:
        try:
            parse_cursor(cursor)
        except ValueError:
            errors["cursor"] = "This page link is broken. Start again from the newest events."
    since, until = (
        _parse_time(params["since"], errors, "since"),
        _parse_time(params["until"], errors, "until"),
    )
    if errors:
        return Filters(limit=PAGE_SIZE)
    return Filters(
        types=(event_type,) if event_type else (),
        state=EventState(state) if state else None,
        lead=lead,
        since_ms=since,
        until_ms=until,
        limit=PAGE_SIZE,
        cursor=cursor or None,
    )


async def events(request: Request) -> Response:
    """Search by event id or lead id, filter by type, state and time, page with a cursor."""
    redis = runtime_of(request).redis
    params = {name: request.query_params.get(name, "").strip() for name in (*_FILTERS, "cursor")}
    errors: dict[str, str] = {}
    query, timeline = params["q"], None
    if query:
        if len(query) <= 255 and await redis.exists(event_key(query)):
            return redirect(f"{PREFIX}/events/{quote(query, safe='')}")
        timeline = await lead_timeline(redis, query) if len(query) <= 64 else None
        if timeline is None or not timeline.events:
            errors["q"] = (
                f"No event and no lead has the id {query!r}. Check it: enter an event id exactly as the "
                "sender gave it, or a lead id (a number)."
            )
    filters = _filters(params, errors, lead=query if timeline and timeline.events else None)
    page = await list_events(redis, filters) if not errors else None
    types = sorted(await known_types(redis))
    wildcards = sorted({f"{t.partition('.')[0]}.*" for t in types})
    kept = {k: v for k, v in params.items() if k in _FILTERS and v}
    return render(
        request,
        "events.html",
        {
            "params": params,
            "errors": errors,
            "page": page,
            "timeline": timeline,
            "type_options": [*types, *wildcards],
            "states": FILTER_STATES,
            "next_url": f"?{urlencode({**kept, 'cursor': page.next_cursor})}"
            if page and page.next_cursor
            else None,
            "first_url": f"?{urlencode(kept)}" if params["cursor"] else None,
        },
        status=400 if errors and not errors.keys() <= {"q"} else 200,
    )


_FLASH = {
    ReplayStatus.REPLAYED.value: "Replayed: the event is queued again, and a worker will run its handlers.",
    ReplayStatus.NOT_FINAL.value: (
        "Not replayed: the event is still queued or running. Wait until it is done or dead."
    ),
    ReplayStatus.FINISHING.value: (
        "Not replayed yet: a worker is still finishing the event's last run, which takes a moment. "
        "Replay it again."
    ),
    ReplayStatus.MISSING.value: "Not replayed: the event is no longer in the ledger.",
}


async def event(request: Request, event_id: str) -> Response:
    """One event: its payload, each handler's attempts with errors, tracebacks and traces, and Replay."""
    record = await show_event(runtime_of(request).redis, event_id)
    if record is None:
        return render(request, "error.html", not_found(event_id), status=404)
    finished = record.summary.state in FINAL_STATES
    return render(
        request,
        "event.html",
        {
            "record": record,
            "stories": {h.name: _story(h) for h in record.handlers},
            "replayable": finished,
            "flash": _FLASH.get(request.query_params.get("replay", "")),
            "refresh_s": None if finished else EVENT_REFRESH_S,
            "now_ms": time.time_ns() // 1_000_000,
            "wait_reasons": WAIT_REASONS,
            "traced": any(a.trace_id for h in record.handlers for a in h.runs),
            "trace_url": partial(trace_url, runtime_of(request).settings.trace_url_template),
        },
    )


def _story(handler: HandlerRecord) -> list[Attempt | Replay]:
    """A handler's kept runs and the replays that reset it, in the order they happened."""
    items: list[Attempt | Replay] = [*handler.runs, *handler.replays]
    return sorted(items, key=lambda item: item.started_ms if isinstance(item, Attempt) else item.at_ms)


def not_found(event_id: str) -> dict[str, Any]:
    """The context of the 404 page for an unknown event id."""
    return {
        "title": "No such event",
        "message": (
            f"The ledger has no event {event_id!r}: the id is not one we received, or the event expired "
            "after the retention (OA_RETENTION_DAYS). Search for it by its id or its lead id."
        ),
        "link": (f"{PREFIX}/events", "Search events"),
    }
