"""E: bare arq, tuned, with a no-op job; what our worker is measured against.

`python -m benchmarks.bare_arq` runs one worker (REDIS_URL) until SIGTERM. `prequeue` fills its
queue with arq's own `enqueue_job`, many at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import func, run_worker

from benchmarks.handlers.probe import record

if TYPE_CHECKING:
    from collections.abc import Iterable

QUEUE = "bench:arq:queue"
FUNCTION = "noop"


async def noop(ctx: dict[str, Any], event_id: str, _event_type: str) -> None:  # noqa: ARG001 - arq's name
    """The job: note its start, nothing else."""
    record(event_id)


class WorkerSettings:
    """Tuned for a no-op job on one process (see /work/shared/notes/arq.md, "Throughput cap")."""

    functions: ClassVar = [func(noop, name=FUNCTION)]
    queue_name = QUEUE
    max_jobs = 300
    poll_delay = 0.01
    queue_read_limit = 3000
    keep_result = 0
    log_results = False
    health_check_interval = 3600
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


async def prequeue(redis_url: str, events: Iterable[tuple[str, str]], *, concurrency: int = 100) -> int:
    """Enqueue `(event id, type)` jobs with arq's `enqueue_job`, `concurrency` at a time."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=QUEUE)
    queued = 0
    try:
        batch: list[tuple[str, str]] = []
        for event in [*events, None]:
            if event is not None:
                batch.append(event)
            if batch and (event is None or len(batch) == concurrency):
                jobs = await asyncio.gather(
                    *(pool.enqueue_job(FUNCTION, eid, etype, _job_id=eid) for eid, etype in batch)
                )
                queued += sum(job is not None for job in jobs)
                batch = []
    finally:
        await pool.aclose()
    return queued


if __name__ == "__main__":
    run_worker(WorkerSettings)  # type: ignore[arg-type]
