"""The operator console: the queue at a glance, find an event, see its story, replay it.

Served at `/console` on the admin listener only (service/ops/admin.py includes `router`), as plain
server-rendered HTML (Jinja2): every page works without JavaScript, is a URL that can be shared, and
keeps its filters in the query string. Off while `OA_ADMIN_TOKEN` is unset (every path 404s).

| path | page |
|---|---|
| `GET /console` | overview: queue, lag, events a minute (SVG), workers, handlers, secrets; self-refreshing |
| `GET /console/events` | search (`q`: an event id or lead id), filters (type, state, since, until), paging |
| `GET /console/events/{id}` | one event: payload, handler timeline with folded tracebacks, Replay |
| `GET`/`POST /console/replay/{id}` | confirm, then replay (POST with the CSRF token) |
| `GET`/`POST /console/handlers/{name}/pause`, `.../resume` | confirm, then pause (for a while) or resume |
| `GET`/`POST /console/login`, `POST /console/logout` | the session (service/ops/console/auth.py) |
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import APIRouter

from service.ops.console import handlers, login, replay, views
from service.ops.console.web import PREFIX, ConsoleRoute

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("oa.console")

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
router.add_api_route("", views.overview, methods=["GET"])
router.add_api_route("/events", views.events, methods=["GET"])
router.add_api_route("/events/{event_id:path}", views.event, methods=["GET"])
router.add_api_route("/replay/{event_id:path}", replay.confirm, methods=["GET"])
router.add_api_route("/replay/{event_id:path}", replay.replay, methods=["POST"])
router.add_api_route("/handlers/{name}/pause", handlers.confirm_pause, methods=["GET"])
router.add_api_route("/handlers/{name}/pause", handlers.do_pause, methods=["POST"])
router.add_api_route("/handlers/{name}/resume", handlers.confirm_resume, methods=["GET"])
router.add_api_route("/handlers/{name}/resume", handlers.do_resume, methods=["POST"])
router.add_api_route("/login", login.login_page, methods=["GET"])
router.add_api_route("/login", login.login, methods=["POST"])
router.add_api_route("/logout", login.logout, methods=["POST"])
router.add_api_route("/static/{name}", login.static, methods=["GET"])


def log_state(settings: Settings) -> None:
    """Say at start-up whether the console is on, and where (or what turns it on)."""
    if settings.admin_token is None:
        log.info("console disabled: set OA_ADMIN_TOKEN to serve it at /console on the admin port")
    else:
        log.info(
            "console enabled",
            extra={"detail": f"http://{settings.admin_host}:{settings.admin_port}{PREFIX}"},
        )


__all__ = ["log_state", "router"]
