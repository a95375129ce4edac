"""OA_REDIS_MIN_REPLICAS beyond ingest: readiness tells when no replica confirms, replays and purges wait."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from service.api.envelope import parse_envelope
from service.ops.admin import create_admin_app
from service.store import queue
from service.store.batching import NotReplicated
from service.store.dlq import DeadLetters
from service.store.ledger import Ledger, event_key
from service.store.replay import Replayer, ReplayStatus
from tests.conftest import SECRET, envelope, make_settings
from tests.processes import Service, service_env, wait_until_ready
from tests.redis_server import free_port
from tests.sentinel_topology import MASTER, Topology
from workers import Context, Event, PermanentError, on
from workers.runtime.job import WorkerState, process_event
from workers.runtime.journal import Journal
from workers.runtime.retry import Backoff

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.settings import Settings
    from tests.redis_server import RedisServer

BIN = Path(sys.executable).parent
TIMEOUT_S = 1.0
TOKEN = "console-token-0123456789abcdef"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A primary, two replicas and three Sentinels for the module."""
    running = Topology(tmp_path_factory.mktemp("replicas"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@contextmanager
def frozen_replicas(topology: Topology) -> Iterator[RedisServer]:
    """Both replicas stopped (SIGSTOP): connected, but they acknowledge nothing; yields the primary."""
    primary = topology.wait_for_replicas()
    replicas = [s for s in topology.servers if s is not primary]
    for replica in replicas:
        replica.signal(signal.SIGSTOP)
    try:
        yield primary
    finally:
        for replica in replicas:
            replica.signal(signal.SIGCONT)


def _env(topology: Topology) -> dict[str, str]:
    return topology.settings(OA_REDIS_MIN_REPLICAS="1", OA_REDIS_TIMEOUT_S=str(TIMEOUT_S))


def _settings(topology: Topology, **overrides: object) -> Settings:
    return make_settings(
        topology.url,
        OA_REDIS_SENTINELS=topology.sentinel_addresses,
        OA_REDIS_SENTINEL_MASTER=MASTER,
        OA_REDIS_TIMEOUT_S=TIMEOUT_S,
        OA_REDIS_MIN_REPLICAS=1,
        **overrides,
    )


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[Redis]:
    """A client of the current primary, through the Sentinels."""
    client = queue.connect(topology.url, timeout_s=TIMEOUT_S, sentinel=_settings(topology).sentinel)
    yield client
    await client.aclose()


async def _finished(topology: Topology, redis: Redis, outcomes: dict[str, str]) -> None:
    """Accept each event id and run its job: `lead.created` ends done, `lead.paid` dead."""

    @on("lead.created")
    async def fine(event: Event, ctx: Context) -> None: ...

    @on("lead.paid")
    async def refuse(event: Event, ctx: Context) -> None:
        raise PermanentError("refused")

    settings = _settings(topology)
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=3600)
    arq = queue.connect_arq(topology.url, timeout_s=TIMEOUT_S, sentinel=settings.sentinel)
    try:
        async with httpx.AsyncClient() as http:
            state = WorkerState(
                settings=settings,
                backoff=Backoff(0, 0),
                http=http,
                redis=arq,
                journal=Journal(arq, retention_s=3600, queue_expiry_ms=60_000),
            )
            for event_id, state_wanted in outcomes.items():
                event_type = "lead.created" if state_wanted == "done" else "lead.paid"
                body = envelope(event_id, event_type)
                await ledger.accept(
                    parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 10**6
                )
                await process_event({"oa": state, "redis": arq}, event_id, event_type)
                state_now = await redis.hget(event_key(event_id), "state")  # type: ignore[misc]
                assert state_now == state_wanted.encode()
    finally:
        await arq.aclose(close_connection_pool=True)


def _on_a_replica(topology: Topology, primary: RedisServer, key: str, field: str) -> set[bytes | None]:
    """`field` of hash `key` as each replica has it."""
    values = set()
    for server in topology.servers:
        if server is not primary:
            with server.client() as replica:
                values.add(replica.hget(key, field))
    return values


async def test_readyz_is_503_with_the_reason_while_no_replica_confirms(topology: Topology) -> None:
    """/readyz: 200 while a replica confirms writes; while none does, 503 `not_replicated`, naming why."""
    app = create_admin_app(_settings(topology))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http,
    ):
        topology.wait_for_replicas()
        ready = await http.get("/readyz")
        with frozen_replicas(topology):
            frozen = await http.get("/readyz")
        topology.wait_for_replicas()
        again = await http.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert (frozen.status_code, frozen.json()["error"]) == (503, "not_replicated")
    assert "0 of 1 replicas" in frozen.json()["detail"]
    assert "OA_REDIS_MIN_REPLICAS=1" in frozen.json()["detail"]
    assert frozen.headers["retry-after"] == "5"
    assert again.status_code == 200


