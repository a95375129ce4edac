"""Claim many due jobs in one round trip, where arq claims one job per four; and decide what may run.

arq's `Worker.start_jobs` claims jobs one at a time: WATCH the job's in-progress key, EXISTS,
ZSCORE, then MULTI/PSETEX/EXEC. Four round trips per job, and with `appendfsync always` each EXEC
also waits for a disk flush, all in the poll loop before the next job can start: that loop, not
the handlers, capped a worker at about 1,300 no-op jobs/s here. This script makes the same
decision for every candidate at once, atomically (so no WATCH is needed): a job is claimed if
nobody holds its in-progress key and it is still in the queue with a score that is due.

The same script is the one place that decides what may run, for the whole fleet: order
(workers/runtime/order.py), limits, pauses and breakers (workers/runtime/protect.py). An event none
of whose handlers may start now is not claimed but deferred, and a claimed event carries the names
of its handlers that must sit this run out, and why. While no handler is ordered or limited and
nothing is paused or tripped, the script runs the plain claim, which reads no event.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from arq.constants import in_progress_key_prefix

from service.store.handlers import BREAKER_KEY, PAUSED_KEY
from service.store.held import HELD_KEY
from service.store.scripts import load_script
from workers.runtime.protect import claim_plan

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


_NOTHING: Mapping[str, Any] = MappingProxyType({})
# The plan without handlers: the plain claim (while nothing is paused or tripped).
PLAIN = claim_plan([], job_ttl_ms=7 * 86_400_000, slot_ttl_ms=65_000, probe_ms=30_000)


class ClaimedJob(NamedTuple):
    """A job this worker now holds, and what the claim decided for its handlers.

    `skip`: handler -> why it must sit this run out ("order", "paused", "tripped", "concurrency",
    "rate"); `again_ms`: when the job should look again for those; `probes`: handlers whose run is
    their breaker's probe; `waited`: handler -> (what it waited for, since when, ms) for a handler
    that runs now after waiting; `at_ms`: the claim's clock, which the run's `begin` uses, so that
    it counts an attempt for exactly the handlers the claim let through.
    """

    id: str
    score: int
    skip: Mapping[str, str] = _NOTHING
    again_ms: int | None = None
    probes: frozenset[str] = frozenset()
    waited: Mapping[str, tuple[str, int]] = _NOTHING
    at_ms: int | None = None

    @property
    def waiting(self) -> tuple[str, ...]:
        """The handlers that sit this run out."""
        return tuple(self.skip)


def _claimed(raw_id: bytes, raw_score: bytes, raw_extra: bytes, at_ms: int) -> ClaimedJob:
    score = int(float(raw_score))
    if not raw_extra:
        return ClaimedJob(raw_id.decode(), score, at_ms=at_ms)
    extra = orjson.loads(raw_extra)
    return ClaimedJob(
        raw_id.decode(),
        score,
        skip=extra.get("s") or {},  # Lua's cjson writes an empty table as {}, list or map
        again_ms=extra.get("a"),
        probes=frozenset(extra.get("p") or ()),
        waited={name: (why, int(since)) for name, (why, since) in (extra.get("w") or {}).items()},
        at_ms=at_ms,
    )


class Claimer:
    """Claims due jobs of one queue for one worker; `plan` is `workers.runtime.protect.claim_plan(...)`."""

    def __init__(self, redis: Redis, *, queue_name: str, claim_ttl_ms: int, plan: bytes = PLAIN) -> None:
        self.queue_name = queue_name
        self.claim_ttl_ms = claim_ttl_ms
        self.plan = plan
        self._script: AsyncScript = redis.register_script(load_script("workers.runtime", "claim-4"))

    async def claim(self, job_ids: list[bytes], *, limit: int, now_ms: int) -> list[ClaimedJob]:
        """Claim at most `limit` of `job_ids` (queue order); returns each claimed job."""
        if limit <= 0 or not job_ids:
            return []
        args: list[bytes | str | int] = [
            now_ms,
            self.claim_ttl_ms,
            limit,
            in_progress_key_prefix,
            self.plan,
            *job_ids,
        ]
        reply = await self._script(keys=[self.queue_name, HELD_KEY, PAUSED_KEY, BREAKER_KEY], args=args)
        return [_claimed(reply[i], reply[i + 1], reply[i + 2], now_ms) for i in range(0, len(reply), 3)]
