"""A no-op `@on("*")` handler with limits that never bind (concurrency=50, rate="100000/s"), for L.

L is D's drain with the fleet-wide limits decided at claim time (workers/runtime/protect.py): what
a handler with limits costs when they do not hold it back. Notes go through `benchmarks.notes`.
"""

from __future__ import annotations

from benchmarks.notes import record
from workers import Context, Event, on


@on("*", concurrency=50, rate="100000/s")
async def limited_probe(event: Event, _ctx: Context) -> None:
    """Note the start of this run."""
    record(event.id)
