"""The probe handlers' notes: in memory, when each run started for which event id.

Nothing leaves the process while it runs, so a probe costs what a no-op costs (a dict update). When
the worker exits, the notes go to the JSON file named by BENCH_PROBE_FILE: `{event id: [start, ...]}`,
one `time.time()` per run, so the bench can count runs per id and measure latency.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

PROBE_FILE_VARIABLE = "BENCH_PROBE_FILE"
_starts: dict[str, list[float]] = {}


def record(event_id: str) -> None:
    """Note a run's start."""
    _starts.setdefault(event_id, []).append(time.time())


@atexit.register
def _dump() -> None:
    path = os.environ.get(PROBE_FILE_VARIABLE)
    if path:
        Path(path).write_text(json.dumps(_starts), encoding="utf-8")
