"""Sign in with `OA_ADMIN_TOKEN`, sign out, and the console's static files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request  # noqa: TC002 - FastAPI reads endpoint annotations at run time
from starlette.responses import FileResponse

from service.ops.console import auth
from service.ops.console.web import PREFIX, _token, csrf_refused, public, read_form, redirect, render

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
    """Check the token; a right one sets the session cookie, a wrong one shows the form with an error."""
    form = await read_form(request) or {}
    next_page = _next_page(form.get("next"))
    given = form.get("token", "")
    if not given:
        error = "Enter the console token: the value of OA_ADMIN_TOKEN that the API was started with."
    elif not auth.token_matches(given, _token(request)):
        log.warning("console sign-in refused: wrong token")
        error = (
            "The token is not right. Enter the value of OA_ADMIN_TOKEN that the API was started with; "
            "it is case-sensitive."
        )
    else:
        log.info("console sign-in")
        response = redirect(next_page)
        response.set_cookie(
            auth.COOKIE,
            auth.new_session(_token(request)),
            max_age=auth.SESSION_TTL_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    return render(request, "login.html", {"next": next_page, "error": error}, status=401)


async def logout(request: Request) -> Response:
    """Forget the session in this browser (a POST with the CSRF token)."""
    form = await read_form(request) or {}
    if not auth.csrf_matches(form.get(auth.CSRF_FIELD), request.state.session, _token(request)):
        return render(request, "error.html", csrf_refused(PREFIX), status=403)
    response = redirect(f"{PREFIX}/login")
    response.delete_cookie(auth.COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


@public
async def static(request: Request, name: str) -> Response:
    """One of the console's own static files (no directory listing, no other path)."""
    path = STATIC / name
    if "/" in name or path.suffix not in _MEDIA_TYPES or not path.is_file():
        context = {"title": "Not found", "message": "The console has no such file.", "link": None}
        return render(request, "error.html", context, status=404)
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"cache-control": "max-age=3600"})
