"""A no-op `@on("*")` handler that only notes, in memory, when it started for which event id.

Nothing leaves the process while it runs, so it costs what a no-op costs (a dict update). When the
worker exits, the notes go to the JSON file named by BENCH_PROBE_FILE: `{event id: [start, ...]}`,
one `time.time()` per run, so the bench can count runs per id and measure latency.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from workers import Context, Event, on

PROBE_FILE_VARIABLE = "BENCH_PROBE_FILE"
_starts: dict[str, list[float]] = {}


@on("*")
async def probe(event: Event, _ctx: Context) -> None:
    """Note the start of this run."""
    record(event.id)


def record(event_id: str) -> None:
    """Note a run's start; also called by the bare arq job of benchmarks/bare_arq.py."""
    _starts.setdefault(event_id, []).append(time.time())


@atexit.register
def _dump() -> None:
    path = os.environ.get(PROBE_FILE_VARIABLE)
    if path:
        Path(path).write_text(json.dumps(_starts), encoding="utf-8")
