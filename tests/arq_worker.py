"""Our arq worker in-process, as `oa-webhooks worker` builds it, run one step at a time.

Jobs go through arq's own `run_job` (our job, then `on_job_end`, then arq's `finish_job`), so a test
sees what arq really deletes and when, without a poll loop's timing.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from service.store import queue
from workers.runtime.main import build_worker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx

    from service.settings import Settings


class ArqWorker:
    """One `build_worker` worker; `run` and `drain` claim with our claim script and run with arq's run_job."""

    def __init__(self, settings: Settings, redis: Any, http: httpx.AsyncClient) -> None:
        self.redis = redis
        self.worker = build_worker(settings, redis, http=http, worker_id="test:1")

    @property
    def state(self) -> Any:
        """The WorkerState every job of this worker shares (arq's ctx["oa"])."""
        return self.worker.ctx["oa"]

    def between_finish_and_finish_job(self, hook: Callable[[], Awaitable[None]] | None) -> None:
        """Run `hook` where arq calls `on_job_end`: after our job and its finish script, before finish_job."""

        async def on_job_end(ctx: dict[Any, Any]) -> None:
            if hook is not None:
                await hook()

        self.worker.on_job_end = on_job_end

    async def run(self, event_id: str) -> None:
        """Claim the event's job (our claim script) and run it to its end with arq's own run_job."""
        await self.worker.start_jobs([event_id.encode()])
        assert event_id in self.worker.tasks, "the job was not claimed"
        await self.worker.tasks.pop(event_id)

    async def drain(self, *, rounds: int = 100) -> None:
        """Run due jobs, as many at once as the worker takes, until none is due."""
        for _ in range(rounds):
            due = await self.redis.zrangebyscore(queue.QUEUE_NAME, "-inf", time.time_ns() // 1_000_000)
            if not due:
                return
            await self.worker.start_jobs(due)
            tasks = list(self.worker.tasks.values())
            self.worker.tasks.clear()
            await asyncio.gather(*tasks)
        raise AssertionError(f"jobs still due after {rounds} rounds")
