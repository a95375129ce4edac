"""Pause and resume a handler from the console: a confirmation page (GET), then the change (POST).

As with replay, the POST carries the session's CSRF token, and the change is the one that
`oa-webhooks handlers pause|resume` makes (service/store/handlers.py), kept in Redis for every
worker. Afterwards the browser goes back to the overview (303), whose Handlers table shows it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import typer
from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at run time

from service.api.state import runtime_of
from service.ops.cli.options import parse_duration_ms
from service.ops.console import auth
from service.ops.console.web import PREFIX, _token, csrf_refused, read_form, redirect, render
from service.store.handlers import HandlerView, UnknownHandler, handler_views, pause, resume

if TYPE_CHECKING:
    from starlette.responses import Response

log = logging.getLogger("oa.console")
_DURATION_HINT = "Leave empty to pause until you resume it, or enter a duration such as 30m, 2h or 1d."


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unknown(name: str, exc: UnknownHandler) -> dict[str, object]:
    return {
        "title": "No such handler",
        "message": f"No worker has registered {name}. Known handlers: {', '.join(exc.known) or 'none yet'}.",
        "link": (PREFIX, "Back to the overview"),
    }


async def _view(request: Request, name: str) -> HandlerView | None:
    views = await handler_views(runtime_of(request).redis, now_ms=_now_ms())
    return next((v for v in views if v.name == name), None)


async def confirm(request: Request, name: str, action: str) -> Response:
    """Ask before pausing or resuming: what will happen, and a button that POSTs."""
    view = await _view(request, name)
    if view is None:
        return render(request, "error.html", _unknown(name, UnknownHandler(name, [])), status=404)
    return render(
        request,
        "handler.html",
        {"handler": view, "action": action, "errors": {}, "value": "", "hint": _DURATION_HINT},
    )


async def change(request: Request, name: str, action: str) -> Response:
    """Pause (with an optional duration) or resume the handler, then back to the overview."""
    form = await read_form(request) or {}
    back = f"{PREFIX}#handlers-title"
    if not auth.csrf_matches(form.get(auth.CSRF_FIELD), request.state.session, _token(request)):
        log.warning("console %s refused: no valid CSRF token", action, extra={"handler": name})
        return render(request, "error.html", csrf_refused(back), status=403)
    redis = runtime_of(request).redis
    try:
        if action == "pause":
            duration = form.get("for", "").strip()
            try:
                until_ms = _now_ms() + parse_duration_ms(duration) if duration else None
            except typer.BadParameter:
                view = await _view(request, name)
                if view is None:
                    raise UnknownHandler(name, []) from None
                fix = "enter one such as 30m, 2h or 1d, or nothing"
                errors = {"for": f"{duration!r} is not a duration: {fix}"}
                context = {
                    "handler": view,
                    "action": action,
                    "errors": errors,
                    "value": duration,
                    "hint": _DURATION_HINT,
                }
                return render(request, "handler.html", context, status=400)
            await pause(redis, name, now_ms=_now_ms(), until_ms=until_ms)
        else:
            await resume(redis, name, now_ms=_now_ms())
    except UnknownHandler as exc:
        return render(request, "error.html", _unknown(name, exc), status=404)
    log.info("console %s", action, extra={"handler": name, "outcome": action})
    return redirect(f"{PREFIX}?{action}d={quote(name, safe='')}#handlers-title")


async def confirm_pause(request: Request, name: str) -> Response:
    """GET /console/handlers/{name}/pause."""
    return await confirm(request, name, "pause")


async def confirm_resume(request: Request, name: str) -> Response:
    """GET /console/handlers/{name}/resume."""
    return await confirm(request, name, "resume")


async def do_pause(request: Request, name: str) -> Response:
    """POST /console/handlers/{name}/pause."""
    return await change(request, name, "pause")


async def do_resume(request: Request, name: str) -> Response:
    """POST /console/handlers/{name}/resume."""
    return await change(request, name, "resume")
