"""`oa-webhooks api`: the public and the admin listener, in one process and one event loop.

The public listener (`OA_HOST:OA_PORT`) serves the webhook and `/healthz` (service/api/app.py); the
admin listener (`OA_ADMIN_HOST:OA_ADMIN_PORT`, loopback by default) serves `/metrics` and
`/readyz` (service/ops/admin.py). Both speak HTTP through service/api/server.py's guarded protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from typing import TYPE_CHECKING, NamedTuple

import uvicorn
import uvloop

from service.api.app import create_app
from service.api.server import GuardedHttpToolsProtocol
from service.api.state import open_runtime
from service.ops.admin import create_admin_app

if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator

    from fastapi import FastAPI

    from service.settings import Settings


class BoundSockets(NamedTuple):
    """Listening sockets bound by a parent (service/api/processes.py), for one of several API processes.

    `admin` is None in every process but the first: the admin listener is bound once per host.
    """

    public: socket.socket
    admin: socket.socket | None


def serve(settings: Settings, *, sockets: BoundSockets | None = None) -> None:
    """Run the public and the admin listener in one process until SIGTERM/SIGINT.

    Two `uvicorn.Server`s share one event loop (uvloop) and one `Runtime` (service/api/state.py), each
    with its own socket, app and config. We chose two servers over one server with two sockets and
    a dispatch on the local port: the public port keeps its exact path (`ReceiverApp` straight from
    the guarded protocol, no dispatch per request), and each listener keeps its own connection limit,
    so a busy webhook port cannot starve `/metrics` or the reverse. Both use the guarded protocol.

    With `sockets`, the listeners serve on those instead of binding OA_HOST:OA_PORT and
    OA_ADMIN_HOST:OA_ADMIN_PORT themselves, and without `sockets.admin` there is no admin listener.

    uvicorn's servers each take over SIGINT/SIGTERM and would undo each other's handlers; here the
    process's signals are handled once and stop both: gracefully on the first, at once on a second
    SIGINT, as uvicorn does. The exit status is 0 after a signal, 1 if a listener could not start.
    """
    started = uvloop.run(_serve_both(settings, sockets))
    if not started:
        raise SystemExit(1)


async def _serve_both(settings: Settings, sockets: BoundSockets | None) -> bool:
    async with open_runtime(settings) as runtime:
        public = _Listener(
            _config(settings, create_app(settings, runtime=runtime), settings.host, settings.port)
        )
        admin = _Listener(
            _config(
                settings,
                create_admin_app(settings, runtime=runtime),
                settings.admin_host,
                settings.admin_port,
            )
        )
        bound: list[tuple[_Listener, socket.socket | None]] = [(public, None), (admin, None)]
        if sockets is not None:
            bound = [(public, sockets.public)]
            if sockets.admin is not None:
                bound.append((admin, sockets.admin))
        listeners = tuple(listener for listener, _ in bound)
        loop = asyncio.get_running_loop()
        _collect_less_often()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stop, listeners, signum)
        tasks = [asyncio.create_task(_run(listener, sock)) for listener, sock in bound]
        # Whichever stops (a signal, or a port already taken), the other stops too.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        _stop(listeners, signal.SIGTERM)
        await asyncio.gather(*tasks)
        return all(listener.started for listener in listeners)


# Python collects its youngest generation every 700 net container allocations, and a webhook allocates
# dozens: with this, 587,700 instead of 633,600 instructions per request (callgrind, 3,000 requests at
# 32 connections). Objects of a request are freed by reference counting, not by these passes, so
# collecting less often costs no memory but the rare cycle's. Start-up's objects are frozen: no pass
# need look at them again.
_YOUNG_COLLECTION_THRESHOLD = 20_000


def _collect_less_often() -> None:
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_THRESHOLD, older, oldest)


def _config(settings: Settings, app: FastAPI, host: str, port: int) -> uvicorn.Config:
    guards = {
        "max_head_bytes": settings.max_header_bytes,
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
    }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=type("Protocol", (GuardedHttpToolsProtocol,), guards),
        ws="none",
        access_log=settings.access_log,
        log_config=None,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keepalive_timeout_s,
        server_header=False,
        # We never read the client address; X-Forwarded-For parsing would only cost time.
        proxy_headers=False,
    )


async def _run(listener: uvicorn.Server, sock: socket.socket | None) -> None:
    # uvicorn logs why it cannot start (a port taken) and raises SystemExit; the other listener must
    # still stop and the runtime close, so the status is decided in `serve`.
    with contextlib.suppress(SystemExit):
        await listener.serve(sockets=None if sock is None else [sock])


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to `serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: `_serve_both` handles SIGINT and SIGTERM for both listeners."""
        yield


def _stop(listeners: tuple[uvicorn.Server, ...], signum: int) -> None:
    for listener in listeners:
        if listener.should_exit and signum == signal.SIGINT:
            listener.force_exit = True
        listener.should_exit = True
