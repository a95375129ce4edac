"""The phases of a run: A/B/C ingest, C's events drained by our worker (D, and G for C), bare arq
(E), the drain with an ordered handler (O), C2's events drained by a handler with limits that never
bind (L), the steady-rate latency run (F, with G for F), and once, C and D again with tracing on (Ct,
Dt). Each phase that writes starts on an empty Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from benchmarks import bare_arq, raw_load
from benchmarks.bodies import signed
from benchmarks.measures import LoadResult, Runs, Tally, drain_rate
from benchmarks.pinned import CpuCost, costed
from benchmarks.stack import data_memory, start_worker
from service.api.ingest import PATH
from service.store.ledger import PENDING_KEY, STATS_KEY
from service.store.stats import WORKERS_KEY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from redis import Redis

    from benchmarks.loader import Loader
    from benchmarks.otlp_sink import OtlpSink
    from benchmarks.plan import Plan
    from benchmarks.stack import Proc


@dataclass
class Bench:
    """What every phase uses: the plan, the work directory, Redis, the load generator, the servers."""

    plan: Plan
    work: Path
    redis: Redis
    redis_url: str
    loader: Loader
    servers: dict[str, tuple[Proc, int]]
    # Ct and Dt export their spans here (benchmarks/otlp_sink.py).
    sink: OtlpSink | None = None

    def url(self, kind: str) -> str:
        """The endpoint of server `kind` (`raw`, `naive`, `ours`)."""
        return f"http://127.0.0.1:{self.servers[kind][1]}{PATH}"

    def stored(self) -> int:
        """Events our ledger accepted since the last FLUSHALL."""
        return int(cast("bytes | None", self.redis.hget(STATS_KEY, "received_total")) or 0)


@dataclass
class WorkerRun:
    """A worker's probe notes and its RSS just before it was stopped."""

    runs: Runs = field(default_factory=dict)
    rss_mb: float = math.nan
    complete: bool = False

    @property
    def rate(self) -> float:
        """Handler starts per second."""
        return drain_rate(self.runs)


@dataclass
class OursRound:
    """C then D on C's events: ingest, drain, G, and Redis memory per event."""

    load: LoadResult
    worker: WorkerRun
    tally: Tally
    queued_bytes_per_event: float
    retained_bytes_per_event: float
    cost: CpuCost


@dataclass
class LatencyRun:
    """F: the steady-rate run, per event from its 202 (and from its send) to its handler's start."""

    load: LoadResult
    worker: WorkerRun
    tally: Tally
    from_202_ms: list[float]
    from_send_ms: list[float]


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


@contextlib.contextmanager
def running_worker(
    bench: Bench, name: str, *, bare: bool = False, handlers: str = "benchmarks.handlers", **extra: str
) -> Iterator[WorkerRun]:
    """Run a worker (ours with a probe handler package, or bare arq) for the block; its notes after it."""
    probe = bench.work / f"{name}.json"
    probe.unlink(missing_ok=True)
    proc = start_worker(name, bench.redis_url, bench.work, probe, bare=bare, handlers=handlers, **extra)
    result = WorkerRun()
    try:
        yield result
    finally:
        if proc.alive():
            result.rss_mb = proc.rss_mb()
        proc.stop()
        if probe.exists():
            result.runs = json.loads(probe.read_text(encoding="utf-8"))


def ingest(bench: Bench, kind: str, set_name: str) -> LoadResult:
    """A or B: post for `ingest_s` (B on an empty Redis)."""
    if kind != "raw":
        bench.redis.flushall()
    return bench.loader.run(bench.url(kind), set_name, duration_s=bench.plan.ingest_s)


def tracing_env(bench: Bench) -> dict[str, str]:
    """The OTEL_* variables of Ct's API and Dt's worker: export every span to the bench's sink."""
    assert bench.sink is not None
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": bench.sink.endpoint}


def ours(bench: Bench, rep: int, *, traced: bool = False) -> OursRound:
    """C: post N events once each through our API (and the CPU each cost); D: one worker drains
    exactly those; G for C.

    `traced`: Ct and Dt, the same with tracing on in the API and the worker (a span per request and
    per handler run, all sampled, exported to the sink).
    """
    bench.redis.flushall()
    empty = data_memory(bench.redis)
    server, env = ("ours-traced", tracing_env(bench)) if traced else ("ours", {})
    load, cost = costed(
        bench.servers[server][0].pid,
        bench.redis,
        lambda: bench.loader.run(bench.url(server), f"c{rep}", progress=bench.stored),
        bench.stored,
    )
    stored = bench.stored()
    queued = data_memory(bench.redis)
    with running_worker(bench, f"worker-d{rep}{'t' if traced else ''}", **env) as worker:
        worker.complete = wait_until(lambda: bench.redis.zcard(PENDING_KEY) == 0, bench.plan.drain_timeout_s)
    acknowledged = set(load.acknowledged) if load.acknowledged is not None else load.accepted
    return OursRound(
        load=load,
        worker=worker,
        tally=Tally.of(acknowledged, stored, worker.runs),
        queued_bytes_per_event=(queued - empty) / max(1, stored),
        retained_bytes_per_event=(data_memory(bench.redis) - empty) / max(1, stored),
        cost=cost,
    )


