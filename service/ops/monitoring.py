"""Liveness and readiness: `/healthz` never touches Redis, `/readyz` does."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from service.api.ingest import error_response
from service.api.state import runtime_of

if TYPE_CHECKING:
    from starlette.requests import Request


async def healthz(_request: Request) -> JSONResponse:
    """The process is alive and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Redis answers a PING within `OA_REDIS_TIMEOUT_S`; 503 otherwise."""
    runtime = runtime_of(request)
    try:
        async with asyncio.timeout(runtime.settings.redis_timeout_s):
            await runtime.redis.ping()
    except (RedisError, OSError, TimeoutError):
        retry_after = {"Retry-After": str(runtime.settings.retry_after_s)}
        return error_response(503, "redis_unavailable", "Redis did not answer a PING", retry_after)
    return JSONResponse({"status": "ready"})
