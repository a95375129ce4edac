"""P: A, B and C again with the server on one core and wrk on the other; and the CPU an event costs.

Issue 23's method, the one its targets are held to: the server under test is pinned to CPU 0 (every
thread, as `taskset -a -p` would), wrk to CPU 1 with one thread and 32 connections, and Redis is
left unpinned. A host with a busy neighbour sees us this way: our Redis work is charged to the same
two cores as the load. Rounds of A, B, C interleaved, `ingest_s` each, on unique signed bodies (B
and C on an emptied Redis); the servers are unpinned again afterwards.

The CPU an accepted event costs (`CpuCost`): the API process's user and system time from
/proc/<pid>/stat, and Redis's `used_cpu_user` + `used_cpu_sys` from `INFO cpu`, read before and
after a C run and divided by the events it stored.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from benchmarks.loader import Loader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from redis import Redis

    from benchmarks.measures import LoadResult
    from benchmarks.phases import Bench

SERVER_CPU = 0
LOAD_CPU = 1
THREADS = 1
CONNECTIONS = 32
ROUNDS = 3
SET_NAME = "pinned"


def available() -> bool:
    """Whether CPUs 0 and 1 are both ours to pin to."""
    return {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0)


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def servers_pinned(pids: list[int]) -> Iterator[None]:
    """Every thread of these processes on `SERVER_CPU` for the block, on every CPU after."""
    every = os.sched_getaffinity(0)
    for pid in pids:
        _set_affinity(pid, {SERVER_CPU})
    try:
        yield
    finally:
        for pid in pids:
            _set_affinity(pid, every)


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads (Linux /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client: Redis) -> float:
    """User plus system CPU seconds of the Redis server, from `INFO cpu`."""
    info = cast("dict[str, Any]", client.info("cpu"))
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class CpuCost:
    """CPU time per accepted event, in microseconds, of the API process and of Redis."""

    api_us: float
    redis_us: float
    events: int


def costed(
    api_pid: int, redis: Redis, run: Callable[[], LoadResult], stored: Callable[[], int]
) -> tuple[LoadResult, CpuCost]:
    """Run a C load and charge the CPU that the API process and Redis used to each event stored."""
    api0, redis0, stored0 = process_cpu_s(api_pid), redis_cpu_s(redis), stored()
    load = run()
    api1, redis1, events = process_cpu_s(api_pid), redis_cpu_s(redis), stored() - stored0
    per = 1e6 / events if events else math.nan
    return load, CpuCost(api_us=(api1 - api0) * per, redis_us=(redis1 - redis0) * per, events=events)


@dataclass
class PinnedRun:
    """The pinned rounds: A, B and C per round, and C's CPU per event."""

    limit: list[LoadResult] = field(default_factory=list)
    naive: list[LoadResult] = field(default_factory=list)
    ours: list[LoadResult] = field(default_factory=list)
    cost: list[CpuCost] = field(default_factory=list)


def loader_for(wrk: str, work: Path) -> Loader:
    """wrk with one thread and 32 connections on `LOAD_CPU`."""
    return Loader(wrk, work, threads=THREADS, connections=CONNECTIONS, cpus=str(LOAD_CPU))


def rounds(bench: Bench, loader: Loader, reps: int) -> PinnedRun:
    """`reps` rounds of A, B, C, each for the plan's `ingest_s`, with the three servers pinned."""
    run = PinnedRun()
    seconds = bench.plan.ingest_s
    ours_pid = bench.servers["ours"][0].pid
    with servers_pinned([bench.servers[kind][0].pid for kind in ("raw", "naive", "ours")]):
        for _ in range(reps):
            run.limit.append(loader.run(bench.url("raw"), SET_NAME, duration_s=seconds))
            bench.redis.flushall()
            run.naive.append(loader.run(bench.url("naive"), SET_NAME, duration_s=seconds))
            bench.redis.flushall()
            load, cost = costed(
                ours_pid,
                bench.redis,
                lambda: loader.run(bench.url("ours"), SET_NAME, duration_s=seconds),
                bench.stored,
            )
            run.ours.append(load)
            run.cost.append(cost)
    return run
