"""The private parts of uvicorn, redis-py and arq that we use or override still exist, and still behave.

service/api/server.py subclasses uvicorn's `HttpToolsProtocol` (its own `data_received`, a
`cycle.transport` that joins a response's head to its body, and its own `_start_asgi_task`);
service/store/pipeline.py writes through a redis-py connection's `_writer`; workers/runtime/main.py
overrides arq's `Worker.start_jobs` (against arq's semaphore and job counter) and `record_health`;
service/store/queue.py writes arq's job encoding itself. pyproject.toml pins uvicorn and arq to the
minor version these tests cover (redis-py below 6, as arq needs), and make install installs the
locks. An upgrade that drops one of these names fails here, naming it; one that changes what they do
fails the behaviour tests below, instead of breaking the head/body guards, the claim path or every
job at run time.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from arq.jobs import deserialize_job, serialize_job
from arq.worker import Worker, func
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.api.app import ReceiverApp, create_app
from service.api.envelope import parse_envelope
from service.api.ingest import PATH
from service.api.server import GuardedHttpToolsProtocol
from service.api.signature import SIGNATURE_HEADER
from service.api.state import open_runtime
from service.store import queue
from service.store.ledger import Ledger
from tests.conftest import SECRET, envelope, make_settings, signed_headers
from tests.redis_server import free_port
from workers import Context, Event, on
from workers.runtime.main import build_worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis import Redis
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
    "_start_asgi_task",
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


async def test_a_redis_py_connection_still_writes_through_its_stream_writer(redis_url: str) -> None:
    """service/store/pipeline.py writes a batch with the connection's `_writer.writelines`, at once."""
    redis = queue.connect(redis_url, timeout_s=2, read_timeouts=False)
    connection = await redis.connection_pool.get_connection()
    try:
        writer = getattr(connection, "_writer", None)
        assert isinstance(writer, asyncio.StreamWriter), (
            f"redis-py {version('redis')} connections no longer keep a `_writer`: service/store/pipeline.py "
            "relies on it; re-read it before upgrading"
        )
        writer.writelines(connection.pack_commands([("PING",)]))
        assert await connection.read_response() == b"PONG"
    finally:
        await redis.connection_pool.release(connection)
        await redis.aclose()


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


# Behaviour: what we rely on, shown working (names alone prove little).


async def _until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `predicate` on the running loop until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_arq_decodes_and_runs_the_job_that_encode_job_writes(redis_url: str) -> None:
    """Arq's own Worker runs encode_job's bytes as process_event(id, type): try 1, enqueued at `et`."""
    now_ms = int(time.time() * 1000) - 5
    job = queue.encode_job("evt_encoded", "lead.paid", enqueue_ms=now_ms)
    # What arq's own enqueue would write for the same job decodes to the same definition.
    ours = deserialize_job(job, deserializer=queue.deserialize)
    arqs = deserialize_job(
        serialize_job(
            queue.JOB_FUNCTION, ("evt_encoded", "lead.paid"), {}, 1, now_ms, serializer=queue.serialize
        ),
        deserializer=queue.deserialize,
    )
    assert ours == arqs
    seen: list[tuple[str, str, int, datetime]] = []

    async def process_event(ctx: dict[str, Any], event_id: str, event_type: str) -> None:
        seen.append((event_id, event_type, ctx["job_try"], ctx["enqueue_time"]))

    redis = queue.connect_arq(redis_url, timeout_s=2)
    await redis.psetex(queue.job_key("evt_encoded"), 60_000, job)
    await redis.zadd(queue.QUEUE_NAME, {"evt_encoded": now_ms})
    worker = Worker(
        functions=[func(process_event, name=queue.JOB_FUNCTION)],
        redis_pool=redis,
        queue_name=queue.QUEUE_NAME,
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        keep_result=0,
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
    )
    try:
        async with asyncio.timeout(20):
            await worker.async_run()  # burst: returns once the queue is empty
    finally:
        await redis.aclose(close_connection_pool=True)  # arq's close() calls redis-py's deprecated close
    assert seen == [("evt_encoded", "lead.paid", 1, datetime.fromtimestamp(now_ms / 1000, tz=UTC))]
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)


