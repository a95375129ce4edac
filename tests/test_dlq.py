"""Dead letters in-process: listing, and purge keeping a dedup tombstone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service import queue
from service.dlq import DeadLetters
from service.ledger import DEAD_KEY, event_key
from tests.conftest import ENDPOINT, envelope, signed_headers
from workers import Context, Event, PermanentError, on
from workers.runtime import process_event

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
