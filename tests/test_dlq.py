"""Dead letters in-process: listing, and purge keeping a dedup tombstone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service.store import queue
from service.store.dlq import DeadLetters
from service.store.ledger import DEAD_KEY, event_key
from tests.conftest import ENDPOINT, envelope, signed_headers
from workers import Context, Event, PermanentError, on
from workers.runtime.job import process_event

pytestmark = pytest.mark.usefixtures("clean_registry")


@pytest.fixture
async def dlq(redis_url: str) -> AsyncIterator[DeadLetters]:
    """The dead-letter operations on the test Redis."""
    redis: AsyncRedis = queue.connect(redis_url, timeout_s=2)
    yield DeadLetters(redis, retention_s=3600, queue_expiry_ms=60_000)
    await redis.aclose()


async def test_purge_drops_the_body_but_keeps_dedup(
    client: httpx.AsyncClient, worker_ctx: dict[str, object], dlq: DeadLetters, redis_sync: Redis
) -> None:
    """A purged dead letter loses body and errors; a redelivery of its id is still a 200 duplicate."""

    @on("lead.paid")
    async def refuse(event: Event, ctx: Context) -> None:
        raise PermanentError("no")

    body = envelope("evt_purge", "lead.paid")
    assert (await client.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code == 202
    await process_event(worker_ctx, "evt_purge", "lead.paid")
    letters = await dlq.letters()
    assert [(x.id, x.attempts, (x.last_error or {}).get("message")) for x in letters] == [
        ("evt_purge", 1, "no")
    ]
    assert await dlq.purge("evt_purge")
    assert redis_sync.hget(event_key("evt_purge"), "body") is None
    assert redis_sync.hget(event_key("evt_purge"), "state") == b"purged"
    assert 0 < redis_sync.ttl(event_key("evt_purge")) <= 3600
    assert redis_sync.zcard(DEAD_KEY) == 0
    again = await client.post(ENDPOINT, content=body, headers=signed_headers(body))
    assert again.status_code == 200


async def test_replay_of_an_event_that_is_not_dead_does_nothing(dlq: DeadLetters, redis_sync: Redis) -> None:
    """Replay and purge refuse ids that are not dead letters."""
    assert await dlq.replay("nope", now_ms=time.time_ns() // 1_000_000) == []
    assert not await dlq.purge("nope")
    assert redis_sync.dbsize() == 0


async def _dead_event(redis: AsyncRedis, event_id: str) -> None:
    """A dead ledger entry as the worker leaves it: body, one dead handler, in the dead-letter set."""
    handler = '{"state":"dead","attempts":3,"next_ms":0,"last_error":{"type":"RuntimeError","message":"x"}}'
    await redis.hset(  # type: ignore[misc]  # redis-py types it sync|async
        event_key(event_id),
        mapping={
            "state": "dead",
            "type": "lead.paid",
            "body": envelope(event_id, "lead.paid"),
            "sha256": "0" * 64,
            "received_ms": 1,
            "h:mod.handler": handler,
        },
    )
    await redis.zadd(DEAD_KEY, {event_id: 1})


async def test_purge_and_replay_at_once_never_leave_a_queued_event_marked_purged(
    redis_url: str, redis_sync: Redis
) -> None:
    """Purge and replay of one dead event, run together 50 times: each ends either purged or queued."""
    clients = [queue.connect(redis_url, timeout_s=2) for _ in range(2)]
    purger, replayer = (DeadLetters(c, retention_s=3600, queue_expiry_ms=60_000) for c in clients)
    try:
        for i in range(50):
            event_id = f"evt_race_{i}"
            await _dead_event(clients[0], event_id)
            purged, replayed = await asyncio.gather(
                purger.purge(event_id), replayer.replay(event_id, now_ms=time.time_ns() // 1_000_000)
            )
            state = redis_sync.hget(event_key(event_id), "state")
            in_queue = redis_sync.zscore(queue.QUEUE_NAME, event_id) is not None
            assert (state, in_queue, purged, bool(replayed)) in {
                (b"purged", False, True, False),
                (b"queued", True, False, True),
            }, (i, state, in_queue, purged, replayed)
    finally:
        for client in clients:
            await client.aclose()


async def _slow_proxy(target_port: int, delay_s: float) -> asyncio.Server:
    """A TCP proxy to Redis that holds each chunk a client sends for `delay_s`: a slow network."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool) -> None:
        try:
            while data := await reader.read(65536):
                if slow:
                    await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            pump(client_reader, redis_writer, slow=True),
            pump(redis_reader, client_writer, slow=False),
            return_exceptions=True,
        )

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_replay_is_one_step_even_while_the_event_keeps_changing(
    redis_url: str, redis_sync: Redis
) -> None:
    """While another client rewrites the entry nonstop over a slow link, replay still re-queues it, once.

    Replay was a WATCH loop that retried without bound while the entry changed under it; it is now
    one script (service/store/lua/replay-6.lua), so there is no window for a change to slip into.
    """
    direct = queue.connect(redis_url, timeout_s=2)
    await _dead_event(direct, "evt_busy")
    await direct.aclose()
    # Over this slow link a WATCH-to-EXEC window would be at least 40 ms; the writer below changes
    # the entry about every 0.1 ms, so a WATCH loop could never succeed.
    proxy = await _slow_proxy(urlparse(redis_url).port or 6379, delay_s=0.02)
    proxy_port = proxy.sockets[0].getsockname()[1]
    slow = queue.connect(f"redis://127.0.0.1:{proxy_port}/0", timeout_s=5)
    stop = threading.Event()
    writes = 0

    def keep_changing() -> None:
        nonlocal writes
        with Redis.from_url(redis_url) as writer:
            while not stop.is_set():
                writer.hset(event_key("evt_busy"), "touched", writes)
                writes += 1

    hammer = threading.Thread(target=keep_changing)
    hammer.start()
    try:
        dlq = DeadLetters(slow, retention_s=3600, queue_expiry_ms=60_000)
        async with asyncio.timeout(10):
            replayed = await dlq.replay("evt_busy", now_ms=time.time_ns() // 1_000_000)
    finally:
        stop.set()
        hammer.join()
        await slow.aclose()
        proxy.close()
        await proxy.wait_closed()
    assert writes > 0
    assert replayed
    assert redis_sync.hget(event_key("evt_busy"), "state") == b"queued"
    assert redis_sync.zscore(queue.QUEUE_NAME, "evt_busy") is not None
    assert redis_sync.zscore(DEAD_KEY, "evt_busy") is None