async def test_start_jobs_keeps_arqs_semaphore_and_job_counter_in_step(
    redis_url: str, clean_registry: None
) -> None:
    """Our start_jobs never waits on arq's semaphore, never runs more than max_jobs, and frees every slot."""
    max_jobs, events = 2, 5
    release = asyncio.Event()
    running: list[str] = []
    most = 0

    @on("lead.created")
    async def hold(event: Event, ctx: Context) -> None:
        nonlocal most
        running.append(event.id)
        most = max(most, len(running))
        await release.wait()
        running.remove(event.id)

    settings = make_settings(redis_url, OA_WORKER_CONCURRENCY=max_jobs, OA_POLL_DELAY_S=0.01)
    ingest = queue.connect(redis_url, timeout_s=2)
    ledger = Ledger(ingest, queue_expiry_ms=60_000, retention_s=3600)
    for i in range(events):
        body = envelope(f"evt_sem_{i}", "lead.created")
        await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=int(time.time() * 1000))
    await ingest.aclose()
    redis = queue.connect_arq(redis_url, timeout_s=2)
    async with httpx.AsyncClient() as http:
        worker = build_worker(settings, redis, http=http, worker_id="pin:sem")
        permits = worker.sem._value  # arq: max_jobs + 1, one spare for its own poll loop
        run = asyncio.create_task(worker.async_run())
        try:
            # A start_jobs that waited on the semaphore would hang here, not merely run fewer.
            await _until(lambda: len(running) == max_jobs, timeout_s=10, what=f"{max_jobs} running handlers")
            assert worker.job_counter == max_jobs
            assert not worker.sem.locked()  # the poll loop can still go round while every slot is busy
            release.set()
            await _until(lambda: worker.jobs_complete == events, timeout_s=20, what=f"{events} finished jobs")
            await _until(lambda: worker.job_counter == 0, timeout_s=5, what="every slot freed")
        finally:
            release.set()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            await redis.aclose(close_connection_pool=True)
    assert most == max_jobs
    assert worker.sem._value == permits  # each claimed job gave its permit back, none twice


class _Wire(asyncio.Transport):
    """The connection as the protocol sees it: every write kept, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.served_by: set[str] = set()  # what the request tasks ran: uvicorn's run_asgi, or ours

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Keep what the server sends."""
        self.writes.append(bytes(data))

    def close(self) -> None:
        """Note the close."""
        self.closed = True

    def is_closing(self) -> bool:
        """Whether the server closed it."""
        return self.closed

    def pause_reading(self) -> None:
        """Flow control: nothing to pause here."""

    def resume_reading(self) -> None:
        """Flow control: nothing to resume here."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        """Addresses as a TCP socket gives them; no TLS."""
        return {"peername": ("127.0.0.1", 50_000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


class _Echo:
    """An app that reads the whole body, then answers with the method, the path and the body's size."""

    def __init__(self) -> None:
        self.in_receive = False  # true only while it waits for bytes that have not come yet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request."""
        assert scope["type"] == "http"
        size, more = 0, True
        while more:
            self.in_receive = True
            message = await receive()
            self.in_receive = False
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = f"{scope['method']} {scope['path']} {size}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _coroutine_name(task: asyncio.Task[Any]) -> str:
    coroutine = task.get_coro()
    assert inspect.iscoroutine(coroutine)
    return f"{coroutine.cr_code.co_filename.rsplit('/', 1)[-1]}:{coroutine.__qualname__}"


