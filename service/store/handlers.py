"""What the whole fleet knows of each handler: its limits, an operator's pause, its breaker, who waits.

The worker's claim script (workers/runtime/lua/claim-4.lua) enforces these for every worker at
once, and its finish script (finish-12.lua) releases slots and trips or closes breakers. Keys:

- `oa:handlers`: name -> JSON `{patterns, concurrency, rate, breaker, seen_ms}`, written by every
  worker for its handlers when it starts and at each reconciler turn (what `handlers` lists);
- `oa:paused`: name -> JSON `{since_ms, until_ms?}`, an operator's pause (`handlers pause`);
- `oa:breaker`: name -> JSON `{since_ms, probe_ms}` while the handler's breaker is tripped;
  `oa:breaker:fails`: name -> consecutive failed runs, across the fleet;
- `oa:slots:<name>`: event id -> when its slot expires (ms), one per running run of a handler
  with `concurrency`; a killed worker's slot expires after the job timeout;
- `oa:starts:<name>`: `<id>@<ms>` -> start time (ms), the starts within a `rate`'s window;
- `oa:waiting:<name>`: event id -> since when it waits (ms) for a pause, a breaker or a limit;
  the event's own `wait:<name>` field says which (`events show`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.store import queue
from service.store.ledger import event_key
from service.store.scripts import load_script
from service.store.summary import iso

if TYPE_CHECKING:
    from redis.asyncio import Redis

HANDLERS_KEY = "oa:handlers"
PAUSED_KEY = "oa:paused"
BREAKER_KEY = "oa:breaker"
FAILS_KEY = "oa:breaker:fails"
# A handler no worker has registered for this long (a deploy removed it) is no longer listed.
FORGET_AFTER_MS = 7 * 86_400_000
_RESUME = load_script("service.store", "resume-3")
# Why a handler waits to start on an event (`events show`), with what ends it.
WAIT_REASONS = {
    "paused": "is paused by an operator (oa-webhooks handlers resume NAME ends it)",
    "tripped": "is tripped: its downstream failed again and again; a probe runs every OA_BREAKER_PROBE_S",
    "concurrency": "is at its concurrency limit; it starts when a run ends",
    "rate": "is at its rate limit; it starts when the window allows",
}


def slots_key(name: str) -> str:
    """The running runs of a handler with `concurrency`."""
    return f"oa:slots:{name}"


def starts_key(name: str) -> str:
    """The recent starts of a handler with `rate`."""
    return f"oa:starts:{name}"


def waiting_key(name: str) -> str:
    """The events that wait for a handler (paused, tripped, or over a limit)."""
    return f"oa:waiting:{name}"


class UnknownHandler(LookupError):
    """No worker has registered a handler of that name; `known` lists the ones that have."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none: no worker has started yet"
        super().__init__(f"no handler named {name!r}; known handlers: {listed}")
        self.known = known


@dataclass(frozen=True, slots=True)
class HandlerView:
    """How one handler stands now: `state` is "active", "paused" (by an operator) or "tripped"."""

    name: str
    state: str
    since_ms: int | None
    until_ms: int | None
    waiting: int
    running: int | None
    concurrency: int | None
    rate: str | None
    breaker: bool
    failures: int

    def to_json(self) -> dict[str, Any]:
        """The `handlers --json` (and `status --json` "handlers") object."""
        return {
            "name": self.name,
            "state": self.state,
            "since": iso(self.since_ms),
            "until": iso(self.until_ms),
            "waiting": self.waiting,
            "running": self.running,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "breaker": self.breaker,
            "consecutive_failures": self.failures,
        }


