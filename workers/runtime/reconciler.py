"""The reconciler: gives a new arq job to every unfinished event whose job is gone.

arq can lose a job without our ledger noticing: its key expired, arq gave up on it, or Redis
lost it. Each check-and-requeue is one Lua script, atomic against a worker finishing the event.

It runs in every worker, every `OA_RECONCILE_INTERVAL_S`, and a Redis lock lets one of them do
the work each time; the same turn trims the event history's indexes (service/store/trim.py) and
drops from the handlers' waiting lists the events that no longer wait (service/store/handlers.py). It is not
an arq cron job on purpose: arq puts cron jobs in the same sorted set as the events, where they
would skew the queue depth that operators watch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from service.store.handlers import prune_waiting, publish
from service.store.ledger import PENDING_KEY, Ledger, event_key
from service.store.trim import trim_indexes
from workers.registry import registered
from workers.runtime.protect import handler_spec

if TYPE_CHECKING:
    from workers.runtime.job import WorkerState

log = logging.getLogger("oa.reconciler")
BATCH = 500
# Ingest writes the ledger entry and its job atomically, so even a young event without a job is
# lost; the grace only spares the scan events that are seconds old.
GRACE_MS = 2_000


async def reconcile_pending(
    ledger: Ledger, *, now_ms: int, grace_ms: int = GRACE_MS, page_size: int = BATCH
) -> dict[str, int]:
    """Check every pending event older than `grace_ms`; returns how many were found in each state.

    Pages go by score, not by offset: checking a page removes finished and missing ids from the
    set, which would shift an offset past entries never checked. Each page starts at the last
    score seen, skipping the ids of that score already checked (several events can share a ms).
    """
    redis = ledger.redis
    found: dict[str, int] = {}
    low: float | str = "-inf"
    seen_at_low: set[bytes] = set()
    while True:
        page = await redis.zrangebyscore(
            PENDING_KEY,
            low,
            now_ms - grace_ms,
            start=0,
            num=page_size + len(seen_at_low),
            withscores=True,
        )
        fresh = [(raw_id, score) for raw_id, score in page if raw_id not in seen_at_low]
        if not fresh:
            return found
        ids = [raw_id for raw_id, _ in fresh]
        last = fresh[-1][1]
        seen_at_low = {raw_id for raw_id, score in page if score == last} if last == low else set()
        seen_at_low |= {raw_id for raw_id, score in fresh if score == last}
        low = last
        async with redis.pipeline(transaction=False) as pipe:
            for raw_id in ids:
                pipe.hget(event_key(raw_id.decode()), "type")
            types = await pipe.execute()
        batch = [
            (raw_id.decode(), raw_type.decode() if raw_type else "")
            for raw_id, raw_type in zip(ids, types, strict=True)
        ]
        # Concurrent calls share pipelined round trips (service/store/batching.py), each still atomic.
        results = await asyncio.gather(*(ledger.requeue_if_lost(i, t, now_ms=now_ms) for i, t in batch))
        for (event_id, event_type), result in zip(batch, results, strict=True):
            found[result] = found.get(result, 0) + 1
            if result == "requeued":
                log.warning(
                    "re-queued an event whose job was lost",
                    extra={"event_id": event_id, "type": event_type, "outcome": "requeued"},
                )


LOCK_KEY = "oa:reconcile:lock"


async def reconcile_once(state: WorkerState, *, worker_id: str) -> dict[str, int] | None:
    """Reconcile if no other worker did in this interval; None when another one holds the turn."""
    interval_ms = state.settings.reconcile_interval_s * 1000
    if not await state.redis.set(LOCK_KEY, worker_id, nx=True, px=interval_ms):
        return None
    ledger = Ledger(
        state.redis,
        queue_expiry_ms=state.settings.queue_expiry_ms,
        retention_s=state.settings.retention_s,
    )
    now_ms = time.time_ns() // 1_000_000
    found = await reconcile_pending(ledger, now_ms=now_ms)
    # The same turn trims the history indexes to the retention (one worker at a time, like this).
    found["trimmed"] = await trim_indexes(state.redis, now_ms=now_ms, retention_s=state.settings.retention_s)
    found["unlisted"] = await prune_waiting(state.redis, now_ms=now_ms)
    if found.get("requeued"):
        log.warning("reconciler repaired %d events", found["requeued"], extra={"count": found["requeued"]})
    else:
        log.debug("reconciler found nothing to repair: %s", found)
    return found


async def reconcile_forever(state: WorkerState, *, worker_id: str) -> None:
    """Run `reconcile_once` now and then every interval, until cancelled.

    Every worker also records its handlers each turn (`oa:handlers`, for `oa-webhooks handlers`).
    """
    specs = {h.name: handler_spec(h) for h in registered()}
    while True:
        try:
            await publish(state.redis, specs, now_ms=time.time_ns() // 1_000_000)
            await reconcile_once(state, worker_id=worker_id)
        except (RedisError, OSError) as exc:
            # The worker's own loop notices a lost Redis and reconnects; just try again later.
            log.warning(
                "reconciler could not run (%s)", type(exc).__name__, extra={"error": type(exc).__name__}
            )
        await asyncio.sleep(state.settings.reconcile_interval_s)
