"""A no-op `@on("*")` handler that only notes, in memory, when it started for which event id.

The notes (benchmarks/notes.py) go to the file named by BENCH_PROBE_FILE when the worker exits.
"""

from __future__ import annotations

from benchmarks.notes import record
from workers import Context, Event, on

__all__ = ["probe", "record"]  # bare_arq.py's job notes its runs through `record` too


@on("*")
async def probe(event: Event, _ctx: Context) -> None:
    """Note the start of this run."""
    record(event.id)
