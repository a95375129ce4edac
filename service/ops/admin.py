"""The admin app: operations endpoints on their own listener, never on the internet-facing port.

`oa-webhooks api` serves it on `OA_ADMIN_HOST:OA_ADMIN_PORT` (127.0.0.1:8001 by default), in the
same process and event loop as the public app, sharing its `Runtime` (settings and Redis clients).
It is a plain FastAPI app: more operator pages are added with `app.include_router(...)`, and reach
the runtime with `service.state.runtime_of(request)`. Unknown paths are 404 JSON, as on the public app.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.routing import Route

from service.api.app import PLAIN_APP
from service.api.state import attach_runtime
from service.ops import console, metrics, monitoring

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.api.state import Runtime
    from service.settings import Settings


def create_admin_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """`/metrics`, `/readyz`, `/console`; with the process's `runtime`, or one of its own if none is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with attach_runtime(app, settings=settings, runtime=runtime) as attached:
            console.log_state(attached.settings)
            yield

    app = FastAPI(title="oa-webhooks admin", lifespan=lifespan, **PLAIN_APP)
    app.router.routes.extend(
        [
            Route("/readyz", monitoring.readyz, methods=["GET"], name="readyz"),
            Route("/metrics", metrics.metrics, methods=["GET"], name="metrics"),
        ]
    )
    app.include_router(console.router)
    return app
