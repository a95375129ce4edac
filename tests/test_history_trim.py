"""Retention: the history indexes are trimmed together with the events they point to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from redis import Redis

from service.api.envelope import parse_envelope
from service.ops.cli.sender import sample_body
from service.store import queue
from service.store.dlq import DeadLetters
from service.store.history import EventState, Filters, list_events
from service.store.ledger import (
    DEAD_KEY,
    TIME_INDEX_KEY,
    Ledger,
    event_key,
    invoice_index_key,
    lead_index_key,
    type_index_key,
)
from service.store.trim import trim_indexes
from tests.arq_worker import ArqWorker
from tests.conftest import make_settings
from tests.processes import wait_for
from workers import Context, Event, PermanentError, on
from workers.runtime.job import WorkerState, process_event
from workers.runtime.journal import Journal
from workers.runtime.retry import Backoff

pytestmark = pytest.mark.usefixtures("clean_registry")
RETENTION_S = 4


@pytest.fixture
async def short_ctx(redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """A worker ctx whose retention is two seconds."""
    settings = make_settings(redis_url, OA_RETENTION_DAYS=RETENTION_S / 86_400)
    assert settings.retention_s == RETENTION_S
    redis = queue.connect_arq(redis_url, timeout_s=2)
    async with httpx.AsyncClient() as http:
        journal = Journal(redis, retention_s=RETENTION_S, queue_expiry_ms=settings.queue_expiry_ms)
        state = WorkerState(settings=settings, backoff=Backoff(0, 0), http=http, redis=redis, journal=journal)
        yield {"oa": state, "redis": redis}
    await redis.aclose(close_connection_pool=True)


async def test_trimming_removes_index_entries_with_their_events(
    short_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Once done events expire, trimming drops them from the time, type and lead indexes; a dead one stays."""

    @on("lead.created")
    async def crm(event: Event, ctx: Context) -> None:
        if event.id == "old_dead":
            raise PermanentError("refused")

    redis = short_ctx["redis"]
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=RETENTION_S)
    ids = ["old_1", "old_2", "old_dead"]
    for event_id in ids:  # received 10 s ago, run now: done ones expire RETENTION_S from now
        body = sample_body("lead.created", event_id=event_id, payload=_lead(7))
        received_ms = time.time_ns() // 1_000_000 - 10_000
        await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=received_ms)
        await process_event(short_ctx, event_id, "lead.created")
    assert redis_sync.xlen(TIME_INDEX_KEY) == 3
    assert redis_sync.zcard(lead_index_key("7")) == 3
    await asyncio.sleep(RETENTION_S / 2)
    # A new event of the same lead keeps its index key alive; ingest trims nothing.
    body = sample_body("lead.created", event_id="fresh", payload=_lead(7))
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)
    wait_for(
        lambda: not redis_sync.exists(event_key("old_1"), event_key("old_2")),
        timeout_s=10,
        what="the done events to expire",
    )
    assert redis_sync.exists(event_key("old_dead")) == 1  # a dead one is kept
    assert redis_sync.xlen(TIME_INDEX_KEY) == 4
    assert redis_sync.zcard(lead_index_key("7")) == 4

    trimmed = await trim_indexes(redis, now_ms=time.time_ns() // 1_000_000, retention_s=RETENTION_S)
    assert trimmed == 3
    assert redis_sync.xrange(TIME_INDEX_KEY)[0][1] == {b"i": b"fresh", b"l": b"7", b"n": b""}
    assert redis_sync.xlen(TIME_INDEX_KEY) == 1
    assert redis_sync.xlen(type_index_key("lead.created")) == 1
    assert redis_sync.zrange(lead_index_key("7"), 0, -1) == [b"old_dead", b"fresh"]
    assert [e.id for e in (await list_events(redis, Filters(lead="7"))).events] == ["fresh", "old_dead"]
    assert [e.id for e in (await list_events(redis, Filters(state=EventState.DEAD))).events] == ["old_dead"]
    assert [e.id for e in (await list_events(redis, Filters())).events] == ["fresh"]


def _lead(lead_id: int) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "website_code": "1cd4",
        "subcategory_id": "1",
        "created_at": "2024-03-01T12:00:00Z",
    }


