"""Replay one event from the console: a confirmation page (GET), then the replay itself (POST).

The POST carries the session's CSRF token; the replay is `service.replay.Replayer`, as for
`oa-webhooks events replay`, so the real worker runs the event again. After it, the browser is sent
back to the event's page (303), which says what happened and follows the event until it is finished.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at run time

from service.api.state import runtime_of
from service.ops.console import auth
from service.ops.console.views import not_found
from service.ops.console.web import PREFIX, _token, csrf_refused, read_form, redirect, render
from service.store.history import FINAL_STATES, EventRecord, show_event
from service.store.replay import Replayer

if TYPE_CHECKING:
    from starlette.responses import Response

log = logging.getLogger("oa.console")


def _event_url(event_id: str) -> str:
    return f"{PREFIX}/events/{quote(event_id, safe='')}"


def _refusal(record: EventRecord, handler: str) -> dict[str, object] | None:
    """Why this replay cannot be done, as a page's context; None when it can."""
    back = (_event_url(record.summary.id), "Back to the event")
    if record.summary.state not in FINAL_STATES:
        message = (
            f"The event is {record.summary.state.value}: only a done, dead or unhandled event can be "
            "replayed. Wait until it is finished; its page follows it."
        )
        return {"title": "This event cannot be replayed yet", "message": message, "link": back}
    if handler and handler not in {h.name for h in record.handlers}:
        message = "Choose a handler from the list on the event's page, or leave the choice at the default."
        return {"title": "No such handler on this event", "message": message, "link": back}
    return None


async def confirm(request: Request, event_id: str) -> Response:
    """Ask before replaying: what will run, and a Replay button that POSTs."""
    record = await show_event(runtime_of(request).redis, event_id)
    if record is None:
        return render(request, "error.html", not_found(event_id), status=404)
    handler = request.query_params.get("handler", "")
    if refusal := _refusal(record, handler):
        return render(request, "error.html", refusal, status=409)
    return render(request, "replay.html", {"record": record, "handler": handler})


async def replay(request: Request, event_id: str) -> Response:
    """Replay the event (a POST with the CSRF token), then back to its page with the outcome."""
    form = await read_form(request) or {}
    if not auth.csrf_matches(form.get(auth.CSRF_FIELD), request.state.session, _token(request)):
        log.warning("console replay refused: no valid CSRF token", extra={"event_id": event_id})
        return render(request, "error.html", csrf_refused(_event_url(event_id)), status=403)
    runtime = runtime_of(request)
    record = await show_event(runtime.redis, event_id)
    if record is None:
        return render(request, "error.html", not_found(event_id), status=404)
    handler = form.get("handler", "")
    if refusal := _refusal(record, handler):
        return render(request, "error.html", refusal, status=409)
    replayer = Replayer(
        runtime.redis,
        queue_expiry_ms=runtime.settings.queue_expiry_ms,
        min_replicas=runtime.settings.redis_min_replicas,
        timeout_s=runtime.settings.redis_timeout_s,
    )
    result = await replayer.replay(event_id, handler=handler or None)
    log.info(
        "console replay",
        extra={"event_id": event_id, "outcome": result.status.value, "handler": ",".join(result.handlers)},
    )
    return redirect(f"{_event_url(event_id)}?replay={result.status.value}")
