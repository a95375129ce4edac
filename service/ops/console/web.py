"""What every console page shares: the templates, the headers, the session check, and form bodies.

`ConsoleRoute` wraps each console endpoint: it answers 404 while `OA_ADMIN_TOKEN` is unset, sends a
request without a valid session (a genuine cookie whose session is still live in Redis) to the login
page (GET) or answers 401 (anything else), renders a Redis outage as a page, and puts the security
headers on every answer.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from redis.exceptions import RedisError
from starlette.responses import RedirectResponse

from service.api import ingest
from service.api.state import runtime_of
from service.ops.console import auth
from service.store import sessions
from service.store.batching import NotReplicated
from service.store.summary import iso

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("oa.console")
PREFIX = "/console"
MAX_FORM_BYTES = 4096
# No script may run at all: the console has none. Styles and images from our own static files only.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("service.ops.console", "templates"),
        autoescape=True,  # every template is HTML: payload text is always escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.filters["path"] = lambda value: quote(str(value), safe="")  # an id as one URL segment
templates.env.filters["iso"] = lambda ms: iso(ms) or "-"
# A moment as people read it in a table: to the second, "2026-12-02 21:28:31 UTC".
templates.env.filters["moment"] = lambda ms: f"{(iso(ms) or '')[:19].replace('T', ' ')} UTC" if ms else "-"
templates.env.filters["clock"] = lambda epoch_s: datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%H:%M:%S")


def render(request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> Response:
    """A page from `template`, with the session's CSRF token (for the sign-out form) in its context."""
    session = getattr(request.state, "session", None)
    values = {
        "csrf": auth.csrf_token(session, _token(request)) if session else "",
        "signed_in": session is not None,
        "prefix": PREFIX,
        **context,
    }
    return templates.TemplateResponse(request, template, values, status_code=status)


def redirect(url: str) -> Response:
    """303 See Other: after a POST, the browser GETs the result (no resubmission on reload)."""
    return RedirectResponse(url, status_code=303)


async def read_form(request: Request) -> dict[str, str] | None:
    """The fields of an urlencoded form body (the first value of each), or None if it is not one."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in fields.items()}


def public(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an endpoint as reachable without a session (the login page, the stylesheet)."""
    endpoint.console_public = True  # type: ignore[attr-defined]
    return endpoint


def _token(request: Request) -> bytes:
    token = runtime_of(request).settings.admin_token
    assert token is not None  # ConsoleRoute answers 404 before any page while it is unset
    return token.get_secret_value().encode()


class ConsoleRoute(APIRoute):
    """An APIRoute that checks the console is on and the session is valid, and adds the headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint's handler, guarded."""
        handler = super().get_route_handler()
        is_public = getattr(self.endpoint, "console_public", False)

        async def guarded(request: Request) -> Response:
            if runtime_of(request).settings.admin_token is None:
                return ingest.error_response(404, "not_found", "Not Found")
            request.state.session = None
            static = request.url.path.startswith(f"{PREFIX}/static/")
            try:
                request.state.session = None if static else await _live_session(request)
                if request.state.session is None and not is_public:
                    response = _unauthenticated(request)
                else:
                    response = await handler(request)
            except NotReplicated as exc:  # a RedisError, but Redis answered: say what happened
                log.warning("console write not confirmed by the replicas", extra={"error": str(exc)})
                response = render(request, "error.html", _not_replicated(exc), status=503)
            except RedisError as exc:
                log.warning("console page failed: Redis error", extra={"error": type(exc).__name__})
                response = render(request, "error.html", _redis_down(exc), status=503)
            response.headers.update(HEADERS)
            if not static:
                response.headers["cache-control"] = "no-store"
            return response

        return guarded


async def _live_session(request: Request) -> auth.Session | None:
    """The session of the request's cookie, if the cookie is genuine and the session is live in Redis."""
    session = auth.session_of(request, _token(request))
    if session is None:
        return None
    live = await sessions.session_is_live(
        runtime_of(request).redis, session.nonce, now_ms=time.time_ns() // 1_000_000
    )
    return session if live else None


def _unauthenticated(request: Request) -> Response:
    if request.method in {"GET", "HEAD"}:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(f"{PREFIX}/login?next={quote(target, safe='/')}")
    context = {
        "title": "Sign in first",
        "message": "Your session has ended, or you have not signed in. Sign in, then try again.",
        "link": (f"{PREFIX}/login", "Sign in"),
    }
    return render(request, "error.html", context, status=401)


def _redis_down(exc: RedisError) -> dict[str, Any]:
    return {
        "title": "Redis did not answer",
        "message": (
            f"Redis did not answer ({type(exc).__name__}). Check that Redis is running and that REDIS_URL "
            "points at it; this page works again as soon as Redis answers."
        ),
        "link": (PREFIX, "Try again"),
    }


def _not_replicated(exc: NotReplicated) -> dict[str, Any]:
    return {
        "title": "Done on the primary, not confirmed by the replicas",
        "message": (
            f"Redis's primary has it, but the replicas did not confirm it in time ({exc}; "
            "OA_REDIS_MIN_REPLICAS). If the primary fails before a replica catches up, it can be lost. "
            "Check the replicas, then open the event to see where it stands."
        ),
        "link": (PREFIX, "Back to the console"),
    }


def csrf_refused(back: str) -> dict[str, Any]:
    """The context of the 403 page for a POST without its session's CSRF token."""
    return {
        "title": "This form was refused",
        "message": (
            "The form did not carry this session's token, so it may not have come from the console. "
            "Go back, reload the page, and press the button again."
        ),
        "link": (back, "Go back"),
    }
