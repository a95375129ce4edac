"""The load generator for A, B and C: wrk where it is installed (or can be), else httpx.

Both send each prepared event once. A set is prepared once and may be posted in several runs,
since B and C start each run on an emptied Redis.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from benchmarks import httpx_load, wrk_load

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from benchmarks.bodies import Signed
    from benchmarks.measures import LoadResult


class Loader:
    """Posts prepared sets of signed events with `threads` x `connections` (wrk) or `connections` (httpx)."""

    def __init__(
        self, wrk: str | None, work: Path, *, threads: int, connections: int, cpus: str | None = None
    ) -> None:
        self.wrk = wrk
        self.cpus = cpus  # wrk only: a `taskset -c` list
        self.work = work
        self.threads = threads
        self.connections = connections
        self._sets: dict[str, list[Signed]] = {}
        self._names: list[str] = []

    @property
    def name(self) -> str:
        """`wrk` or `httpx`."""
        return "wrk" if self.wrk else "httpx"

    def prepare(self, name: str, events: Iterable[Signed]) -> int:
        """Keep a set of events under `name` (wrk: one file per thread); returns how many."""
        self._names.append(name)
        if self.wrk:
            return wrk_load.write_thread_files(self.work / name, events, self.threads)
        self._sets[name] = list(events)
        return len(self._sets[name])

    def discard(self) -> None:
        """Forget every prepared set (and delete wrk's files: hundreds of MB in a full run)."""
        self._sets.clear()
        for name in self._names:
            for path in self.work.glob(f"{name}.*"):
                path.unlink()
        self._names.clear()

    def run(
        self,
        url: str,
        name: str,
        *,
        duration_s: float | None = None,
        progress: Callable[[], int] | None = None,
    ) -> LoadResult:
        """Post set `name` for `duration_s`, or, without it, every event of the set once
        (`progress`, the count of events stored so far, lets wrk's run end should it stall)."""
        if self.wrk:
            return wrk_load.run(
                self.wrk,
                url,
                self.work / name,
                threads=self.threads,
                connections=self.connections,
                duration_s=duration_s,
                progress=progress,
                cpus=self.cpus,
            )
        return asyncio.run(
            httpx_load.closed_loop(url, self._sets[name], connections=self.connections, duration_s=duration_s)
        )