def _everything_in(redis_sync: Redis) -> bytes:
    """Every key name, member, field, value and stream entry in Redis, as one blob to search."""
    parts: list[bytes] = []
    for key in redis_sync.scan_iter(count=1000):
        parts.append(key)
        kind = redis_sync.type(key)
        if kind == b"string":
            parts.append(redis_sync.get(key) or b"")
        elif kind == b"hash":
            parts.extend(b"%s=%s" % item for item in redis_sync.hgetall(key).items())
        elif kind == b"zset":
            parts.extend(redis_sync.zrange(key, 0, -1))
        elif kind == b"set":
            parts.extend(redis_sync.smembers(key))
        elif kind == b"list":
            parts.extend(redis_sync.lrange(key, 0, -1))
        elif kind == b"stream":
            for entry_id, fields in redis_sync.xrange(key):
                parts.append(entry_id)
                parts.extend(b"%s=%s" % item for item in fields.items())
        else:
            raise AssertionError(f"{key!r} is a {kind!r}: teach this helper to read it")
    return b"\n".join(parts)


def _ids(redis_sync: Redis, key: str) -> set[str]:
    if redis_sync.type(key) == b"stream":
        return {fields[b"i"].decode() for _, fields in redis_sync.xrange(key)}
    return {member.decode() for member in redis_sync.zrange(key, 0, -1)}