def test_healthcheck_api_says_not_ready_and_why(topology: Topology, tmp_path: Path) -> None:
    """`healthcheck api`: alive (0) but 'not ready' and why; with --ready, 1 until a replica confirms."""
    port = free_port()
    service = Service("api", service_env(topology.url, SECRET, port, **_env(topology)), tmp_path / "api.log")
    service.start()

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "oa-webhooks"), "healthcheck", "api", *extra]
        return subprocess.run(
            command, env=service.env, capture_output=True, text=True, timeout=30, check=False
        )

    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        topology.wait_for_replicas()
        ready, ready_strict = check(), check("--ready")
        with frozen_replicas(topology):
            frozen, frozen_strict = check(), check("--ready")
    finally:
        service.stop()
    assert (ready.returncode, ready_strict.returncode) == (0, 0), ready.stderr
    assert ready.stdout.strip() == "ready"
    assert (frozen.returncode, frozen_strict.returncode) == (0, 1), frozen.stderr
    assert frozen.stdout.startswith("alive, not ready: ")
    assert "0 of 1 replicas" in frozen.stdout
    assert frozen_strict.stdout == frozen.stdout


@pytest.mark.usefixtures("clean_registry")
async def test_a_replay_and_a_purge_say_done_only_once_a_replica_holds_them(
    topology: Topology, redis: Redis
) -> None:
    """Replay and purge return once a replica holds them; while none confirms, they raise NotReplicated."""
    await _finished(
        topology, redis, {"r_done_1": "done", "r_done_2": "done", "r_dead_1": "dead", "r_dead_2": "dead"}
    )
    replayer = Replayer(redis, queue_expiry_ms=60_000, min_replicas=1, timeout_s=TIMEOUT_S)
    dlq = DeadLetters(redis, retention_s=3600, queue_expiry_ms=60_000, min_replicas=1, timeout_s=TIMEOUT_S)
    with frozen_replicas(topology):
        with pytest.raises(NotReplicated, match=r"replay of 'r_done_1': 0 of 1 replicas confirmed it"):
            await replayer.replay("r_done_1")
        with pytest.raises(NotReplicated, match=r"purge of 'r_dead_1': 0 of 1 replicas confirmed it"):
            await dlq.purge("r_dead_1")
    primary = topology.wait_for_replicas()
    assert (await replayer.replay("r_done_2")).status is ReplayStatus.REPLAYED
    assert await dlq.purge("r_dead_2")
    # WAIT 1 answered: at least one replica holds each write already, no waiting for it here.
    assert b"queued" in _on_a_replica(topology, primary, event_key("r_done_2"), "state")
    assert b"purged" in _on_a_replica(topology, primary, event_key("r_dead_2"), "state")


@pytest.mark.usefixtures("clean_registry")
async def test_cli_replay_and_purge_fail_while_no_replica_confirms(topology: Topology, redis: Redis) -> None:
    """`events replay` and `dlq purge` exit 1 saying the replicas did not confirm, instead of 'replayed'."""
    await _finished(topology, redis, {"c_done": "done", "c_dead": "dead"})
    env = service_env(topology.url, SECRET, free_port(), **_env(topology))
    with frozen_replicas(topology):
        said = [
            subprocess.run(
                [str(BIN / "oa-webhooks"), *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            for command in (("events", "replay", "c_done"), ("dlq", "purge", "c_dead"))
        ]
    for answer in said:
        assert answer.returncode == 1, (answer.stdout, answer.stderr)
        assert "0 of 1 replicas confirmed it" in answer.stderr
        assert "OA_REDIS_MIN_REPLICAS" in answer.stderr
        assert "Traceback" not in answer.stderr


@pytest.mark.usefixtures("clean_registry")
async def test_console_replay_says_the_replicas_did_not_confirm_it(topology: Topology, redis: Redis) -> None:
    """A console replay while no replica confirms: a 503 page that says so, not 'Replayed'."""
    await _finished(topology, redis, {"w_done": "done"})
    app = create_admin_app(_settings(topology, OA_ADMIN_TOKEN=TOKEN))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http,
    ):
        assert (await http.post("/console/login", data={"token": TOKEN})).status_code == 303
        page = await http.get("/console/events/w_done")
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert csrf, page.text
        with frozen_replicas(topology):
            answer = await http.post("/console/replay/w_done", data={"csrf": csrf[1]})
    assert answer.status_code == 503
    assert "not confirmed by the replicas" in answer.text
    assert "0 of 1 replicas confirmed it" in answer.text
