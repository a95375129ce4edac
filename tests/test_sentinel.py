"""Redis with Sentinel: clients follow the primary, and WAIT holds back 202 until replicas have the event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from service.api.app import create_app
from service.api.envelope import parse_envelope
from service.settings import Settings, SettingsError, load_settings
from service.store import queue
from service.store.ledger import Ledger, Outcome, event_key
from tests.conftest import ENDPOINT, envelope, make_settings, signed_headers
from tests.processes import wait_for
from tests.sentinel_topology import MASTER, Topology

BIN = Path(sys.executable).parent
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A primary, two replicas and three Sentinels for the module."""
    running = Topology(tmp_path_factory.mktemp("sentinel"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _settings(topology: Topology, **overrides: object) -> Settings:
    return make_settings(
        topology.url,
        OA_REDIS_SENTINELS=topology.sentinel_addresses,
        OA_REDIS_SENTINEL_MASTER=MASTER,
        OA_REDIS_TIMEOUT_S=TIMEOUT_S,
        **overrides,
    )


def test_sentinel_settings_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Sentinels need a primary name, addresses must be host:port, and unix:// cannot go with them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "whsec_test_secret_0123456789")
    monkeypatch.setenv("OA_REDIS_SENTINELS", "127.0.0.1:26379, [::1]:26380")
    with pytest.raises(SettingsError, match="OA_REDIS_SENTINEL_MASTER"):
        load_settings()
    monkeypatch.setenv("OA_REDIS_SENTINEL_MASTER", "oa")
    sentinel = load_settings().sentinel
    assert sentinel is not None
    assert sentinel.addresses == (("127.0.0.1", 26379), ("::1", 26380))
    monkeypatch.setenv("OA_REDIS_SENTINELS", "sentinel-1")
    with pytest.raises(SettingsError, match="OA_REDIS_SENTINELS: 'sentinel-1' is not host:port"):
        load_settings()
    monkeypatch.setenv("OA_REDIS_SENTINELS", "127.0.0.1:26379")
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock")
    with pytest.raises(SettingsError, match="redis:// or rediss://"):
        load_settings()


async def _write_until_it_works(client: AsyncRedis, key: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.set(key, 1)
        except RedisError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            return


async def test_clients_follow_a_failover(topology: Topology) -> None:
    """After SENTINEL FAILOVER, the same API and worker clients write to the new primary, packed in C."""
    # Both clients connected to the old primary first, so the READONLY path is taken.
    sentinel = _settings(topology).sentinel
    api = queue.connect(topology.url, timeout_s=TIMEOUT_S, sentinel=sentinel)
    worker = queue.connect_arq(topology.url, timeout_s=TIMEOUT_S, sentinel=sentinel)
    try:
        before = topology.primary_port()
        await api.set("before", 1)
        await worker.set("before_arq", 1)
        async with api.client() as conn:  # the connection class the pool builds
            await conn.ping()
            assert isinstance(conn.connection, queue.PackedInC)
            assert conn.connection.port == before
        with topology.sentinels[0].client() as client:
            client.sentinel_failover(MASTER)
        wait_for(lambda: topology.primary_port() != before, timeout_s=15, what="the failover")
        after = topology.primary_port()
        # Until the old primary is told to follow the new one it still takes writes, which it then
        # drops (asynchronous replication: what OA_REDIS_MIN_REPLICAS guards ingest against). Our
        # clients still hold connections to it; their next write meets READONLY and reconnects.
        wait_for(lambda: topology.role_of(before) == b"slave", timeout_s=15, what="the old primary to follow")
        await _write_until_it_works(api, "after", timeout_s=10)
        await _write_until_it_works(worker, "after_arq", timeout_s=10)
        with topology.server_on(after).client() as primary:
            assert primary.role()[0] == b"master"
            assert primary.get("after") == b"1"
            assert primary.get("after_arq") == b"1"
    finally:
        await api.aclose()
        await worker.aclose(close_connection_pool=True)


async def test_one_wait_per_batch_and_replicas_hold_every_acknowledged_event(topology: Topology) -> None:
    """32 concurrent accepts with 2 replicas required: 2 batches, 2 WAITs, both replicas hold all 32."""
    settings = _settings(topology)
    redis = queue.connect(
        topology.url,
        timeout_s=TIMEOUT_S,
        sentinel=settings.sentinel,
        read_timeouts=False,
        health_checks=False,
    )
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=3600, timeout_s=TIMEOUT_S, min_replicas=2)
    primary = topology.wait_for_replicas()
    now_ms = time.time_ns() // 1_000_000
    try:
        first = envelope("wait_first")  # loads the script on this primary (NOSCRIPT costs a second WAIT)
        await ledger.accept(parse_envelope(first), first, secret_index=0, now_ms=now_ms)
        with primary.client() as client:
            waits_before = int(client.info("commandstats")["cmdstat_wait"]["calls"])
        bodies = [envelope(f"wait_{i}") for i in range(32)]
        outcomes = await asyncio.gather(
            *(ledger.accept(parse_envelope(b), b, secret_index=0, now_ms=now_ms) for b in bodies)
        )
    finally:
        await redis.aclose()
    assert [o.outcome for o in outcomes] == [Outcome.ACCEPTED] * 32
    with primary.client() as client:
        assert int(client.info("commandstats")["cmdstat_wait"]["calls"]) - waits_before == 2
    for server in topology.servers:
        if server is not primary:
            with server.client() as replica:
                assert all(replica.exists(event_key(f"wait_{i}")) for i in range(32))


@pytest.fixture
async def http_min_replicas(topology: Topology) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, through Sentinel, with OA_REDIS_MIN_REPLICAS=1."""
    app = create_app(_settings(topology, OA_REDIS_MIN_REPLICAS=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_frozen_replicas_mean_503_never_202(
    topology: Topology, http_min_replicas: httpx.AsyncClient
) -> None:
    """Primary's replicas frozen: new events get 503 within the timeout + 1 s; a redelivery gets 200."""
    topology.wait_for_replicas()
    body = envelope("frozen_0")
    assert (
        await http_min_replicas.post(ENDPOINT, content=body, headers=signed_headers(body))
    ).status_code == 202
    primary = topology.server_on(topology.primary_port())
    replicas = [s for s in topology.servers if s is not primary]
    for replica in replicas:
        replica.signal(signal.SIGSTOP)
    try:
        bodies = [envelope(f"frozen_{i}") for i in range(1, 6)]
        started = time.monotonic()
        answers = await asyncio.gather(
            *(http_min_replicas.post(ENDPOINT, content=b, headers=signed_headers(b)) for b in bodies)
        )
        elapsed_s = time.monotonic() - started
    finally:
        for replica in replicas:
            replica.signal(signal.SIGCONT)
    assert [a.status_code for a in answers] == [503] * 5
    assert all(a.headers["retry-after"] == "5" for a in answers)
    assert elapsed_s < TIMEOUT_S + 1
    # Stored on the primary all the same: once the replicas catch up, redelivery is a duplicate.
    for body in bodies:
        again = await http_min_replicas.post(ENDPOINT, content=body, headers=signed_headers(body))
        assert again.status_code == 200, again.text


def test_operator_commands_follow_the_primary(topology: Topology, tmp_path: Path) -> None:
    """`oa-webhooks status --json` and `dlq list --json` reach Redis through the Sentinels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env.update(
        {
            **_settings_env(topology),
            "OA_WEBHOOK_SECRET": "whsec_test_secret_0123456789",
        }
    )
    status = subprocess.run(
        [BIN / "oa-webhooks", "status", "--json"], env=env, cwd=tmp_path, capture_output=True, check=False
    )
    assert status.returncode in {0, 1}, status.stderr  # 1: no live worker; 2 would be "Redis unreachable"
    with topology.server_on(topology.primary_port()).client() as primary:
        queued = primary.zcard(queue.QUEUE_NAME)
    assert queued > 0  # the earlier tests' events
    assert json.loads(status.stdout)["queued"] == queued
    dlq = subprocess.run(
        [BIN / "oa-webhooks", "dlq", "list", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert dlq.returncode == 0, dlq.stderr
    assert json.loads(dlq.stdout) == []


def _settings_env(topology: Topology) -> dict[str, str]:
    return topology.settings(OA_REDIS_TIMEOUT_S=str(TIMEOUT_S))
