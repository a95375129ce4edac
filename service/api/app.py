"""The public FastAPI app (the webhook and `/healthz`), its JSON errors, and its runtime in lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.routing import Route

from service import logs, tracing
from service.api import ingest
from service.api.state import attach_runtime
from service.ops import monitoring

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping

    from opentelemetry.trace import Tracer
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send

    from service.api.state import Runtime
    from service.settings import Settings

log = logging.getLogger("oa.api")

_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _ERROR_CODES.get(exc.status_code, "http_error")
    return ingest.error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(_request: Request, _exc: Exception) -> Response:
    # Starlette still logs the traceback; the client learns nothing about our internals.
    return ingest.error_response(500, "internal_error", "the request could not be processed")


class ReceiverApp(FastAPI):
    """FastAPI, with `POST /webhooks/offerte-adviseur` served before its middleware and routing."""

    # Set by the lifespan while tracing is on (service/tracing.py): the webhook's spans come from it.
    tracer: Tracer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The webhook goes straight to `ingest.receive_webhook`; everything else through FastAPI."""
        if scope["type"] == "http" and scope["path"] == ingest.PATH and scope["method"] == "POST":
            await serve_webhook(self, scope, receive, partial(ingest.send_reply, send))
        else:
            await super().__call__(scope, receive, send)


async def serve_webhook(
    app: ReceiverApp, scope: Scope, receive: Receive, answer: Callable[[ingest.Reply], Awaitable[None]]
) -> None:
    """The webhook, over ASGI or straight from our HTTP protocol (service/api/direct.py)."""
    # Without FastAPI's error middleware around it, a bug must still end in our JSON 500.
    try:
        await ingest.receive_webhook(app.state.runtime, scope, receive, answer, tracer=app.tracer)
    except Exception:
        log.exception("unexpected error in the webhook endpoint")
        detail = "the request could not be processed"
        await answer(ingest.Reply(500, ingest.error_body("internal_error", detail)))


class _WebhookRoute:
    """The endpoint for the router: FastAPI answers its other methods with 405."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_webhook(scope["app"], scope, receive, partial(ingest.send_reply, send))


# FastAPI's own handlers answer in its shape; these answer in ours.
EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    HTTPException: _http_error,
    Exception: _internal_error,
}


def _probe(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in _PROBES


# Health checks and Prometheus scrapes, every few seconds: no span for them (see PLAIN_APP).
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

# Both apps: JSON errors, no /docs, /redoc or /openapi.json, and no redirect from a trailing slash;
# exactly the routes each one lists. Once tracing sets its provider (service/tracing.py), FastAPI's own
# telemetry gives the requests it serves (the console's pages) spans; the webhook is ours, ahead of it.
PLAIN_APP: dict[str, Any] = {
    "exception_handlers": EXCEPTION_HANDLERS,
    "docs_url": None,
    "redoc_url": None,
    "openapi_url": None,
    "redirect_slashes": False,
    "telemetry": {"exclude": _probe},
}


@asynccontextmanager
async def _traced(app: ReceiverApp) -> AsyncIterator[None]:
    """Tracing for this process while the app runs, if the OTEL_* variables ask for it."""
    async with tracing.running(tracing.API_SERVICE) as traces:
        app.tracer = traces.tracer if traces else None
        try:
            yield
        finally:
            app.tracer = None


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The public app: the webhook and `/healthz`, nothing else (operations are on the admin app).

    `runtime` is the process's, shared with the admin app; without one the lifespan opens its own.
    Settings are read (and refused if invalid) when it starts, not at import.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert isinstance(app, ReceiverApp)
        async with attach_runtime(app, settings=settings, runtime=runtime) as current, _traced(app):
            for index in current.settings.short_secret_indexes:
                log.warning(
                    "OA_WEBHOOK_SECRET entry %d is shorter than 16 bytes; use a longer random secret",
                    index + 1,
                )
            # What start-up allocated (modules, app, settings) lives as long as the process; frozen,
            # the collector stops rescanning it on every full pass (see `gc.freeze`).
            gc.freeze()
            logs.buffer_on(asyncio.get_running_loop())
            yield

    app = ReceiverApp(title="Offerte Adviseur webhook receiver", lifespan=lifespan, **PLAIN_APP)
    app.router.routes.extend(
        [
            Route(ingest.PATH, _WebhookRoute(), methods=["POST"], name="receive_webhook"),
            Route("/healthz", monitoring.healthz, methods=["GET"], name="healthz"),
        ]
    )
    return app
