"""Batched accepts: concurrent callers share round trips but each gets exactly its own answer."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.ledger import ACCEPT_BATCH, TIME_INDEX_KEY, Ledger, Outcome, event_key, minute_stats_key
from tests.conftest import envelope
from tests.redis_server import RedisServer, free_port


def _ledger(url: str, *, pipelined: bool, timeout_s: float = 2) -> Ledger:
    """A ledger as a worker makes it, or `pipelined` as the API does (a client without read timeouts)."""
    redis: AsyncRedis = queue.connect(url, timeout_s=timeout_s, read_timeouts=not pipelined)
    return Ledger(redis, queue_expiry_ms=60_000, retention_s=3600, timeout_s=timeout_s, pipelined=pipelined)


async def _close(ledger: Ledger) -> None:
    await ledger.aclose()
    await ledger.redis.aclose()


@pytest.fixture(params=[False, True], ids=["pooled", "pipelined"])
async def ledger(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    """A ledger on the test Redis: a pooled connection per batch, or one for all (store/pipeline.py)."""
    ledger = _ledger(redis_url, pipelined=request.param)
    yield ledger
    await _close(ledger)


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


@pytest.mark.parametrize("pipelined", [False, True], ids=["pooled", "pipelined"])
async def test_redis_errors_reach_every_caller(*, pipelined: bool) -> None:
    """With Redis unreachable, every caller of the batch gets the connection error."""
    ledger = _ledger(f"redis://127.0.0.1:{free_port()}/0", pipelined=pipelined, timeout_s=0.5)
    for _ in range(2):  # the second round finds the pipeline's own attempt to connect failed too
        results = await asyncio.gather(
            *(_accept(ledger, envelope(f"e{i}")) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    await _close(ledger)


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


async def _warm(ledger: Ledger) -> None:
    """Accept until the pipeline's own connection is ready (the first batch goes another way meanwhile)."""
    for i in range(50):
        await _accept(ledger, envelope(f"evt_warm_{i}"))
        await asyncio.sleep(0.01)


async def test_pipelined_batches_share_one_connection(redis_url: str, redis_sync: Redis) -> None:
    """Once its connection is made, 400 accepts in 10 rounds open no other connection to Redis."""
    ledger = _ledger(redis_url, pipelined=True)
    try:
        await _warm(ledger)
        redis_sync.config_resetstat()
        opened = int(redis_sync.info("stats")["total_connections_received"])
        for round_ in range(10):
            bodies = [envelope(f"evt_{round_}_{i}") for i in range(40)]
            assert await asyncio.gather(*(_accept(ledger, b) for b in bodies)) == [Outcome.ACCEPTED] * 40
        assert int(redis_sync.info("stats")["total_connections_received"]) == opened
        assert int(redis_sync.info("commandstats")["cmdstat_evalsha"]["calls"]) == 10 * 3  # 16 + 16 + 8
    finally:
        await _close(ledger)


async def test_a_pipelined_batch_whose_connection_redis_closed_runs_again_once(
    redis_url: str, redis_sync: Redis
) -> None:
    """Batches written to a connection Redis just closed run again on a new one: all stored, once each."""
    ledger = _ledger(redis_url, pipelined=True)
    try:
        for round_ in range(5):
            await _warm(ledger)
            # Every connection but this one; no await in between: the pipeline cannot have noticed yet.
            assert redis_sync.client_kill_filter(_type="normal", skipme=True) >= 1
            bodies = [envelope(f"evt_{round_}_{i}") for i in range(40)]
            assert await asyncio.gather(*(_accept(ledger, b) for b in bodies)) == [Outcome.ACCEPTED] * 40
        queued = redis_sync.zrange(queue.QUEUE_NAME, 0, -1)
        assert len([q for q in queued if not q.startswith(b"evt_warm")]) == 5 * 40
    finally:
        await _close(ledger)


async def test_a_frozen_redis_fails_pipelined_batches_in_time_and_the_next_ones_recover(
    tmp_path: Path,
) -> None:
    """SIGSTOP: every waiting caller fails after the timeout, none hangs; after SIGCONT, accepts work."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    ledger = _ledger(server.url, pipelined=True, timeout_s=1)
    try:
        await _warm(ledger)
        server.signal(signal.SIGSTOP)
        started = time.monotonic()
        bodies = [envelope(f"evt_frozen_{i}") for i in range(40)]
        results = await asyncio.gather(*(_accept(ledger, b) for b in bodies), return_exceptions=True)
        waited_s = time.monotonic() - started
        server.signal(signal.SIGCONT)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert 0.9 < waited_s < 1.9  # one timeout, not a second one for a batch sent again
        # The sender retries: each is stored once, whether Redis ran it when it woke or runs it now.
        again = await asyncio.gather(*(_accept(ledger, b) for b in bodies))
        assert set(again) <= {Outcome.ACCEPTED, Outcome.DUPLICATE}
        assert await _accept(ledger, envelope("evt_after")) is Outcome.ACCEPTED
        with server.client() as client:
            assert (
                len([q for q in client.zrange(queue.QUEUE_NAME, 0, -1) if q.startswith(b"evt_frozen")]) == 40
            )
    finally:
        server.signal(signal.SIGCONT)
        await _close(ledger)
        server.stop()
