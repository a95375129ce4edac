"""The FastAPI application: routes, JSON errors, and the Redis connection opened in lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.routing import Route

from service import ingest, metrics, monitoring, queue
from service.ledger import Ledger
from service.settings import Settings, load_settings
from service.state import Runtime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.responses import JSONResponse

log = logging.getLogger("oa.api")

_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _ERROR_CODES.get(exc.status_code, "http_error")
    return ingest.error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette still logs the traceback; the client learns nothing about our internals.
    return ingest.error_response(500, "internal_error", "the request could not be processed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings are read (and refused if invalid) when it starts, not at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        current = settings or load_settings()
        for index in current.short_secret_indexes:
            log.warning(
                "OA_WEBHOOK_SECRET entry %d is shorter than 16 bytes; use a longer random secret", index + 1
            )
        redis = queue.connect(current.redis_url.get_secret_value(), timeout_s=current.redis_timeout_s)
        app.state.runtime = Runtime(
            settings=current, redis=redis, ledger=Ledger(redis, queue_expiry_ms=current.queue_expiry_ms)
        )
        try:
            yield
        finally:
            await redis.aclose()

    # No /docs, /redoc or /openapi.json, and no redirect from a trailing slash: one exact endpoint.
    app = FastAPI(
        title="Offerte Adviseur webhook receiver",
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    # Plain Starlette routes: no body model and no dependency graph on the hot path.
    app.router.routes.extend(
        [
            Route(ingest.PATH, ingest.receive_webhook, methods=["POST"], name="receive_webhook"),
            Route("/healthz", monitoring.healthz, methods=["GET"], name="healthz"),
            Route("/readyz", monitoring.readyz, methods=["GET"], name="readyz"),
            Route("/metrics", metrics.metrics, methods=["GET"], name="metrics"),
        ]
    )
    return app
