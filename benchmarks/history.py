"""H: the event history at scale. `history_events` events go in through our API (the real ingest
path, indexes and all) and stay; then a first page of `events list --type T --since 1h` and a
`--lead N` timeline are timed, alternately, `history_queries` times each.

The queries are the calls the CLI and the console make (service/store/history.py), timed around the
call on a client in this process: Redis and the query layer, not a CLI process's start-up.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.bodies import lead_of
from service.ops.cli.sender import SAMPLES
from service.store import queue
from service.store.history import Filters, lead_timeline, list_events

if TYPE_CHECKING:
    from benchmarks.measures import LoadResult
    from benchmarks.phases import Bench

SET_NAME = "h"
_PAGE = 50


@dataclass
class HistoryRun:
    """H: how many events were retained, the ingest run that put them in, and each query's time."""

    events: int
    load: LoadResult
    list_ms: list[float]
    lead_ms: list[float]


async def _queries(url: str, events: int, count: int) -> tuple[list[float], list[float]]:
    redis = queue.connect(url, timeout_s=5)
    rng = random.Random(13)  # which lead and type to ask for: the same in every run
    types = sorted(SAMPLES)
    list_ms: list[float] = []
    lead_ms: list[float] = []
    try:
        since_ms = time.time_ns() // 1_000_000 - 3_600_000
        for _ in range(count):
            filters = Filters(types=(rng.choice(types),), since_ms=since_ms, limit=_PAGE)
            started = time.perf_counter()
            page = await list_events(redis, filters)
            list_ms.append((time.perf_counter() - started) * 1000)
            if len(page.events) != min(_PAGE, events // len(types)):
                raise RuntimeError(f"H: a first page held {len(page.events)} events, not {_PAGE}")
            lead = lead_of(rng.randrange(events))
            started = time.perf_counter()
            timeline = await lead_timeline(redis, str(lead))
            lead_ms.append((time.perf_counter() - started) * 1000)
            if not timeline.events:
                raise RuntimeError(f"H: lead {lead} has no events")
    finally:
        await redis.aclose()
    return list_ms, lead_ms


def history(bench: Bench) -> HistoryRun:
    """Put the H set in through our API on an empty Redis, then time the queries."""
    bench.redis.flushall()
    load = bench.loader.run(bench.url("ours"), SET_NAME, progress=bench.stored)
    stored = bench.stored()
    list_ms, lead_ms = asyncio.run(_queries(bench.redis_url, stored, bench.plan.history_queries))
    return HistoryRun(events=stored, load=load, list_ms=list_ms, lead_ms=lead_ms)
