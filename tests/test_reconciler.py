"""The reconciler checks every pending event in one pass, however many pages, while it prunes the set."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.ledger import PENDING_KEY, Ledger
from tests.conftest import envelope
from workers.runtime.reconciler import reconcile_pending


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("same_ms", [False, True])
async def test_one_pass_over_several_pages_sees_every_entry(
    redis_url: str, redis_sync: Redis, same_ms: bool
) -> None:
    """Pages of 10: 12 stale ids (pruned) ahead of 25 lost events; every lost event is re-queued."""
    accepted_ms = _now_ms() - 60_000
    ledger = Ledger(queue.connect(redis_url, timeout_s=2), queue_expiry_ms=600_000, retention_s=3600)
    try:
        lost = [f"lost_{i:02d}" for i in range(25)]
        for i, event_id in enumerate(lost):
            body = envelope(event_id)
            stamp = accepted_ms if same_ms else accepted_ms + 100 + i
            await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=stamp)
            redis_sync.delete(queue.job_key(event_id))
            redis_sync.zrem(queue.QUEUE_NAME, event_id)
        # Ids whose ledger entry is gone sort first; checking them removes them from the set.
        redis_sync.zadd(
            PENDING_KEY,
            {f"gone_{i:02d}": accepted_ms if same_ms else accepted_ms - 100 + i for i in range(12)},
        )
        found = await reconcile_pending(ledger, now_ms=_now_ms(), page_size=10)
    finally:
        await ledger.redis.aclose()
    assert found == {"missing": 12, "requeued": 25}
    assert redis_sync.zcard(queue.QUEUE_NAME) == 25
    assert redis_sync.zcard(PENDING_KEY) == 25
