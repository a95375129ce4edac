"""The httpx load generators: closed loop (as fast as answers come) and open loop (a steady rate).

The closed loop stands in for wrk where wrk is missing (the smoke test, a machine without it); the
open loop drives F. Both post each event once and note, per event id, when it was sent and when
its 202 came back (`time.time()`, comparable with the handler's notes).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import TYPE_CHECKING

import httpx

from benchmarks.measures import LoadResult, percentile

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from benchmarks.bodies import Signed


class _Recorder:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.latencies_s: list[float] = []
        self.errors = 0
        self.acknowledged: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}

    async def post(self, http: httpx.AsyncClient, url: str, event: Signed) -> None:
        self.sent_at[event.event_id] = time.time()
        started = time.perf_counter()
        try:
            response = await http.post(url, content=event.body, headers=event.headers())
        except httpx.HTTPError:
            self.errors += 1
            return
        if response.status_code == 202:
            self.acknowledged[event.event_id] = time.time()
        self.latencies_s.append(time.perf_counter() - started)
        self.statuses[response.status_code] += 1

    def result(self, duration_s: float, *, exhausted: bool = False) -> LoadResult:
        return LoadResult(
            duration_s=duration_s,
            statuses=self.statuses,
            errors=self.errors,
            p50_ms=percentile(self.latencies_s, 50) * 1000,
            p99_ms=percentile(self.latencies_s, 99) * 1000,
            exhausted=exhausted,
            acknowledged=self.acknowledged,
            sent_at=self.sent_at,
        )


def _client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=10)


async def closed_loop(
    url: str, events: Iterable[Signed], *, connections: int, duration_s: float | None = None
) -> LoadResult:
    """`connections` clients post the next event as soon as they have an answer, until the events
    run out or `duration_s` passes (then `exhausted` says whether they ran out first)."""
    recorder = _Recorder()
    supply = iter(events)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else math.inf
    ran_out = False

    async def one_client(http: httpx.AsyncClient) -> None:
        nonlocal ran_out
        while time.perf_counter() < deadline:
            event = next(supply, None)
            if event is None:
                ran_out = True
                return
            await recorder.post(http, url, event)

    async with _client(connections) as http:
        await asyncio.gather(*(one_client(http) for _ in range(connections)))
    return recorder.result(time.perf_counter() - started, exhausted=ran_out and duration_s is not None)


async def open_loop(url: str, events: Sequence[Signed], *, rate: float, connections: int = 64) -> LoadResult:
    """Offer the events at `rate` per second on a fixed schedule, whatever the answers (open loop)."""
    recorder = _Recorder()
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    async with _client(connections) as http:
        for index, event in enumerate(events):
            wait_s = started + index / rate - time.perf_counter()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            tasks.append(asyncio.create_task(recorder.post(http, url, event)))
        await asyncio.gather(*tasks)
    return recorder.result(time.perf_counter() - started)
