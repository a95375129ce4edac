"""The private parts of uvicorn and arq that we subclass or override still exist.

service/api/server.py subclasses uvicorn's `HttpToolsProtocol` and workers/runtime/main.py overrides arq's
`Worker.start_jobs` and `record_health`. pyproject.toml pins both to the minor version these
tests cover; an upgrade that drops one of these names fails here, naming it, instead of breaking
the head/body guards or the claim path at run time.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from importlib.metadata import version
from typing import TYPE_CHECKING

import httpx
import uvicorn
from arq.worker import Worker
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.store import queue
from tests.conftest import make_settings
from workers.runtime.main import build_worker

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

# What GuardedHttpToolsProtocol calls or overrides on uvicorn's class.
PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "send_400_response",
    "on_message_begin",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_message_complete",
    "_unset_keepalive_if_required",
    "_unsupported_upgrade_warning",
)
# What it reads on a live connection: on the protocol, its cycle and the server state.
PROTOCOL_ATTRIBUTES = ("parser", "cycle", "flow", "server_state", "transport", "loop")
CYCLE_ATTRIBUTES = ("keep_alive", "more_body", "response_complete", "response_started", "transport")
SERVER_STATE_ATTRIBUTES = ("default_headers",)
# What _Worker, _teardown and _Stopper (workers/runtime/main.py) use of arq's Worker.
WORKER_METHODS = (
    "start_jobs",
    "record_health",
    "run_job",
    "async_run",
    "handle_sig",
    "handle_sig_wait_for_completion",
    "_release_sem_dec_counter_on_complete",
    "_poll_iteration",
    "heart_beat",
)
WORKER_ATTRIBUTES = (
    "max_jobs",
    "job_counter",
    "sem",
    "loop",
    "tasks",
    "pool",
    "ctx",
    "main_task",
    "in_progress_timeout_s",
    "health_check_interval",
    "_last_health_check",
    "jobs_complete",
    "jobs_failed",
    "jobs_retried",
)


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


def _explain(owner: str, missing: list[str], user: str) -> str:
    return f"{owner} no longer has {', '.join(missing)}: {user} relies on it; re-read it before upgrading"


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_uvicorn_protocol_still_has_what_the_guards_use() -> None:
    """Every uvicorn name service/api/server.py relies on exists, checked on a live connection."""
    uvicorn_version = version("uvicorn")
    assert not _missing(HttpToolsProtocol, PROTOCOL_METHODS), _explain(
        f"uvicorn {uvicorn_version} HttpToolsProtocol",
        _missing(HttpToolsProtocol, PROTOCOL_METHODS),
        "service/api/server.py",
    )
    config = uvicorn.Config(_hello, ws="none", log_config=None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    protocol = HttpToolsProtocol(config=config, server_state=state, app_state={}, _loop=loop)
    ours, theirs = socket.socketpair()
    theirs.settimeout(0)  # non-blocking, for the loop's sock_* calls
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
    try:
        await loop.sock_sendall(theirs, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = await asyncio.wait_for(loop.sock_recv(theirs, 1024), 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        for owner, obj, names in (
            (f"uvicorn {uvicorn_version} HttpToolsProtocol", protocol, PROTOCOL_ATTRIBUTES),
            (f"uvicorn {uvicorn_version} RequestResponseCycle", protocol.cycle, CYCLE_ATTRIBUTES),
            (f"uvicorn {uvicorn_version} ServerState", state, SERVER_STATE_ATTRIBUTES),
        ):
            assert not _missing(obj, names), _explain(owner, _missing(obj, names), "service/api/server.py")
        assert isinstance(protocol.cycle, RequestResponseCycle)
    finally:
        transport.close()
        theirs.close()


async def test_arq_worker_still_has_what_our_worker_overrides(redis_url: str) -> None:
    """Every arq Worker name that workers/runtime/main.py uses exists; the poll loop calls our overrides."""
    arq_version = version("arq")
    settings = make_settings(redis_url)
    redis = queue.connect_arq(redis_url, timeout_s=2)
    try:
        async with httpx.AsyncClient() as http:
            worker = build_worker(settings, redis, http=http, worker_id="pin:1")
        for owner, obj, names in (
            (f"arq {arq_version} Worker", Worker, WORKER_METHODS),
            (f"arq {arq_version} Worker instance", worker, WORKER_ATTRIBUTES),
        ):
            assert not _missing(obj, names), _explain(owner, _missing(obj, names), "workers/runtime/main.py")
        poll = inspect.getsource(Worker._poll_iteration)
        assert "self.start_jobs(" in poll, f"arq {arq_version} no longer starts jobs through start_jobs"
        assert "self.heart_beat(" in poll, f"arq {arq_version} no longer beats from the poll loop"
        assert "self.record_health(" in inspect.getsource(Worker.heart_beat), (
            f"arq {arq_version} no longer writes health through record_health"
        )
    finally:
        await redis.aclose(close_connection_pool=True)
