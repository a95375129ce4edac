"""The admin app: operations endpoints on their own listener, never on the internet-facing port.

`oa-webhooks api` serves it on `OA_ADMIN_HOST:OA_ADMIN_PORT` (127.0.0.1:8001 by default), in the
same process and event loop as the public app, sharing its `Runtime` (settings and Redis clients).
It is a plain FastAPI app: more operator pages are added with `app.include_router(...)`, and reach
the runtime with `service.state.runtime_of(request)`. Unknown paths are 404 JSON, as on the public app.

Behind a TLS proxy, the proxy's `X-Forwarded-Proto` and `X-Forwarded-For` are believed from the
addresses of `OA_ADMIN_FORWARDED_ALLOW_IPS` only (none by default), by uvicorn's own middleware: the
console's cookie is then `Secure`, and its sign-in throttle counts the real client.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.api.app import PLAIN_APP
from service.api.state import attach_runtime
from service.ops import console, metrics, monitoring

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import ASGIApp, Receive, Scope, Send

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
    app.add_middleware(_TrustedProxyHeaders)
    return app


class _TrustedProxyHeaders:
    """uvicorn's ProxyHeadersMiddleware for the addresses of `OA_ADMIN_FORWARDED_ALLOW_IPS`.

    Built on the first request: the settings are certain only once the lifespan has run (an app made
    without them reads the environment then).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the scheme and the client from a trusted proxy's headers, then go on."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if self._app is None:
            trusted = list(scope["app"].state.runtime.settings.admin_forwarded_ips)
            # uvicorn types its ASGI callables with its own aliases; they are the same protocol.
            proxied: Any = ProxyHeadersMiddleware(cast("Any", self.app), trusted_hosts=trusted)
            self._app = proxied if trusted else self.app
        await self._app(scope, receive, send)