async def _exchange(
    protocol_class: type[HttpToolsProtocol], chunks: list[bytes], *, webhook: ReceiverApp | None = None
) -> _Wire:
    """Feed `chunks` to a new connection of `protocol_class`, each once the app waits for more or is done.

    The app is `_Echo`, or with `webhook`, our own app, whose webhook needs Redis to answer.
    """
    app = _Echo()
    # As service/api/listeners.py configures it: no proxy-headers middleware around the app.
    config = uvicorn.Config(webhook or app, ws="none", log_config=None, proxy_headers=webhook is None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
    wire = _Wire()
    protocol.connection_made(wire)
    try:
        for chunk in chunks:
            protocol.data_received(chunk)
            wire.served_by |= {_coroutine_name(task) for task in state.tasks}
            # The app's cycles run (a pipelined one is started by the one before) until it needs bytes.
            if webhook is None:
                await _until(lambda: not state.tasks or app.in_receive, timeout_s=5, what="the app to answer")
            else:  # whether it waits or not, the same bytes come out; this only orders them as a client would
                await asyncio.sleep(0.05)
        await _until(lambda: not state.tasks, timeout_s=5, what="every response")
    finally:
        protocol.connection_lost(None)
    return wire


_GET = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
_POST_HEAD = b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
TRAFFIC = {
    "one request": [_GET],
    "a head split into 7-byte reads": [_GET[i : i + 7] for i in range(0, len(_GET), 7)],
    "two pipelined requests in one read": [_GET + _GET.replace(b"/a", b"/c")],
    "a body in two reads": [_POST_HEAD + b"\r\n01234", b"56789"],
    "expect 100-continue": [_POST_HEAD + b"expect: 100-continue\r\n\r\n", b"0123456789"],
    "a chunked body": [
        b"POST /d HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n01234\r\n",
        b"0\r\n\r\n",
    ],
    "HTTP/1.0": [b"GET /e HTTP/1.0\r\n\r\n"],
    "connection: close": [b"GET /f HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
    "HEAD": [b"HEAD /g HTTP/1.1\r\nhost: x\r\n\r\n"],
    "an upgrade with ws off": [
        b"GET /h HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    ],
}


@pytest.mark.parametrize("traffic", TRAFFIC)
async def test_our_data_received_answers_valid_http_as_uvicorns_does(traffic: str) -> None:
    """Our data_received replaces uvicorn's: for valid HTTP, the same bytes out and the same closes."""
    stock = await _exchange(HttpToolsProtocol, TRAFFIC[traffic])
    guarded = await _exchange(GuardedHttpToolsProtocol, TRAFFIC[traffic])
    assert stock.writes, "uvicorn answered nothing: the exchange did not run"
    assert b"".join(guarded.writes) == b"".join(stock.writes)
    assert guarded.closed == stock.closed


async def test_uvicorn_writes_a_response_through_cycle_transport() -> None:
    """Uvicorn sends head and body as two writes through `cycle.transport`; ours, set there, joins them."""
    stock = await _exchange(HttpToolsProtocol, [_GET])
    guarded = await _exchange(GuardedHttpToolsProtocol, [_GET])
    assert [w.split(b"\r\n", 1)[0] for w in stock.writes] == [b"HTTP/1.1 200 OK", b"GET /a 0"]
    assert guarded.writes == [b"".join(stock.writes)], (
        "uvicorn no longer writes a response through cycle.transport: service/api/server.py's "
        "_HeadJoinsBody sees no write"
    )


def _webhook_post(body: bytes, *, head: bytes = b"", secret: str = SECRET, version: bytes = b"1.1") -> bytes:
    """A signed webhook request, with `head`'s extra header lines.

    A `transfer-encoding` in `head` replaces the content-length (the body must then be chunked already).
    """
    signature = signed_headers(body, secret)[SIGNATURE_HEADER].encode()
    length = b"" if b"transfer-encoding" in head else b"content-length: %d\r\n" % len(body)
    return (
        b"POST "
        + PATH.encode()
        + b" HTTP/"
        + version
        + b"\r\nhost: x\r\ncontent-type: application/json\r\n"
        + SIGNATURE_HEADER.encode()
        + b": "
        + signature
        + b"\r\n"
        + length
        + head
        + b"\r\n"
        + body
    )


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


_EVENT = envelope("evt_wire", "lead.paid", lead_id=7)
_ACCEPTED = _webhook_post(_EVENT)
_LARGE = b'{"id": "evt_large", "type": "lead.paid", "payload": {"note": "' + b"x" * 2000 + b'"}}'
WEBHOOK_TRAFFIC = {
    "accepted": [_ACCEPTED],
    "a redelivery, pipelined behind the first": [_ACCEPTED + _ACCEPTED],
    "a body in two reads": [_ACCEPTED[:-10], _ACCEPTED[-10:]],
    "expect 100-continue": [
        _ACCEPTED[: -len(_EVENT)].replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n"),
        _EVENT,
    ],
    "a chunked body": [_webhook_post(_chunked(_EVENT), head=b"transfer-encoding: chunked\r\n")],
    "HTTP/1.0": [_webhook_post(_EVENT, version=b"1.0")],
    "connection: close": [_webhook_post(_EVENT, head=b"connection: close\r\n")],
    "a bad signature": [_webhook_post(_EVENT, secret="whsec_not_the_configured_one_00")],
    "malformed JSON": [_webhook_post(b'{"id": "evt_bad",')],
    "an invalid envelope": [_webhook_post(b'{"id": "evt_bad", "type": "lead.paid"}')],
    "a declared body too large": [
        _ACCEPTED.replace(b"content-length: %d" % len(_EVENT), b"content-length: 5000")
    ],
    "a streamed body too large": [
        _webhook_post(_chunked(_LARGE), head=b"transfer-encoding: chunked\r\n")[:-5],
    ],
    "a query string": [_ACCEPTED.replace(PATH.encode(), PATH.encode() + b"?from=test", 1)],
}


_RUN_ASGI = "httptools_impl.py:RequestResponseCycle.run_asgi"


@pytest.mark.parametrize("traffic", WEBHOOK_TRAFFIC)
@pytest.mark.parametrize("redis_up", [True, False], ids=["redis up", "redis down"])
async def test_the_webhook_served_straight_from_our_protocol_is_what_asgi_would_send(
    redis_url: str, redis_sync: Redis, traffic: str, *, redis_up: bool
) -> None:
    """service/api/direct.py's answer to a webhook is, byte for byte, uvicorn's to our ASGI app."""
    url = redis_url if redis_up else f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(url, OA_MAX_BODY_BYTES=1024, OA_REDIS_TIMEOUT_S=0.5)
    wires: list[_Wire] = []
    async with open_runtime(settings) as runtime:
        for protocol_class in (HttpToolsProtocol, GuardedHttpToolsProtocol):
            redis_sync.flushdb()
            app = create_app(settings, runtime=runtime)
            assert isinstance(app, ReceiverApp)
            app.state.runtime = runtime  # what its lifespan would set
            wires.append(await _exchange(protocol_class, WEBHOOK_TRAFFIC[traffic], webhook=app))
    stock, direct = wires
    assert stock.writes, "uvicorn answered nothing: the exchange did not run"
    assert b"".join(direct.writes) == b"".join(stock.writes)
    assert direct.closed == stock.closed
    assert stock.served_by == {_RUN_ASGI}
    assert direct.served_by == {"direct.py:run"}


async def test_the_webhook_answer_leaves_in_one_write(redis_url: str) -> None:
    """Over ASGI uvicorn writes the head and the body apart; served straight, the answer is one write."""
    settings = make_settings(redis_url)
    async with open_runtime(settings) as runtime:
        app = create_app(settings, runtime=runtime)
        assert isinstance(app, ReceiverApp)
        app.state.runtime = runtime
        stock = await _exchange(HttpToolsProtocol, [_webhook_post(envelope("evt_w1"))], webhook=app)
        direct = await _exchange(GuardedHttpToolsProtocol, [_webhook_post(envelope("evt_w2"))], webhook=app)
    assert [w.split(b"\r\n", 1)[0] for w in stock.writes] == [
        b"HTTP/1.1 202 Accepted",
        b'{"status":"accepted","id":"evt_w1"}',
    ]
    assert len(direct.writes) == 1
    assert direct.writes[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert direct.writes[0].endswith(b'\r\n\r\n{"status":"accepted","id":"evt_w2"}')
