"""Claim many due jobs in one round trip, where arq claims one job per four; and decide the order.

arq's `Worker.start_jobs` claims jobs one at a time: WATCH the job's in-progress key, EXISTS,
ZSCORE, then MULTI/PSETEX/EXEC. Four round trips per job, and with `appendfsync always` each EXEC
also waits for a disk flush, all in the poll loop before the next job can start: that loop, not
the handlers, capped a worker at about 1,300 no-op jobs/s here. This script makes the same
decision for every candidate at once, atomically (so no WATCH is needed): a job is claimed if
nobody holds its in-progress key and it is still in the queue with a score that is due.

With `ordered=True` handlers, the same script is the one place that decides what may run, for
the whole fleet: an event whose ordered handlers must wait for an earlier event is not claimed
but deferred, and a claimed event carries the names of its handlers that must sit this run out
(workers/runtime/order.py explains the rules). Without ordered handlers the script runs the plain claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from arq.constants import in_progress_key_prefix

from service.store.held import HELD_KEY
from service.store.scripts import load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


class ClaimedJob(NamedTuple):
    """A job this worker now holds: its id, its queue score, and its ordered handlers that must wait."""

    id: str
    score: int
    waiting: tuple[str, ...] = ()


class Claimer:
    """Claims due jobs of one queue for one worker.

    `order` is `workers.order.order_argument(...)`: empty when no handler is ordered.
    """

    def __init__(self, redis: Redis, *, queue_name: str, claim_ttl_ms: int, order: bytes = b"") -> None:
        self.queue_name = queue_name
        self.claim_ttl_ms = claim_ttl_ms
        self.order = order
        self._script: AsyncScript = redis.register_script(load_script("workers.runtime", "claim-2"))

    async def claim(self, job_ids: list[bytes], *, limit: int, now_ms: int) -> list[ClaimedJob]:
        """Claim at most `limit` of `job_ids` (queue order); returns each claimed job."""
        if limit <= 0 or not job_ids:
            return []
        args: list[bytes | str | int] = [
            now_ms,
            self.claim_ttl_ms,
            limit,
            in_progress_key_prefix,
            self.order,
            *job_ids,
        ]
        reply = await self._script(keys=[self.queue_name, HELD_KEY], args=args)
        if not self.order:
            return [ClaimedJob(reply[i].decode(), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]
        return [
            ClaimedJob(
                reply[i].decode(), int(float(reply[i + 1])), tuple(name.decode() for name in reply[i + 2])
            )
            for i in range(0, len(reply), 3)
        ]
