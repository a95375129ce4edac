"""Batched accepts: concurrent callers share round trips but each gets exactly its own answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.ledger import Ledger, Outcome
from tests.conftest import envelope
from tests.redis_server import free_port


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    """A ledger on the test Redis."""
    redis: AsyncRedis = queue.connect(redis_url, timeout_s=2)
    yield Ledger(redis, queue_expiry_ms=60_000, retention_s=3600)
    await redis.aclose()


async def _accept(ledger: Ledger, body: bytes) -> Outcome:
    accepted = await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 10**6)
    return accepted.outcome


async def test_concurrent_accepts_each_get_their_own_outcome(ledger: Ledger, redis_sync: Redis) -> None:
    """300 distinct events and 50 copies of one, all at once: 301 accepted, 49 duplicates, 301 jobs."""
    bodies = [envelope(f"evt_{i}") for i in range(300)] + [envelope("evt_same")] * 50
    outcomes = await asyncio.gather(*(_accept(ledger, b) for b in bodies))
    assert outcomes[:300] == [Outcome.ACCEPTED] * 300
    assert sorted(outcomes[300:]) == sorted([Outcome.ACCEPTED] + [Outcome.DUPLICATE] * 49)
    assert redis_sync.zcard(queue.QUEUE_NAME) == 301


async def test_a_flushed_script_cache_is_reloaded(ledger: Ledger, redis_sync: Redis) -> None:
    """After SCRIPT FLUSH (as after a Redis restart) accepts still work, once each."""
    assert await _accept(ledger, envelope("evt_a")) is Outcome.ACCEPTED
    redis_sync.script_flush()
    outcomes = await asyncio.gather(*(_accept(ledger, envelope(f"evt_b{i}")) for i in range(5)))
    assert outcomes == [Outcome.ACCEPTED] * 5
    assert await _accept(ledger, envelope("evt_a")) is Outcome.DUPLICATE


async def test_redis_errors_reach_every_caller() -> None:
    """With Redis unreachable, every caller of the batch gets the connection error."""
    redis: AsyncRedis = queue.connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=3600)
    results = await asyncio.gather(
        *(_accept(ledger, envelope(f"e{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await redis.aclose()
