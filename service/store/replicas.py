"""Writes that replicas confirm (`OA_REDIS_MIN_REPLICAS`), and whether they confirm one now.

Redis's WAIT counts the replicas that hold every write *of the connection it is sent on*, so it goes
in the same pipeline as the write it is about. Ingest batches its writes and WAITs once per batch
(service/store/batching.py); an operator's replay or purge WAITs after its one script
(`run_confirmed`), so that it says "done" only once the replicas hold it, as a 202 does. The
readiness probe (`confirming_replicas`) writes a small key and WAITs, because a WAIT with nothing
written counts every connected replica, even one that stopped acknowledging.

With fewer replicas than required, the write still stands on the primary; only its survival of a
failover is not confirmed. That is `NotReplicated`, as for ingest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from service.store.batching import WAIT_SHARE, NotReplicated

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

PROBE_KEY = "oa:probe:replicas"
_PROBE_TTL_MS = 60_000


def wait_ms(timeout_s: float) -> int:
    """How long WAIT may take within a call bounded by `timeout_s`: its share, the rest for the round trip."""
    return max(1, int(timeout_s * 1000 * WAIT_SHARE))


async def run_confirmed(
    redis: Redis,
    script: AsyncScript,
    *,
    keys: list[Any],
    args: list[Any],
    replicas: int,
    timeout_s: float,
    what: str,
) -> Any:
    """Run `script`; with `replicas`, raise `NotReplicated` (naming `what`) unless that many confirm it."""
    if not replicas:
        return await script(keys=keys, args=args)
    limit_ms = wait_ms(timeout_s)
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys=keys, args=args, client=pipe)  # queued: the pipeline loads it if need be
        pipe.wait(replicas, limit_ms)
        reply, confirmed = await pipe.execute()
    if confirmed < replicas:
        raise NotReplicated(f"{what}: {confirmed} of {replicas} replicas confirmed it within {limit_ms} ms")
    return reply


async def confirming_replicas(redis: Redis, *, replicas: int, timeout_s: float) -> int:
    """How many replicas (up to `replicas`) confirm a write now, waiting at most `wait_ms(timeout_s)`."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(PROBE_KEY, time.time_ns() // 1_000_000, px=_PROBE_TTL_MS)
        pipe.wait(replicas, wait_ms(timeout_s))
        _, confirmed = await pipe.execute()
    return int(confirmed)
