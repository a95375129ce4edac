"""One snapshot of the whole system, read from Redis in a single pipeline: for `status` and `/metrics`.

Everything here is aggregated through Redis, so it is the same whichever API replica or worker
wrote it. The cost is O(1) in events: a fixed set of commands plus one per live worker, never a
scan of keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arq.constants import in_progress_key_prefix

from service.store import queue
from service.store.handlers import HandlerView, handler_views
from service.store.held import HELD_KEY
from service.store.ledger import DEAD_KEY, STATS_KEY, minute_stats_key
from service.store.scripts import load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

WORKERS_KEY = "oa:workers"
HANDLER_HISTOGRAM_KEY = "oa:hist:handler"
LATENCY_HISTOGRAM_KEY = "oa:hist:latency"
SEPARATOR = "\t"  # cannot occur in a type (printable only) or in a handler name
HANDLER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
RECENT_MINUTES = 5
CHART_MINUTES = 60
# The lag script walks the due range in pages of this many entries...
LAG_PAGE = 100
# ...and past this many running entries (far more than any fleet runs at once) counts the next
# due entry as waiting, so a scrape stays bounded whatever the queue holds.
LAG_WALK_LIMIT = 10_000
_OLDEST_WAITING = load_script("service.store", "oldest-waiting-1")


def worker_key(worker_id: str) -> str:
    """Details of one live worker (host, pid, last heartbeat, job counts)."""
    return f"oa:worker:{worker_id}"


def bucket_index(value_s: float, buckets: tuple[float, ...]) -> int:
    """The index of the first bucket whose upper bound holds `value_s` (len(buckets) for +Inf)."""
    return next((i for i, bound in enumerate(buckets) if value_s <= bound), len(buckets))


@dataclass(slots=True)
class Snapshot:
    """Queue depth, lag, counters, workers and histograms at one moment."""

    now_s: float
    ready: int
    scheduled: int
    in_progress: int
    dead: int
    oldest_ready_age_s: float
    counters: dict[str, int]
    recent: dict[str, int]
    workers: list[dict[str, Any]]
    last_received_s: float | None
    handler_histogram: dict[str, float] = field(default_factory=dict)
    latency_histogram: dict[str, float] = field(default_factory=dict)
    held: int = 0
    oldest_held_age_s: float = 0.0
    # Every registered handler: active, paused or tripped, and the events waiting for it. Events
    # that wait for a paused or tripped handler are scheduled, not ready: they are no lag.
    handlers: list[HandlerView] = field(default_factory=list)

    def total(self, name: str) -> int:
        """A `<name>_total` counter, 0 if never incremented."""
        return self.counters.get(f"{name}_total", 0)

    def per_type(self, name: str) -> dict[str, int]:
        """A counter split by event type (`<name>:<type>` fields)."""
        prefix = f"{name}:"
        return {k[len(prefix) :]: v for k, v in self.counters.items() if k.startswith(prefix)}

    def as_json(self) -> dict[str, Any]:
        """The `status --json` object."""
        names = ("received", "processed", "retried", "failed", "unhandled")
        return {
            "queued": self.ready,
            "scheduled": self.scheduled,
            "in_progress": self.in_progress,
            "dead": self.dead,
            "held": self.held,
            "oldest_held_age_s": round(self.oldest_held_age_s, 3),
            "oldest_queued_age_s": round(self.oldest_ready_age_s, 3),
            **{f"{n}_total": self.total(n) for n in (*names, "duplicate", "conflict", "payload_mismatch")},
            "per_type": {n: self.per_type(n) for n in (*names, "payload_mismatch")},
            "last_5m": {n: self.recent.get(n, 0) for n in names},
            "secrets": self.per_type("secret"),
            "workers": self.workers,
            "handlers": [h.to_json() for h in self.handlers],
            "last_received_at": self.last_received_s,
        }


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(float(v)) for k, v in raw.items() if k != b"last_received_ms"}


def _floats(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


async def read_snapshot(redis: Redis, *, heartbeat_interval_s: float) -> Snapshot:
    """Read everything in four pipelined round trips: the counters, each live worker, the handlers."""
    now_ms = int(time.time() * 1000)
    minutes = [minute_stats_key(now_ms - i * 60_000) for i in range(RECENT_MINUTES)]
    oldest_waiting = redis.register_script(_OLDEST_WAITING)  # no round trip: it only hashes the text
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue.QUEUE_NAME, "-inf", now_ms)
        pipe.zcount(queue.QUEUE_NAME, f"({now_ms}", "+inf")
        pipe.zcard(DEAD_KEY)
        pipe.hgetall(STATS_KEY)
        pipe.zrangebyscore(WORKERS_KEY, now_ms - heartbeat_interval_s * 3000, "+inf")
        await oldest_waiting(
            keys=[queue.QUEUE_NAME],
            args=[now_ms, in_progress_key_prefix, LAG_PAGE, LAG_WALK_LIMIT],
            client=pipe,
        )
        pipe.hgetall(HANDLER_HISTOGRAM_KEY)
        pipe.hgetall(LATENCY_HISTOGRAM_KEY)
        pipe.zcard(HELD_KEY)
        pipe.zrange(HELD_KEY, 0, 0, withscores=True)
        for key in minutes:
            pipe.hgetall(key)
        (
            ready,
            scheduled,
            dead,
            stats,
            live,
            (oldest_score, running_walked),
            handler_hist,
            latency_hist,
            held,
            oldest_held,
            *recent_raw,
        ) = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id in live:
            pipe.hgetall(worker_key(worker_id.decode()))
        replies = await pipe.execute()
    workers = [
        {"id": w.decode(), **{k.decode(): v.decode() for k, v in info.items()}}
        for w, info in zip(live, replies, strict=True)
    ]
    # Heartbeats can be a few seconds old; the claims the lag script walked past are current.
    in_progress = max(sum(int(w.get("running", 0)) for w in workers), int(running_walked))
    recent: dict[str, int] = {}
    for bucket in recent_raw:
        for name, count in _ints(bucket).items():
            recent[name] = recent.get(name, 0) + count
    last = stats.get(b"last_received_ms")
    return Snapshot(
        now_s=now_ms / 1000,
        ready=max(0, ready - in_progress),
        scheduled=scheduled,
        in_progress=in_progress,
        dead=dead,
        oldest_ready_age_s=max(0.0, (now_ms - float(oldest_score)) / 1000) if oldest_score else 0.0,
        counters=_ints(stats),
        recent=recent,
        workers=workers,
        last_received_s=int(last) / 1000 if last else None,
        handler_histogram=_floats(handler_hist),
        latency_histogram=_floats(latency_hist),
        held=held,
        oldest_held_age_s=max(0.0, (now_ms - oldest_held[0][1]) / 1000) if oldest_held else 0.0,
        handlers=await handler_views(redis, now_ms=now_ms),
    )


async def read_minutes(
    redis: Redis, *, minutes: int = CHART_MINUTES, now_ms: int | None = None
) -> list[tuple[int, dict[str, int]]]:
    """The per-minute counters of the last `minutes` minutes (this one included), oldest first.

    One pipeline; each item is (the minute's start in ms, its counters). A minute with no event, or
    older than `MINUTE_STATS_TTL_S`, has empty counters.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    starts = [(now // 60_000 - i) * 60_000 for i in reversed(range(minutes))]
    async with redis.pipeline(transaction=False) as pipe:
        for start in starts:
            pipe.hgetall(minute_stats_key(start))
        buckets = await pipe.execute()
    return [(start, _ints(bucket)) for start, bucket in zip(starts, buckets, strict=True)]
