"""The worker's side of the ledger: claim an event's due handlers, then record how they went.

Each handler of an event has its own state in the ledger hash (`h:<handler>`), so a retry
re-runs only the handlers that have not yet succeeded. Attempts are counted when a run
*starts*, so a worker killed mid-handler still uses up an attempt and a crash loop ends in
dead letters instead of running forever.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

from service.store import queue
from service.store.handlers import BREAKER_KEY, FAILS_KEY, slots_key, waiting_key
from service.store.held import HELD_KEY
from service.store.ledger import (
    DEAD_KEY,
    MINUTE_STATS_TTL_S,
    PENDING_KEY,
    STATS_KEY,
    event_key,
    minute_stats_key,
)
from service.store.scripts import load_script
from service.store.stats import (
    HANDLER_BUCKETS_S,
    HANDLER_HISTOGRAM_KEY,
    LATENCY_BUCKETS_S,
    LATENCY_HISTOGRAM_KEY,
    SEPARATOR,
    bucket_index,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis


_MAX_TRACEBACK_CHARS = 8000
# Attempts kept per handler for `events show`: a handler retried 16 times keeps its last 10, each
# error with a shortened traceback (first_error and last_error keep theirs whole).
RUNS_KEPT = 10


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
    WAITING = "waiting"  # only ordered handlers are pending, and they wait for an earlier event
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
    # The last RUNS_KEPT attempts, oldest first, across replays: [start ms, duration ms, attempt
    # number] and, when it failed, {"type", "message", "traceback"}; with tracing on, then the run
    # span's trace id and span id (after a null for a run that did not fail: workers/runtime/spans.py).
    # `attempts` counts every attempt since the last replay.
    runs: list[list[Any]] = field(default_factory=list)
    replays: int = 0

    @classmethod
    def from_json(cls, raw: str | bytes) -> HandlerState:
        """Read a stored state, ignoring fields a newer version may add."""
        data = json.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["state"] = HandlerStatus(known.get("state", "pending"))
        known["attempts"] = int(known.get("attempts", 0))
        known["next_ms"] = int(known.get("next_ms", 0))
        known["runs"] = list(known.get("runs") or [])
        known["replays"] = int(known.get("replays") or 0)
        return cls(**known)

    def with_run(self, run: list[Any]) -> list[list[Any]]:
        """`runs` with one more attempt, the oldest dropped past `RUNS_KEPT`."""
        return [*self.runs, run][-RUNS_KEPT:]

    def to_json(self) -> str:
        """The stored form, without the fields that hold their defaults (null, 0, []).

        A done handler's record is then about 90 bytes, so that the ledger hash stays in Redis's
        compact encoding below the next allocation size (make bench: bytes per retained event).
        """
        data = {k: v for k, v in asdict(self).items() if k == "state" or v not in (None, 0, [])}
        return json.dumps(data, separators=(",", ":"))


def error_type(exc: BaseException) -> str:
    """An exception's type as stored and shown: `ValueError`, `httpx.HTTPStatusError`."""
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def describe_error(exc: BaseException, *, now_ms: int) -> dict[str, Any]:
    """What a dead letter keeps of an exception: type, message, traceback, time."""
    return {
        "type": error_type(exc),
        "message": str(exc)[:1000],
        "traceback": "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:],
        "at_ms": now_ms,
    }


@dataclass(slots=True)
class Claimed:
    """An event claimed for a run: its body and its handlers' states; `due` are the ones to run now.

    `traceparent`: the webhook span's, stored by the API while tracing was on ('' for none).
    """

    body: bytes
    received_ms: int
    handlers: dict[str, HandlerState]
    due: list[str] = field(default_factory=list)
    traceparent: str = ""


