"""Notes every run of every event as one line, `<event id> <time.time()>`, in FAILOVER_PROBE_FILE.

The note is outside Redis on purpose: a failover may lose Redis writes, and the drill must still
count every run, including the ones whose outcome the new primary never saw. One `write()` on an
O_APPEND file per run keeps the lines of two workers whole.
"""

from __future__ import annotations

import os
import time

from workers import Context, Event, on

PROBE_FILE_VARIABLE = "FAILOVER_PROBE_FILE"


@on("*")
async def note_run(event: Event, _ctx: Context) -> None:
    """Append this event's id to the probe file."""
    path = os.environ.get(PROBE_FILE_VARIABLE)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{event.id} {time.time()}\n".encode())
        finally:
            os.close(fd)
