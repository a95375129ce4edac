"""Retention: the history indexes are trimmed together with the events they point to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis import Redis

from service.api.envelope import parse_envelope
from service.ops.cli.sender import sample_body
from service.store import queue
from service.store.history import EventState, Filters, list_events
from service.store.ledger import TIME_INDEX_KEY, Ledger, event_key, lead_index_key, type_index_key
from service.store.trim import trim_indexes
from tests.conftest import make_settings
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
    # A new event of the same lead keeps its index key alive; ingest trims only whole stream nodes.
    body = sample_body("lead.created", event_id="fresh", payload=_lead(7))
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)
    await asyncio.sleep(RETENTION_S / 2 + 0.6)
    assert [redis_sync.exists(event_key(i)) for i in ids] == [0, 0, 1]  # done ones expired, dead one kept
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


async def test_ingest_trims_whole_stream_nodes_past_the_retention(redis_sync: Redis, redis_url: str) -> None:
    """Ingest's `MINID ~` drops old stream nodes as new events arrive, without a reconciler."""
    redis = queue.connect(redis_url, timeout_s=2)
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=RETENTION_S)
    start_ms = time.time_ns() // 1_000_000 - 3_600_000
    for index in range(300):  # three stream nodes of 100 entries, an hour ago
        body = sample_body("lead.sold", event_id=f"n{index}", payload=_lead(index))
        await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=start_ms + index)
    body = sample_body("lead.sold", event_id="fresh", payload=_lead(1))
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)
    await redis.aclose()
    assert redis_sync.xlen(TIME_INDEX_KEY) < 100
    assert redis_sync.xlen(type_index_key("lead.sold")) < 100
    assert redis_sync.xrevrange(TIME_INDEX_KEY, count=1)[0][1][b"i"] == b"fresh"


def _lead(lead_id: int) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "website_code": "1cd4",
        "subcategory_id": "1",
        "created_at": "2024-03-01T12:00:00Z",
    }
