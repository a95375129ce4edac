"""Sign in with `OA_ADMIN_TOKEN` (throttled per client address), sign out, and the console's static files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at run time
from starlette.responses import FileResponse

from service.api.state import runtime_of
from service.ops.console import auth
from service.ops.console.web import PREFIX, _token, csrf_refused, public, read_form, redirect, render
from service.store import sessions

if TYPE_CHECKING:
    from starlette.responses import Response

log = logging.getLogger("oa.console")
STATIC = Path(__file__).resolve().parent / "static"
_MEDIA_TYPES = {".css": "text/css", ".svg": "image/svg+xml"}


def _next_page(value: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    if value and value.startswith(PREFIX) and not value.startswith(f"{PREFIX}/login") and "\\" not in value:
        return value
    return PREFIX


@public
async def login_page(request: Request) -> Response:
    """The sign-in form (already signed in: on to the console)."""
    next_page = _next_page(request.query_params.get("next"))
    if request.state.session is not None:
        return redirect(next_page)
    return render(request, "login.html", {"next": next_page, "error": None})


@public
async def login(request: Request) -> Response:
    """Check the token; a right one starts a session, a wrong one shows the form with an error.

    Ten wrong tokens from one client address within a minute pause sign-in for that address for a
    minute (429 with Retry-After, whatever the token), counted in Redis across the API processes.
    """
    form = await read_form(request) or {}
    next_page = _next_page(form.get("next"))
    given = form.get("token", "")
    redis, address = runtime_of(request).redis, request.client.host if request.client else "-"
    if paused_s := await sessions.signin_paused_s(redis, address):
        error = (
            f"Too many sign-in attempts: {sessions.SIGNIN_LIMIT} wrong tokens from your address within a "
            f"minute. Sign-in is paused for it; try again in {paused_s} seconds."
        )
        context = {"next": next_page, "error": error}
        response = render(request, "login.html", context, status=429)
        response.headers["retry-after"] = str(paused_s)
        return response
    if not given:
        error = "Enter the console token: the value of OA_ADMIN_TOKEN that the API was started with."
    elif not auth.token_matches(given, _token(request)):
        log.warning("console sign-in refused: wrong token", extra={"detail": address})
        if await sessions.signin_failed(redis, address, now_ms=time.time_ns() // 1_000_000):
            log.warning(
                "console sign-in paused for an address: too many wrong tokens",
                extra={
                    "detail": address,
                    "count": sessions.SIGNIN_LIMIT,
                    "retry_in_s": sessions.SIGNIN_BLOCK_S,
                },
            )
        error = (
            "The token is not right. Enter the value of OA_ADMIN_TOKEN that the API was started with; "
            "it is case-sensitive."
        )
    else:
        return await _start_session(request, next_page, address)
    return render(request, "login.html", {"next": next_page, "error": error}, status=401)


async def _start_session(request: Request, next_page: str, address: str) -> Response:
    """The session in Redis and its cookie: `Secure` when the console is reached over https.

    Behind a TLS proxy the scheme is the proxy's `X-Forwarded-Proto`, believed from
    `OA_ADMIN_FORWARDED_ALLOW_IPS` only (service/ops/admin.py).
    """
    redis = runtime_of(request).redis
    cookie = auth.new_session(_token(request))
    session = auth.parse_session(cookie, _token(request))
    assert session is not None  # made just now, with this token
    await sessions.start_session(
        redis, session.nonce, ends_ms=session.expires_s * 1000, now_ms=time.time_ns() // 1_000_000
    )
    await sessions.signin_succeeded(redis, address)
    log.info("console sign-in", extra={"detail": address})
    response = redirect(next_page)
    response.set_cookie(
        auth.COOKIE,
        cookie,
        max_age=auth.SESSION_TTL_S,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """End the session (a POST with the CSRF token): in Redis, so a copy of the cookie is worthless too."""
    form = await read_form(request) or {}
    session = request.state.session
    if not auth.csrf_matches(form.get(auth.CSRF_FIELD), session, _token(request)):
        return render(request, "error.html", csrf_refused(PREFIX), status=403)
    await sessions.end_session(runtime_of(request).redis, session.nonce)
    log.info("console sign-out")
    response = redirect(f"{PREFIX}/login")
    response.delete_cookie(
        auth.COOKIE,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@public
async def static(request: Request, name: str) -> Response:
    """One of the console's own static files (no directory listing, no other path)."""
    path = STATIC / name
    if "/" in name or path.suffix not in _MEDIA_TYPES or not path.is_file():
        context = {"title": "Not found", "message": "The console has no such file.", "link": None}
        return render(request, "error.html", context, status=404)
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"cache-control": "max-age=3600"})
