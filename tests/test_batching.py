"""Batched accepts: concurrent callers share round trips but each gets exactly its own answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.ledger import ACCEPT_BATCH, TIME_INDEX_KEY, Ledger, Outcome, event_key, minute_stats_key
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


async def test_a_joined_batch_stores_what_its_calls_would_one_by_one(
    ledger: Ledger, redis_sync: Redis
) -> None:
    """One EVALSHA for a batch: sequence, history order, dedup and every counter as if one call each."""
    now_ms = time.time_ns() // 10**6
    calls = [
        (envelope("evt_0"), 0),
        (envelope("evt_1", "lead.sold", lead_id=2), 1),
        (envelope("evt_0"), 0),  # a redelivery inside the same batch
        (envelope("evt_0", "lead.sold"), 0),  # the same id, another body
        (envelope("evt_2", "invoice.paid", invoice_id=7), 1),
        (envelope("evt_3"), 0),
    ]
    redis_sync.config_resetstat()
    accepted = await asyncio.gather(
        *(ledger.accept(parse_envelope(b), b, secret_index=i, now_ms=now_ms) for b, i in calls)
    )
    assert int(redis_sync.info("commandstats")["cmdstat_evalsha"]["calls"]) == 1
    assert [a.outcome for a in accepted] == [
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
    ]
    assert accepted[3].first_sha256 == accepted[0].sha256
    assert [redis_sync.hget(event_key(f"evt_{n}"), "seq") for n in range(4)] == [b"1", b"2", b"3", b"4"]
    assert [fields[b"i"] for _, fields in redis_sync.xrange(TIME_INDEX_KEY)] == [
        b"evt_0",
        b"evt_1",
        b"evt_2",
        b"evt_3",
    ]
    assert redis_sync.zcard(queue.QUEUE_NAME) == 4
    assert redis_sync.hgetall("oa:stats") == {
        b"received_total": b"4",
        b"received:lead.created": b"2",
        b"received:lead.sold": b"1",
        b"received:invoice.paid": b"1",
        b"secret:0": b"2",
        b"secret:1": b"2",
        b"duplicate_total": b"1",
        b"conflict_total": b"1",
        b"last_received_ms": str(now_ms).encode(),
    }
    minute = minute_stats_key(now_ms)
    assert redis_sync.hget(minute, "received") == b"4"
    assert 0 < redis_sync.ttl(minute) <= 3900


async def test_an_error_in_a_joined_batch_fails_all_of_it_and_loses_nothing(
    ledger: Ledger, redis_sync: Redis
) -> None:
    """A call that errors fails its whole batch; each event sent again is stored once, none lost."""
    redis_sync.set("oa:idx:lead:broken", "not a sorted set")
    bodies = [envelope("evt_a", lead_id=1), envelope("evt_b", lead_id="broken"), envelope("evt_c", lead_id=3)]
    results = await asyncio.gather(*(_accept(ledger, b) for b in bodies), return_exceptions=True)
    assert all(isinstance(r, ResponseError) and "WRONGTYPE" in str(r) for r in results), results
    # The sender retries what was refused. What the batch wrote before the error counts as received.
    redis_sync.delete("oa:idx:lead:broken")
    assert [await _accept(ledger, b) for b in bodies] == [
        Outcome.DUPLICATE,
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
    ]
    assert sorted(redis_sync.zrange(queue.QUEUE_NAME, 0, -1)) == [b"evt_a", b"evt_b", b"evt_c"]
    assert redis_sync.zrange("oa:idx:lead:1", 0, -1) == [b"evt_a"]


async def test_a_full_batch_leaves_at_once(ledger: Ledger, redis_sync: Redis) -> None:
    """More concurrent calls than `ACCEPT_BATCH` go as several EVALSHAs of at most that many events."""
    redis_sync.config_resetstat()
    count = ACCEPT_BATCH * 2 + 1
    outcomes = await asyncio.gather(*(_accept(ledger, envelope(f"evt_{i}")) for i in range(count)))
    assert outcomes == [Outcome.ACCEPTED] * count
    assert int(redis_sync.info("commandstats")["cmdstat_evalsha"]["calls"]) == 3
