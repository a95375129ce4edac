"""The httpx load generator: a closed loop (as fast as answers come), and the `Recorder` of answers.

The closed loop stands in for wrk where wrk is missing (the smoke test, a machine without it).
It posts each event once and notes, per event id, when it was sent and when its 202 came back
(`time.time()`, comparable with the handler's notes). F uses benchmarks/raw_load.py.
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
    from collections.abc import Iterable

    from benchmarks.bodies import Signed


class Recorder:
    """Statuses, latencies, and per event id the send and 202 times (`time.time()`)."""

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
        self.record(event.event_id, response.status_code, time.perf_counter() - started)

    def record(self, event_id: str, status: int, latency_s: float) -> None:
        """Note one answer (a 202 with its arrival time)."""
        if status == 202:
            self.acknowledged[event_id] = time.time()
        self.latencies_s.append(latency_s)
        self.statuses[status] += 1

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
    recorder = Recorder()
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
