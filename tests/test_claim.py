"""The worker's batch claim (workers/runtime/claim.py) on a real Redis: arq's rules, many jobs at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service.store import queue
from workers.runtime.claim import Claimer

NOW_MS = 1_800_000_000_000
TTL_MS = 70_000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[AsyncRedis]:
    """The worker's kind of connection."""
    client = queue.connect_arq(redis_url, timeout_s=2)
    yield client
    await client.aclose(close_connection_pool=True)


def _queue(redis_sync: Redis, scores: dict[str, int]) -> list[bytes]:
    redis_sync.zadd(queue.QUEUE_NAME, scores)
    return [job_id.encode() for job_id in scores]


async def test_claims_due_jobs_in_queue_order_up_to_the_limit(redis: AsyncRedis, redis_sync: Redis) -> None:
    """Of five due jobs and a limit of three, the first three are claimed, each with its score and a TTL."""
    ids = _queue(redis_sync, {f"j{i}": NOW_MS - 100 + i for i in range(5)})
    claimed = await Claimer(redis, queue_name=queue.QUEUE_NAME, claim_ttl_ms=TTL_MS).claim(
        ids, limit=3, now_ms=NOW_MS
    )
    assert [(job.id, job.score) for job in claimed] == [
        ("j0", NOW_MS - 100),
        ("j1", NOW_MS - 99),
        ("j2", NOW_MS - 98),
    ]
    assert {k.decode() for k in redis_sync.keys("arq:in-progress:*")} == {
        f"arq:in-progress:j{i}" for i in range(3)
    }
    assert 0 < redis_sync.pttl("arq:in-progress:j0") <= TTL_MS


async def test_skips_running_deferred_and_finished_jobs(redis: AsyncRedis, redis_sync: Redis) -> None:
    """A job another worker runs, one deferred to the future, and one gone from the queue are not claimed."""
    ids = _queue(redis_sync, {"running": NOW_MS - 10, "deferred": NOW_MS + 5_000, "due": NOW_MS - 5})
    redis_sync.set("arq:in-progress:running", b"1", px=TTL_MS)
    claimer = Claimer(redis, queue_name=queue.QUEUE_NAME, claim_ttl_ms=TTL_MS)
    claimed = await claimer.claim([*ids, b"finished"], limit=10, now_ms=NOW_MS)
    assert [(job.id, job.score) for job in claimed] == [("due", NOW_MS - 5)]
    assert not redis_sync.exists("arq:in-progress:deferred", "arq:in-progress:finished")


async def test_concurrent_claimers_never_claim_a_job_twice(redis: AsyncRedis, redis_sync: Redis) -> None:
    """Eight workers claiming the same 200 ids at once take each job exactly once between them."""
    ids = _queue(redis_sync, {f"j{i}": NOW_MS - 1_000 + i for i in range(200)})
    claimers = [Claimer(redis, queue_name=queue.QUEUE_NAME, claim_ttl_ms=TTL_MS) for _ in range(8)]
    results = await asyncio.gather(*(c.claim(ids, limit=50, now_ms=NOW_MS) for c in claimers))
    taken = [job.id for result in results for job in result]
    assert sorted(taken) == sorted(i.decode() for i in ids)
    assert all(len(result) <= 50 for result in results)


async def test_no_free_slot_or_no_candidate_claims_nothing(redis: AsyncRedis, redis_sync: Redis) -> None:
    """No free slot, or no candidate, claims nothing and leaves Redis as it was."""
    ids = _queue(redis_sync, {"j": NOW_MS - 1})
    claimer = Claimer(redis, queue_name=queue.QUEUE_NAME, claim_ttl_ms=TTL_MS)
    assert await claimer.claim(ids, limit=0, now_ms=NOW_MS) == []
    assert await claimer.claim([], limit=5, now_ms=NOW_MS) == []
    assert not redis_sync.exists("arq:in-progress:j")
