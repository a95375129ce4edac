"""The worker's side of the ledger: claim an event's due handlers, then record how they went.

Each handler of an event has its own state in the ledger hash (`h:<handler>`), so a retry
re-runs only the handlers that have not yet succeeded. Attempts are counted when a run
*starts*, so a worker killed mid-handler still uses up an attempt and a crash loop ends in
dead letters instead of running forever.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from service import queue
from service.ledger import DEAD_KEY, MINUTE_STATS_TTL_S, PENDING_KEY, STATS_KEY, event_key, minute_stats_key
from service.stats import (
    HANDLER_BUCKETS_S,
    HANDLER_HISTOGRAM_KEY,
    LATENCY_BUCKETS_S,
    LATENCY_HISTOGRAM_KEY,
    SEPARATOR,
    bucket_index,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

# KEYS: event ; ARGV: now ms, handler names...
# Returns nil (no entry), {state} (already finished) or {'processing', body, received_ms, due..json...}
_BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'done' or state == 'dead' or state == 'purged' then return {state} end
redis.call('HSET', KEYS[1], 'state', 'processing', 'processing_ms', ARGV[1])
local entry = redis.call('HMGET', KEYS[1], 'body', 'received_ms')
local out = {'processing', entry[1], entry[2]}
local now = tonumber(ARGV[1])
for i = 2, #ARGV do
  local name = 'h:' .. ARGV[i]
  local raw = redis.call('HGET', KEYS[1], name)
  local h
  if raw then h = cjson.decode(raw) else h = {state = 'pending', attempts = 0, next_ms = 0} end
  local due = '0'
  if h.state == 'pending' and tonumber(h.next_ms) <= now then
    h.attempts = h.attempts + 1
    due = '1'
  end
  raw = cjson.encode(h)
  if due == '1' then redis.call('HSET', KEYS[1], name, raw) end
  out[#out + 1] = due .. raw
end
return out
"""


class HandlerStatus(StrEnum):
    """Where one handler stands for one event."""

    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


class EventOutcome(StrEnum):
    """How a run of an event ended."""

    DONE = "done"
    UNHANDLED = "unhandled"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(slots=True)
class HandlerState:
    """One handler's record for one event, stored as JSON in the ledger."""

    state: HandlerStatus = HandlerStatus.PENDING
    attempts: int = 0
    next_ms: int = 0
    first_error: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    finished_ms: int | None = None

    @classmethod
    def from_json(cls, raw: str | bytes) -> HandlerState:
        """Read a stored state, ignoring fields a newer version may add."""
        data = json.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["state"] = HandlerStatus(known.get("state", "pending"))
        known["attempts"] = int(known.get("attempts", 0))
        known["next_ms"] = int(known.get("next_ms", 0))
        return cls(**known)

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(slots=True)
class Claimed:
    """An event claimed for a run: its body and its handlers' states; `due` are the ones to run now."""

    body: bytes
    received_ms: int
    handlers: dict[str, HandlerState]
    due: list[str] = field(default_factory=list)


class Journal:
    """Ledger reads and writes for the worker. One per worker connection."""

    def __init__(self, redis: Redis, *, retention_s: int, queue_expiry_ms: int) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.queue_expiry_ms = queue_expiry_ms
        self._begin = redis.register_script(_BEGIN)

    async def begin(self, event_id: str, handler_names: list[str], *, now_ms: int) -> Claimed | str | None:
        """Mark the event `processing` and count an attempt for each due handler, atomically.

        Returns None when the ledger has no entry, the state name when it is already finished.
        """
        reply = await self._begin(keys=[event_key(event_id)], args=[now_ms, *handler_names])
        if reply is None:
            return None
        if len(reply) == 1:
            return str(reply[0].decode())
        claimed = Claimed(body=reply[1], received_ms=int(reply[2]), handlers={})
        for name, raw in zip(handler_names, reply[3:], strict=True):
            claimed.handlers[name] = HandlerState.from_json(raw[1:])
            if raw[:1] == b"1":
                claimed.due.append(name)
        return claimed

    async def finish(
        self,
        event_id: str,
        event_type: str,
        *,
        outcome: EventOutcome,
        changed: dict[str, HandlerState],
        now_ms: int,
        durations_s: dict[str, float] | None = None,
        latency_s: float | None = None,
    ) -> None:
        """Record the handlers that ran and the event's new state, with its counters, in one transaction.

        `durations_s` (per handler that ran) and `latency_s` (receipt to success) feed the histograms.
        """
        key = event_key(event_id)
        minute = minute_stats_key(now_ms)
        async with self.redis.pipeline(transaction=True) as tx:
            for name, seconds in (durations_s or {}).items():
                series = f"{event_type}{SEPARATOR}{name}{SEPARATOR}"
                tx.hincrby(HANDLER_HISTOGRAM_KEY, series + str(bucket_index(seconds, HANDLER_BUCKETS_S)), 1)
                tx.hincrbyfloat(HANDLER_HISTOGRAM_KEY, series + "sum", seconds)
            if latency_s is not None:
                series = f"{event_type}{SEPARATOR}"
                tx.hincrby(LATENCY_HISTOGRAM_KEY, series + str(bucket_index(latency_s, LATENCY_BUCKETS_S)), 1)
                tx.hincrbyfloat(LATENCY_HISTOGRAM_KEY, series + "sum", latency_s)
            if changed:
                tx.hset(key, mapping={f"h:{name}": state.to_json() for name, state in changed.items()})
            if outcome is EventOutcome.RETRY:
                tx.hset(key, mapping={"state": "queued"})
                # arq never refreshes a job's expiry on retry; we do, so a long schedule cannot expire.
                tx.pexpire(queue.job_key(event_id), self.queue_expiry_ms)
                counter = "retried"
            elif outcome is EventOutcome.DEAD:
                tx.hset(key, mapping={"state": "dead", "dead_ms": now_ms})
                tx.zrem(PENDING_KEY, event_id)
                tx.zadd(DEAD_KEY, {event_id: now_ms})
                counter = "failed"
            else:
                tx.hset(key, mapping={"state": "done", "done_ms": now_ms})
                tx.expire(key, self.retention_s)
                tx.zrem(PENDING_KEY, event_id)
                counter = "processed"
                if outcome is EventOutcome.UNHANDLED:
                    tx.hincrby(STATS_KEY, "unhandled_total", 1)
                    tx.hincrby(STATS_KEY, f"unhandled:{event_type}", 1)
                    tx.hincrby(minute, "unhandled", 1)
            tx.hincrby(STATS_KEY, f"{counter}_total", 1)
            tx.hincrby(STATS_KEY, f"{counter}:{event_type}", 1)
            tx.hincrby(minute, counter, 1)
            tx.expire(minute, MINUTE_STATS_TTL_S)
            await tx.execute()
