"""The handler module the delivery tests install, and helpers to read what it recorded.

It handles the made-up type `probe.test` only (so the example handlers stay out of it), and
its behaviour comes from the payload: `sleep_s` (first attempt only with `sleep_first_only`),
`fail_times` (fail the first N attempts; -1 = until the Redis key `probe:fixed` exists).
Its one effect is idempotent on `event.id`, as the handler contract asks.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

PROBE_TYPE = "probe.test"

SOURCE = '''
import asyncio
import time

from workers import Context, Event, on


@on("probe.test")
async def probe(event: Event, ctx: Context) -> None:
    """Record each start, misbehave as the payload says, then apply the effect once per event id."""
    p = event.payload.model_extra or {}
    redis = ctx.redis
    await redis.rpush(f"probe:starts:{event.id}", repr(time.time()))
    sleep_s = float(p.get("sleep_s", 0))
    if sleep_s and not (p.get("sleep_first_only") and ctx.attempt > 1):
        await asyncio.sleep(sleep_s)
    fail_times = int(p.get("fail_times", 0))
    if (fail_times < 0 and not await redis.exists("probe:fixed")) or ctx.attempt <= fail_times:
        raise RuntimeError(f"probe failure on attempt {ctx.attempt}")
    if await redis.set(f"probe:effect:{event.id}", 1, nx=True):
        await redis.incr("probe:effects")
    await redis.hincrby("probe:done", event.id, 1)
'''


def probe_body(event_id: str, **behaviour: object) -> bytes:
    """A `probe.test` event with the given behaviour in its payload."""
    return json.dumps({"id": event_id, "type": PROBE_TYPE, "payload": behaviour}).encode()


def starts(redis: Redis, event_id: str) -> list[float]:
    """When each run of the probe for this event started (epoch seconds)."""
    return [float(x) for x in redis.lrange(f"probe:starts:{event_id}", 0, -1)]


def completed(redis: Redis) -> dict[str, int]:
    """How many runs completed per event id."""
    return {k.decode(): int(v) for k, v in redis.hgetall("probe:done").items()}


def effects(redis: Redis) -> int:
    """How many distinct events had their effect applied (at most once each)."""
    return int(redis.get("probe:effects") or 0)