async def test_expired_events_leave_every_index_while_their_lead_keeps_receiving(
    redis_url: str, redis_sync: Redis
) -> None:
    """250 events of one lead and invoice expire while new ones arrive: only retained ones stay indexed."""
    retention_s = 2
    settings = make_settings(redis_url, OA_RETENTION_DAYS=retention_s / 86_400)
    redis = queue.connect_arq(redis_url, timeout_s=2)
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=retention_s)

    async def receive(event_id: str, *, at_ms: int) -> int:
        body = sample_body("lead.invoiced", event_id=event_id, payload={"lead_id": 7, "invoice_id": 70})
        await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=at_ms)
        return at_ms

    try:
        async with httpx.AsyncClient() as http:
            worker = ArqWorker(settings, redis, http)
            # Received a minute ago, more than two stream nodes (100 entries each), run now: they
            # are done, and expire `retention_s` after their run.
            minute_ago = time.time_ns() // 1_000_000 - 60_000
            gone = [f"gone-{index:04d}" for index in range(250)]
            for index, event_id in enumerate(gone):
                await receive(event_id, at_ms=minute_ago + index)
            await worker.drain()
            assert _ids(redis_sync, lead_index_key("7")) == set(gone)
            # Meanwhile the lead keeps receiving (which keeps its index keys alive), one event per
            # 0.2 s, until every old event has expired from the ledger.
            received: dict[str, int] = {}
            deadline = time.monotonic() + 10 * retention_s
            while any(redis_sync.exists(event_key(i)) for i in gone):
                assert time.monotonic() < deadline, "the old events did not expire"
                event_id = f"live-{len(received):04d}"
                received[event_id] = await receive(event_id, at_ms=time.time_ns() // 1_000_000)
                await worker.drain()
                await asyncio.sleep(0.2)  # the pace of arrivals, not a wait for a condition
            received["live-last"] = await receive("live-last", at_ms=time.time_ns() // 1_000_000)
            await worker.drain()
            now_ms = time.time_ns() // 1_000_000
            await trim_indexes(redis, now_ms=now_ms, retention_s=retention_s)
    finally:
        await redis.aclose(close_connection_pool=True)
    retained = {i for i, at_ms in received.items() if at_ms >= now_ms - retention_s * 1000}
    assert "live-last" in retained
    for key in (
        lead_index_key("7"),
        invoice_index_key("70"),
        TIME_INDEX_KEY,
        type_index_key("lead.invoiced"),
    ):
        left = _ids(redis_sync, key) - retained
        assert not left, f"{key} keeps {len(left)} events past the retention, e.g. {sorted(left)[:3]}"
        assert _ids(redis_sync, key) == retained, key
    everything = _everything_in(redis_sync)
    assert everything.count(b"gone-") == 0, f"Redis still holds {everything.count(b'gone-')} traces"


async def test_a_dead_letter_past_the_retention_leaves_its_lead_once_purged_or_replayed_and_expired(
    redis_url: str, redis_sync: Redis
) -> None:
    """Dead past the retention: kept by lead; once purged or replayed and expired, nothing of it is left."""
    fixed: list[bool] = []

    @on("lead.sold")
    async def crm(event: Event, ctx: Context) -> None:
        if not fixed:
            raise PermanentError("the CRM refuses this lead")

    retention_s = 2
    settings = make_settings(redis_url, OA_RETENTION_DAYS=retention_s / 86_400)
    redis = queue.connect_arq(redis_url, timeout_s=2)
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=retention_s)
    dlq = DeadLetters(redis, retention_s=retention_s, queue_expiry_ms=60_000)
    arrivals = 0

    async def receive(event_id: str, *, at_ms: int) -> None:
        body = sample_body("lead.sold", event_id=event_id, payload={"lead_id": 8, "invoice_id": 80})
        await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=at_ms)

    async def keep_receiving_until(done: Callable[[], bool]) -> None:
        """One event of the lead every 0.2 s (which keeps its index keys alive) until `done()`."""
        nonlocal arrivals
        deadline = time.monotonic() + 10 * retention_s
        while not done():
            assert time.monotonic() < deadline, "timed out"
            arrivals += 1
            await receive(f"live-{arrivals:04d}", at_ms=time.time_ns() // 1_000_000)
            await worker.drain()
            await asyncio.sleep(0.2)  # the pace of arrivals, not a wait for a condition

    async def trim() -> int:
        return await trim_indexes(redis, now_ms=time.time_ns() // 1_000_000, retention_s=retention_s)

    try:
        async with httpx.AsyncClient() as http:
            worker = ArqWorker(settings, redis, http)
            minute_ago = time.time_ns() // 1_000_000 - 60_000
            await receive("dead-purged", at_ms=minute_ago)
            await receive("dead-replayed", at_ms=minute_ago + 1)
            await worker.drain()
            # Both dead letters; the worker ran them together, so either may have died first.
            assert sorted(redis_sync.zrange(DEAD_KEY, 0, -1)) == [b"dead-purged", b"dead-replayed"]
            fixed.append(True)
            await receive("live-0000", at_ms=time.time_ns() // 1_000_000)
            assert await trim() == 2
            # Past the retention, still dead: out of the time stream, still found by lead and invoice.
            assert not {"dead-purged", "dead-replayed"} & _ids(redis_sync, TIME_INDEX_KEY)
            for key in (lead_index_key("8"), invoice_index_key("80")):
                assert {"dead-purged", "dead-replayed"} <= _ids(redis_sync, key), key
            assert await dlq.purge("dead-purged")
            assert await dlq.replay("dead-replayed", now_ms=time.time_ns() // 1_000_000) != []
            await worker.drain()
            assert redis_sync.hget(event_key("dead-replayed"), "state") == b"done"
            await trim()
            gone = ("dead-purged", "dead-replayed")
            await keep_receiving_until(lambda: not any(redis_sync.exists(event_key(i)) for i in gone))
            await trim()
    finally:
        await redis.aclose(close_connection_pool=True)
    for key in (lead_index_key("8"), invoice_index_key("80")):
        left = {"dead-purged", "dead-replayed"} & _ids(redis_sync, key)
        assert not left, f"{key} keeps {sorted(left)} after they expired"
    everything = _everything_in(redis_sync)
    assert everything.count(b"dead-") == 0, f"Redis still holds {everything.count(b'dead-')} traces"