def _decoded(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


async def publish(redis: Redis, specs: dict[str, dict[str, Any]], *, now_ms: int) -> None:
    """Record this worker's handlers (name -> `{patterns, concurrency, rate, breaker}`) for `handlers`."""
    if not specs:
        return
    await redis.hset(  # type: ignore[misc]
        HANDLERS_KEY, mapping={name: json.dumps(spec | {"seen_ms": now_ms}) for name, spec in specs.items()}
    )


async def known_handlers(redis: Redis, *, now_ms: int) -> dict[str, dict[str, Any]]:
    """The handlers some worker registered within `FORGET_AFTER_MS`, by name, with their options."""
    specs = _decoded(await redis.hgetall(HANDLERS_KEY))  # type: ignore[misc]
    return {n: s for n, s in sorted(specs.items()) if now_ms - int(s.get("seen_ms", 0)) < FORGET_AFTER_MS}


async def handler_views(redis: Redis, *, now_ms: int) -> list[HandlerView]:
    """Every known handler with its state, waiting events and limits, in two round trips."""
    specs = await known_handlers(redis, now_ms=now_ms)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(PAUSED_KEY)
        pipe.hgetall(BREAKER_KEY)
        pipe.hgetall(FAILS_KEY)
        for name in specs:
            pipe.zcard(waiting_key(name))
            pipe.zcount(slots_key(name), now_ms, "+inf")
        paused_raw, breaker_raw, fails_raw, *counts = await pipe.execute()
    paused, tripped = _decoded(paused_raw), _decoded(breaker_raw)
    fails = {k.decode(): int(v) for k, v in fails_raw.items()}
    views = []
    for index, (name, spec) in enumerate(specs.items()):
        state, since, until = "active", None, None
        pause = paused.get(name)
        if pause and (pause.get("until_ms") is None or int(pause["until_ms"]) > now_ms):
            state, since, until = "paused", int(pause["since_ms"]), pause.get("until_ms")
        elif name in tripped and spec.get("breaker", True):
            state, since = "tripped", int(tripped[name]["since_ms"])
        views.append(
            HandlerView(
                name=name,
                state=state,
                since_ms=since,
                until_ms=None if until is None else int(until),
                waiting=counts[2 * index],
                running=counts[2 * index + 1] if spec.get("concurrency") else None,
                concurrency=spec.get("concurrency"),
                rate=spec.get("rate"),
                breaker=bool(spec.get("breaker", True)),
                failures=fails.get(name, 0),
            )
        )
    return views


async def _require_known(redis: Redis, name: str, *, now_ms: int) -> None:
    known = list(await known_handlers(redis, now_ms=now_ms))
    if name not in known:
        raise UnknownHandler(name, known)


async def pause(redis: Redis, name: str, *, now_ms: int, until_ms: int | None = None) -> None:
    """Pause a handler for the whole fleet (until `until_ms`, or until `resume`): its events wait.

    Raises `UnknownHandler` when no worker has registered `name`. Pausing a paused handler moves its
    end (or makes it open-ended) and keeps when it began.
    """
    await _require_known(redis, name, now_ms=now_ms)
    current = await redis.hget(PAUSED_KEY, name)  # type: ignore[misc]
    since = json.loads(current)["since_ms"] if current else now_ms
    entry: dict[str, int] = {"since_ms": since}
    if until_ms is not None:
        entry["until_ms"] = until_ms  # never null: Lua's cjson reads null as a true value
    await redis.hset(PAUSED_KEY, name, json.dumps(entry))  # type: ignore[misc]


async def resume(redis: Redis, name: str, *, now_ms: int) -> int:
    """End a handler's pause; every event that waits for it is due at once. Returns how many were woken.

    Raises `UnknownHandler` when no worker has registered `name`.
    """
    await _require_known(redis, name, now_ms=now_ms)
    script = redis.register_script(_RESUME)
    arg = {
        "name": name,
        "now_ms": now_ms,
        "event": event_key(""),
        "in_progress": queue.in_progress_key(""),
    }
    return int(await script(keys=[PAUSED_KEY, waiting_key(name), queue.QUEUE_NAME], args=[json.dumps(arg)]))


async def prune_waiting(redis: Redis, *, now_ms: int) -> int:
    """Drop from every handler's waiting list the events that no longer wait for it; returns how many.

    The claim script lists and unlists waiting events as it decides, and resume or a closing breaker
    unlists them; an event that finished by another path (purged, or run after its limit was removed
    by a deploy) is only found here, by the reconciler.
    """
    dropped = 0
    for name in await known_handlers(redis, now_ms=now_ms):
        key = waiting_key(name)
        ids = [raw.decode() for raw in await redis.zrange(key, 0, -1)]
        if not ids:
            continue
        async with redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hmget(event_key(event_id), ["state", f"wait:{name}"])
            rows = await pipe.execute()
        gone = [
            i
            for i, (state, wait) in zip(ids, rows, strict=True)
            if wait is None or state in (None, b"done", b"dead", b"purged")
        ]
        if gone:
            dropped += await redis.zrem(key, *gone)
    return dropped
