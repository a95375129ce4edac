"""A no-op `@on("lead.*", ordered=True)` handler that notes its starts, as benchmarks/handlers/probe.py does.

Importing `record` from there would register that module's unordered handler too; this package
must hold exactly one handler, the ordered one, so the notes are shared through `benchmarks.notes`.
"""

from __future__ import annotations

from benchmarks.notes import record
from workers import Context, Event, on


@on("lead.*", ordered=True)
async def ordered_probe(event: Event, _ctx: Context) -> None:
    """Note the start of this run."""
    record(event.id)