class Journal:
    """Ledger reads and writes for the worker. One per worker connection."""

    def __init__(self, redis: Redis, *, retention_s: int, queue_expiry_ms: int) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.queue_expiry_ms = queue_expiry_ms
        self._begin = redis.register_script(load_script("workers.runtime", "begin-1"))
        self._finish = redis.register_script(load_script("workers.runtime", "finish-12"))
        self._count_mismatch = redis.register_script(
            load_script("workers.runtime", "count-payload-mismatch-2")
        )

    async def count_payload_mismatch(self, event_id: str, event_type: str) -> bool:
        """Count the event in `payload_mismatch_total` and per type, once per event; True if counted now."""
        return bool(await self._count_mismatch(keys=[event_key(event_id), STATS_KEY], args=[event_type]))

    async def begin(self, event_id: str, handler_names: list[str], *, now_ms: int) -> Claimed | str | None:
        """Mark the event `processing` and count an attempt for each due handler, atomically.

        Returns None when the ledger has no entry, the state name when it is already finished.
        A replay restricted to some handlers (`events replay --handler`) leaves the others out of
        `handlers` altogether: they neither run nor count towards the event's outcome.
        """
        reply = await self._begin(keys=[event_key(event_id)], args=[now_ms, *handler_names])
        if reply is None:
            return None
        if len(reply) == 1:
            return str(reply[0].decode())
        claimed = Claimed(
            body=reply[1], received_ms=int(reply[2]), handlers={}, traceparent=reply[3].decode()
        )
        for name, raw in zip(handler_names, reply[4:], strict=True):
            if raw[:1] == b"-":
                continue
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
        retry_ms: int | None = None,
        ordered: bool = False,
        wake: list[str] | None = None,
        ran: dict[str, dict[str, Any]] | None = None,
        breaker: tuple[int, int] = (10, 30_000),
    ) -> list[str]:
        """Record the handlers that ran and the event's new state, with its counters, in one script.

        `durations_s` (per handler that ran) and `latency_s` (receipt to success) feed the histograms.
        `retry_ms` is when a `retry` or `waiting` event's job is due again. For an event with ordered
        handlers (`ordered`), `wake` names those that finished in this run: the script wakes the
        event that waits for each (workers/runtime/order.py).

        `ran`: per handler that ran, `{"f": 1 | 0, "c": bool, "b": bool}` (a failure that counts for its
        breaker, or a success; a concurrency slot to give back; its breaker on); `breaker` is
        (`OA_BREAKER_FAILURES`, the probe interval in ms). Returns the breaker changes the run made,
        each `"tripped <handler>"` or `"closed <handler>"`.
        """
        latency: list[str] = []
        if latency_s is not None:
            series = f"{event_type}{SEPARATOR}"
            bucket = bucket_index(latency_s, LATENCY_BUCKETS_S)
            latency = [f"{series}{bucket}", f"{series}sum", repr(latency_s)]
        durations = []
        for name, seconds in (durations_s or {}).items():
            series = f"{event_type}{SEPARATOR}{name}{SEPARATOR}"
            bucket = bucket_index(seconds, HANDLER_BUCKETS_S)
            durations.append([f"{series}{bucket}", f"{series}sum", repr(seconds)])
        arg: dict[str, Any] = {
            "id": event_id,
            "type": event_type,
            "outcome": outcome.value,
            "now_ms": str(now_ms),
            "retention_s": str(self.retention_s),
            "queue_expiry_ms": str(self.queue_expiry_ms),
            "minute_ttl_s": str(MINUTE_STATS_TTL_S),
            "handlers": {f"h:{name}": state.to_json() for name, state in changed.items()},
            "durations": durations,
            "latency": latency,
            "ran": ran or {},
            "breaker_failures": breaker[0],
            "probe_ms": breaker[1],
            "event": event_key(""),
            "in_progress": queue.in_progress_key(""),
            "slots": slots_key(""),
            "waiting": waiting_key(""),
        }
        if retry_ms is not None:
            arg["retry_ms"] = str(retry_ms)
        if ordered:
            arg |= {"ordered": True, "wake": wake or []}
        keys = [
            event_key(event_id),
            queue.job_key(event_id),
            PENDING_KEY,
            DEAD_KEY,
            STATS_KEY,
            minute_stats_key(now_ms),
            HANDLER_HISTOGRAM_KEY,
            LATENCY_HISTOGRAM_KEY,
            queue.QUEUE_NAME,
            HELD_KEY,
            BREAKER_KEY,
            FAILS_KEY,
        ]
        return [change.decode() for change in await self._finish(keys=keys, args=[orjson.dumps(arg)])]

    async def release_slots(self, event_id: str, handler_names: list[str]) -> None:
        """Give back the concurrency slots a claim took for a run that did not happen (the event was gone)."""
        if handler_names:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in handler_names:
                    pipe.zrem(slots_key(name), event_id)
                await pipe.execute()
