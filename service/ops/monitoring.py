"""Liveness and readiness: `/healthz` never touches Redis, `/readyz` does.

Ready means a webhook would be stored now: Redis answers a PING and, with `OA_REDIS_MIN_REPLICAS`,
that many replicas confirm a write (ingest answers 503 to every webhook otherwise).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from service.api.ingest import error_response
from service.api.state import runtime_of
from service.store.replicas import confirming_replicas, wait_ms

if TYPE_CHECKING:
    from starlette.requests import Request


async def healthz(_request: Request) -> JSONResponse:
    """The process is alive and serving."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: Redis answers, and `OA_REDIS_MIN_REPLICAS` replicas confirm a write; else 503 and why."""
    runtime = runtime_of(request)
    settings = runtime.settings
    retry_after = {"Retry-After": str(settings.retry_after_s)}
    required = settings.redis_min_replicas
    try:
        async with asyncio.timeout(settings.redis_timeout_s):
            await runtime.redis.ping()
        if required:
            async with asyncio.timeout(settings.redis_timeout_s):
                confirmed = await confirming_replicas(
                    runtime.redis, replicas=required, timeout_s=settings.redis_timeout_s
                )
            if confirmed < required:
                detail = (
                    f"{confirmed} of {required} replicas confirmed a write within "
                    f"{wait_ms(settings.redis_timeout_s)} ms (OA_REDIS_MIN_REPLICAS={required}): every "
                    "webhook is answered 503 until they do; check the replicas (INFO replication)"
                )
                return error_response(503, "not_replicated", detail, retry_after)
    except (RedisError, OSError, TimeoutError) as exc:
        detail = f"Redis did not answer a PING or a write ({type(exc).__name__})"
        return error_response(503, "redis_unavailable", detail, retry_after)
    return JSONResponse({"status": "ready"})
