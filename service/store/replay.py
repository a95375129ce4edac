"""Replay finished events: re-run their handlers through the same queue as live events.

One Lua script (service/store/lua/replay-7.lua) per event checks that it is finished (done, dead or
unhandled), resets the handlers that should run, records the replay on the event (when, which
handlers) and queues a new arq job; retries and dead letters then work as for a live event.

An event is finished only once arq has closed its last job too: the worker's finish script marks it
done or dead just before arq deletes the job, and a replay in between would be deleted with it. So
while a worker's claim on the job lasts, the answer is `FINISHING` ("replay again in a moment").

Which handlers run:
- `handler="pkg.module.func"`: only that one, even when others of the event's type never ran
  (a handler deployed later backfills past events this way, and the others do not run again);
- by default: a dead event's dead handlers, or every handler of a done (or unhandled) event's type.

With `min_replicas` (`OA_REDIS_MIN_REPLICAS`), a replay returns only once that many replicas hold it,
as ingest's 202 does, and raises `NotReplicated` otherwise (service/store/replicas.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from service.store import queue
from service.store.ledger import DEAD_KEY, PENDING_KEY, event_key
from service.store.replicas import run_confirmed
from service.store.scripts import load_script

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from redis.asyncio import Redis

DEFAULT_RATE_PER_S = 50.0


class ReplayStatus(StrEnum):
    """What a replay of one event did."""

    REPLAYED = "replayed"
    DRY_RUN = "dry-run"  # would have been replayed
    NOT_FINAL = "not-final"  # still queued or running (or purged): nothing done
    FINISHING = "finishing"  # done or dead, but a worker is still closing its last run: nothing done
    MISSING = "missing"  # no such event in the ledger


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The outcome for one event; `handlers` were reset (empty: every handler of its type runs)."""

    id: str
    status: ReplayStatus
    handlers: tuple[str, ...] = ()
    state: str | None = None


class Replayer:
    """Replays events; construct once per connection."""

    def __init__(
        self, redis: Redis, *, queue_expiry_ms: int, min_replicas: int = 0, timeout_s: float = 2.0
    ) -> None:
        self.redis = redis
        self.queue_expiry_ms = queue_expiry_ms
        self.min_replicas = min_replicas
        self.timeout_s = timeout_s
        self._script = redis.register_script(load_script("service.store", "replay-7"))

    async def replay(
        self,
        event_id: str,
        *,
        handler: str | None = None,
        dry_run: bool = False,
        dead_only: bool = False,
        now_ms: int | None = None,
    ) -> ReplayResult:
        """Replay one event (see the module docstring); `dead_only` refuses anything but a dead one."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        # The type goes into the job; a missing entry is answered by the script.
        raw_type = await self.redis.hget(event_key(event_id), "type")  # type: ignore[misc]
        job = queue.encode_job(event_id, raw_type.decode() if raw_type else "", enqueue_ms=now)
        arg = {
            "id": event_id,
            "now_ms": str(now),
            "job": job.decode(),
            "queue_expiry_ms": str(self.queue_expiry_ms),
            "handlers": [handler] if handler else [],
            "dead_only": dead_only,
            "dry_run": dry_run,
        }
        keys = [
            event_key(event_id),
            queue.job_key(event_id),
            queue.QUEUE_NAME,
            PENDING_KEY,
            DEAD_KEY,
            queue.retry_key(event_id),
            queue.in_progress_key(event_id),
        ]
        reply = await run_confirmed(
            self.redis,
            self._script,
            keys=keys,
            args=[json.dumps(arg)],
            replicas=0 if dry_run else self.min_replicas,
            timeout_s=self.timeout_s,
            what=f"replay of {event_id!r}",
        )
        reply = [x.decode() for x in reply]
        status = ReplayStatus(reply[0])
        if status in (ReplayStatus.NOT_FINAL, ReplayStatus.FINISHING):
            return ReplayResult(event_id, status, state=reply[1])
        return ReplayResult(event_id, status, tuple(reply[1:]))

    async def replay_many(
        self,
        event_ids: Iterable[str],
        *,
        handler: str | None = None,
        dry_run: bool = False,
        rate_per_s: float | None = DEFAULT_RATE_PER_S,
        on_result: Callable[[ReplayResult], None] | None = None,
    ) -> list[ReplayResult]:
        """Replay each event in turn, at most `rate_per_s` a second so live traffic keeps its share."""
        interval_s = 0.0 if dry_run or not rate_per_s else 1 / rate_per_s
        results = []
        started = time.monotonic()
        for count, event_id in enumerate(event_ids):
            if interval_s:
                # Paced against the start, so the rate holds whatever each call costs.
                await asyncio.sleep(max(0.0, started + count * interval_s - time.monotonic()))
            result = await self.replay(event_id, handler=handler, dry_run=dry_run)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results
