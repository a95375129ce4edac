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
from importlib.resources import files
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


# One script instead of a MULTI of a dozen commands: the same atomicity, far less client CPU.
# KEYS: event, job, pending, dead, stats, minute stats, handler histogram, latency histogram
# ARGV: id, outcome, now ms, retention s, queue expiry ms, type, minute ttl s,
#       latency bucket field, latency sum field, latency s,
#       n changed handlers, (field, state json) * n, n durations, (bucket field, sum field, s) * n
_FINISH = """
local id, outcome, now, type = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local i = 12
for _ = 1, tonumber(ARGV[11]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local durations = tonumber(ARGV[i])
i = i + 1
for _ = 1, durations do
  redis.call('HINCRBY', KEYS[7], ARGV[i], 1)
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
if ARGV[8] ~= '' then
  redis.call('HINCRBY', KEYS[8], ARGV[8], 1)
  redis.call('HINCRBYFLOAT', KEYS[8], ARGV[9], ARGV[10])
end
local counter
if outcome == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'queued')
  -- arq never refreshes a job's expiry on retry; we do, so a long schedule cannot expire.
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  counter = 'retried'
elseif outcome == 'dead' then
  redis.call('HSET', KEYS[1], 'state', 'dead', 'dead_ms', now)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], now, id)
  counter = 'failed'
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'done_ms', now)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[3], id)
  counter = 'processed'
  if outcome == 'unhandled' then
    redis.call('HINCRBY', KEYS[5], 'unhandled_total', 1)
    redis.call('HINCRBY', KEYS[5], 'unhandled:' .. type, 1)
    redis.call('HINCRBY', KEYS[6], 'unhandled', 1)
  end
end
redis.call('HINCRBY', KEYS[5], counter .. '_total', 1)
redis.call('HINCRBY', KEYS[5], counter .. ':' .. type, 1)
redis.call('HINCRBY', KEYS[6], counter, 1)
redis.call('EXPIRE', KEYS[6], ARGV[7])
"""


_COUNT_PAYLOAD_MISMATCH = (files("workers") / "lua" / "count_payload_mismatch.lua").read_text(
    encoding="utf-8"
)


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
        self._finish = redis.register_script(_FINISH)
        self._count_mismatch = redis.register_script(_COUNT_PAYLOAD_MISMATCH)

    async def count_payload_mismatch(self, event_id: str, event_type: str) -> bool:
        """Count the event in `payload_mismatch_total` and per type, once per event; True if counted now."""
        return bool(await self._count_mismatch(keys=[event_key(event_id), STATS_KEY], args=[event_type]))

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
        """Record the handlers that ran and the event's new state, with its counters, in one script.

        `durations_s` (per handler that ran) and `latency_s` (receipt to success) feed the histograms.
        """
        latency: list[str | int | float] = ["", "", 0.0]
        if latency_s is not None:
            series = f"{event_type}{SEPARATOR}"
            latency = [series + str(bucket_index(latency_s, LATENCY_BUCKETS_S)), series + "sum", latency_s]
        args: list[str | int | float] = [
            event_id,
            outcome.value,
            now_ms,
            self.retention_s,
            self.queue_expiry_ms,
            event_type,
            MINUTE_STATS_TTL_S,
            *latency,
            len(changed),
        ]
        for name, state in changed.items():
            args += [f"h:{name}", state.to_json()]
        durations = durations_s or {}
        args.append(len(durations))
        for name, seconds in durations.items():
            series = f"{event_type}{SEPARATOR}{name}{SEPARATOR}"
            args += [series + str(bucket_index(seconds, HANDLER_BUCKETS_S)), series + "sum", seconds]
        keys = [
            event_key(event_id),
            queue.job_key(event_id),
            PENDING_KEY,
            DEAD_KEY,
            STATS_KEY,
            minute_stats_key(now_ms),
            HANDLER_HISTOGRAM_KEY,
            LATENCY_HISTOGRAM_KEY,
        ]
        await self._finish(keys=keys, args=args)