@dataclass
class DrainRound:
    """O or L: events posted through our API, drained by one worker with one handler package."""

    worker: WorkerRun
    tally: Tally


def ordered(bench: Bench, rep: int) -> DrainRound:
    """O: post `ordered_leads` x 4 lead events, then one worker with one `ordered=True` no-op drains them.

    The same drain as D, with the per-lead order decided at claim time; leads interleave as in a
    live stream (benchmarks/bodies.py `lead_stories`).
    """
    bench.redis.flushall()
    load = bench.loader.run(bench.url("ours"), f"o{rep}", progress=bench.stored)
    stored = bench.stored()
    with running_worker(bench, f"worker-o{rep}", handlers="benchmarks.ordered_handlers") as worker:
        worker.complete = wait_until(lambda: bench.redis.zcard(PENDING_KEY) == 0, bench.plan.drain_timeout_s)
    acknowledged = set(load.acknowledged) if load.acknowledged is not None else load.accepted
    return DrainRound(worker=worker, tally=Tally.of(acknowledged, stored, worker.runs))


@dataclass
class TwoProcessRound:
    """C2: C's events again, through our API with two processes; what the ledger stored of them."""

    load: LoadResult
    stored: int


def ours_2proc(bench: Bench, rep: int) -> TwoProcessRound:
    """C2: post C's N events once each to `oa-webhooks api` with OA_API_PROCESSES=2 (no drain: D did)."""
    bench.redis.flushall()
    load = bench.loader.run(bench.url("ours2"), f"c{rep}", progress=bench.stored)
    return TwoProcessRound(load=load, stored=bench.stored())


def limited(bench: Bench, rep: int, two: TwoProcessRound) -> DrainRound:
    """L: drain what C2 posted (C's events) with one handler whose limits never bind (issue 20).

    `concurrency=50, rate="100000/s"`: D's drain plus the fleet-wide limits decided at claim time.
    """
    with running_worker(bench, f"worker-l{rep}", handlers="benchmarks.limited_handlers") as worker:
        worker.complete = wait_until(lambda: bench.redis.zcard(PENDING_KEY) == 0, bench.plan.drain_timeout_s)
    # L posted nothing: its zero-loss check is that every event the ledger holds ran once (C2's own
    # answers can fall short of what it stored when its load generator gives up on a slow answer).
    return DrainRound(worker=worker, tally=Tally.of(two.stored, two.stored, worker.runs))


def bare(bench: Bench, rep: int) -> WorkerRun:
    """E: `bare_events` no-op jobs queued with arq's `enqueue_job`, drained by one tuned bare arq worker."""
    bench.redis.flushall()
    events = ((f"e{rep}_{index:07d}", "lead.created") for index in range(bench.plan.bare_events))
    asyncio.run(bare_arq.prequeue(bench.redis_url, events))
    with running_worker(bench, f"worker-e{rep}", bare=True) as worker:
        worker.complete = wait_until(
            lambda: bench.redis.zcard(bare_arq.QUEUE) == 0, bench.plan.drain_timeout_s
        )
    return worker


def latency(bench: Bench) -> LatencyRun:
    """F: offer events at a steady rate to our API while one worker runs them; G for F."""
    bench.redis.flushall()
    plan = bench.plan
    events = list(signed("f", int(plan.latency_rate * plan.latency_s)))
    with running_worker(bench, "worker-f") as worker:
        if not wait_until(lambda: cast("int", bench.redis.zcard(WORKERS_KEY)) > 0, 30):
            raise RuntimeError(f"the F worker did not start; see {bench.work}/worker-f.log")
        load = asyncio.run(raw_load.open_loop(bench.url("ours"), events, rate=plan.latency_rate))
        worker.complete = wait_until(lambda: bench.redis.zcard(PENDING_KEY) == 0, plan.drain_timeout_s)
    acknowledged = load.acknowledged or {}
    ran = [(event_id, at) for event_id, at in acknowledged.items() if worker.runs.get(event_id)]
    return LatencyRun(
        load=load,
        worker=worker,
        tally=Tally.of(set(acknowledged), bench.stored(), worker.runs),
        from_202_ms=[(worker.runs[event_id][0] - at) * 1000 for event_id, at in ran],
        from_send_ms=[(worker.runs[event_id][0] - load.sent_at[event_id]) * 1000 for event_id, _ in ran],
    )
