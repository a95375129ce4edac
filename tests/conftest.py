"""Shared fixtures: a real redis-server per test session, the app in-process, and signing helpers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from redis import Redis

from service.api.app import create_app
from service.api.signature import SIGNATURE_HEADER, sign
from service.ops.admin import create_admin_app
from service.settings import Settings
from service.store import queue
from tests.processes import Service, Stack, service_env, wait_until_ready
from tests.redis_server import RedisServer, free_port
from workers import registry
from workers.runtime.job import WorkerState
from workers.runtime.journal import Journal
from workers.runtime.retry import Backoff

if TYPE_CHECKING:
    from tests.raw_http import Api

SECRET = "whsec_test_secret_0123456789"
ENDPOINT = "/webhooks/offerte-adviseur"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on a free port for the whole session (tests that stop Redis start their own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[Redis]:
    """A synchronous client for assertions about what is in Redis."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for tests, built without `.env`; overrides are named as environment variables (`OA_...`)."""
    values: dict[str, Any] = {"OA_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url, "_env_file": None}
    for name, value in overrides.items():
        known = name in ("OA_WEBHOOK_SECRET", "REDIS_URL")
        values[name if known else name.removeprefix("OA_").lower()] = value
    settings = Settings(**values)
    unknown = (
        {k.removeprefix("OA_").lower() for k in overrides}
        - set(Settings.model_fields)
        - {"webhook_secret", "redis_url"}
    )
    assert not unknown, f"no such settings: {unknown}"
    return settings


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Default test settings against the session Redis."""
    return make_settings(redis_url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client wired to the app in-process, with its lifespan (and Redis connection) running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture
async def admin_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client wired to the admin app (/metrics, /readyz) in-process, with its lifespan running."""
    app = create_admin_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            yield http


CONSOLE_TOKEN = "console-token-0123456789abcdef"


@pytest.fixture
async def console(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The admin app in-process with OA_ADMIN_TOKEN set; a client that does not follow redirects."""
    app = create_admin_app(make_settings(redis_url, OA_ADMIN_TOKEN=CONSOLE_TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            yield http


async def sign_in_console(http: httpx.AsyncClient) -> str:
    """Sign in to the console; return the session's CSRF token, read from the sign-out form."""
    answer = await http.post("/console/login", data={"token": CONSOLE_TOKEN})
    assert answer.status_code == 303
    page = await http.get("/console/events")
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match, page.text
    return match[1]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Handlers registered by a test are forgotten after it."""
    saved = dict(registry._handlers)
    registry._handlers.clear()
    yield
    registry._handlers.clear()
    registry._handlers.update(saved)


@pytest.fixture
async def worker_ctx(redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Arq's ctx as the worker builds it, with retries that wait no time."""
    settings: Settings = make_settings(redis_url, OA_RETRY_INITIAL_S=0, OA_MAX_TRIES=3)
    redis = queue.connect_arq(redis_url, timeout_s=2)
    async with httpx.AsyncClient() as http:
        state = WorkerState(
            settings=settings,
            backoff=Backoff(0, 0),
            http=http,
            redis=redis,
            journal=Journal(
                redis, retention_s=settings.retention_s, queue_expiry_ms=settings.queue_expiry_ms
            ),
        )
        yield {"oa": state, "redis": redis}
    await redis.aclose(close_connection_pool=True)


def envelope(event_id: str = "evt_1", event_type: str = "lead.created", **payload: Any) -> bytes:
    """A compact JSON body for an event."""
    return json.dumps({"id": event_id, "type": event_type, "payload": payload or {"lead_id": 1}}).encode()


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """Headers with a valid signature for `body`."""
    return {"content-type": "application/json", SIGNATURE_HEADER: sign(body, secret.encode())}


TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """The compose `api` and `worker` commands as real processes (not started: add handlers first)."""
    running = Stack(tmp_path, redis_url, SECRET)
    yield running
    running.close()


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API process for the module, with 1-second head and body timeouts so stalls end fast."""
    port = free_port()
    env = service_env(redis_server.url, SECRET, port, OA_HEADER_TIMEOUT_S="1", OA_BODY_TIMEOUT_S="1")
    service = Service("api", env, Path(tmp_path_factory.mktemp("api")) / "api.log")
    service.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        from tests.raw_http import Api  # noqa: PLC0415 - raw_http imports this module

        yield Api(port, service)
    finally:
        service.stop()
