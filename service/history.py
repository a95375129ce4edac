"""Event history: find events in the ledger by type, state, lead, invoice and time, and read one whole.

The query layer of `oa-webhooks events` and of the console; every function takes a
`redis.asyncio.Redis` and only reads. Where the candidates come from (never `SCAN`/`KEYS`):

- `--lead` / `--invoice`: the sorted sets `oa:idx:lead:<id>` / `oa:idx:invoice:<id>` (by `seq`);
- `--state dead`: `oa:dead`; `queued`, `running`, `retrying`: `oa:pending` (while it is small);
- `--type`: the streams `oa:idx:type:<type>`, merged (a wildcard names every type seen so far);
- otherwise the stream `oa:idx:time`.

The other filters are checked on each candidate's ledger entry. Events come newest first (by
`seq`, the acceptance order); a page's `next_cursor` continues after its last event, with the
same filters. An index entry whose event has expired is skipped.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from service.ledger import (
    DEAD_KEY,
    PENDING_KEY,
    STATS_KEY,
    TIME_INDEX_KEY,
    event_key,
    invoice_index_key,
    lead_index_key,
    type_index_key,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

DEFAULT_LIMIT = 50
# `--state` with a set source reads the whole set; past this size the time index is cheaper.
_SMALL_SET = 5_000
_CHUNK = 200
_FIELDS = ("type", "state", "received_ms", "lead_id", "invoice_id", "seq", "unhandled")
_TYPE_PATTERN = re.compile(r"\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?")
LEAD_STAGES = ("lead.created", "lead.sold", "lead.invoiced", "lead.paid")


class EventState(StrEnum):
    """Where an event stands, as `events list --state` names it."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    UNHANDLED = "unhandled"
    PURGED = "purged"  # a dead letter whose body was dropped; not a filter value


FILTER_STATES = tuple(s.value for s in EventState if s is not EventState.PURGED)
FINAL_STATES = frozenset({EventState.DONE, EventState.DEAD, EventState.UNHANDLED})
_STORED = {
    "queued": EventState.QUEUED,
    "processing": EventState.RUNNING,
    "retrying": EventState.RETRYING,
    "done": EventState.DONE,
    "dead": EventState.DEAD,
    "purged": EventState.PURGED,
}


def event_state(stored: str, *, unhandled: bool = False) -> EventState:
    """The state of an entry from its `state` field (and `unhandled` flag)."""
    state = _STORED.get(stored, EventState.QUEUED)
    return EventState.UNHANDLED if state is EventState.DONE and unhandled else state


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds, or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def valid_type_pattern(pattern: str) -> bool:
    """True for a type (`lead.paid`), a wildcard (`lead.*`) or `*`, as `on()` takes them."""
    return _TYPE_PATTERN.fullmatch(pattern) is not None


def type_matches(patterns: tuple[str, ...], event_type: str) -> bool:
    """True when no pattern is given, or one is the type, its `prefix.*`, or `*`."""
    return not patterns or any(
        p in ("*", event_type) or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """What `list_events` selects; all given filters must hold. Times are ms since the epoch."""

    types: tuple[str, ...] = ()
    state: EventState | None = None
    lead: str | None = None
    invoice: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        """Refuse values no query could mean (the CLI says what is accepted before this)."""
        if self.limit < 1:
            raise ValueError("limit must be at least 1")
        if bad := [p for p in self.types if not valid_type_pattern(p)]:
            raise ValueError(f"not an event type or wildcard: {bad[0]!r}")
        if self.cursor is not None:
            parse_cursor(self.cursor)


def parse_cursor(cursor: str) -> tuple[int, int]:
    """A cursor is `<ms>-<seq>`, as a page's `next_cursor` gives it."""
    ms, dash, seq = cursor.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a cursor: {cursor!r} (use the one a page printed)")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class EventSummary:
    """One row of `events list`: an event and how each of its handlers stands."""

    id: str
    type: str
    state: EventState
    received_ms: int
    seq: int
    lead_id: str | None
    invoice_id: str | None
    attempts: int
    handlers: dict[str, str]
    replays: int
    position: str = field(repr=False, default="")

    @property
    def received_at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.received_ms) or ""

    def to_json(self) -> dict[str, Any]:
        """The `events list --json` object."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "received_at": self.received_at,
            "lead_id": _json_id(self.lead_id),
            "invoice_id": _json_id(self.invoice_id),
            "attempts": self.attempts,
            "handlers": self.handlers,
            "replays": self.replays,
        }


def _json_id(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception a handler raised."""

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> ErrorInfo | None:
        """From the stored form, or None."""
        if not raw:
            return None
        return cls(str(raw.get("type", "")), str(raw.get("message", "")), str(raw.get("traceback", "")))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of one handler: when it started, how long it took, and its error if it failed."""

    number: int
    started_ms: int
    duration_ms: float
    error: ErrorInfo | None

    @property
    def started_at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.started_ms) or ""


@dataclass(frozen=True, slots=True)
class Replay:
    """One replay of an event: when, and which handlers it reset (empty: every handler of its type)."""

    at_ms: int
    handlers: tuple[str, ...]
    restricted: bool

    @property
    def at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.at_ms) or ""

    def covers(self, handler: str) -> bool:
        """True when this replay ran (or reset) `handler`."""
        return not self.handlers or handler in self.handlers


@dataclass(frozen=True, slots=True)
class HandlerRecord:
    """One handler's story for one event.

    `attempts` counts every attempt since the last replay; `runs` has the last few
    (workers/journal.py RUNS_KEPT) across replays, oldest first.
    """

    name: str
    state: str
    attempts: int
    runs: tuple[Attempt, ...]
    next_ms: int | None
    finished_ms: int | None
    first_error: ErrorInfo | None
    last_error: ErrorInfo | None
    replays: tuple[Replay, ...]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """The whole ledger entry of one event (`events show`)."""

    summary: EventSummary
    body: bytes
    sha256: str
    secret_index: int | None
    queued_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    handlers: tuple[HandlerRecord, ...]
    replays: tuple[Replay, ...]

    @property
    def body_text(self) -> str:
        """The body pretty-printed when it is JSON, else as received."""
        text = self.body.decode(errors="replace")
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text

    def to_json(self) -> dict[str, Any]:
        """The `events show --json` object."""
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body.decode(errors="replace")
        return {
            **self.summary.to_json(),
            "body": body,
            "sha256": self.sha256,
            "secret_index": self.secret_index,
            "queued_at": iso(self.queued_ms),
            "started_at": iso(self.started_ms),
            "finished_at": iso(self.finished_ms),
            "handlers": [_handler_json(h) for h in self.handlers],
            "replays": [{"at": r.at, "handlers": list(r.handlers)} for r in self.replays],
        }


def _error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    return (
        None
        if error is None
        else {"type": error.type, "message": error.message, "traceback": error.traceback}
    )


def _handler_json(h: HandlerRecord) -> dict[str, Any]:
    return {
        "name": h.name,
        "state": h.state,
        "attempts": h.attempts,
        "runs": [
            {
                "attempt": a.number,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "error": _error_json(a.error),
            }
            for a in h.runs
        ],
        "next_at": iso(h.next_ms),
        "finished_at": iso(h.finished_ms),
        "first_error": _error_json(h.first_error),
        "last_error": _error_json(h.last_error),
        "replays": [r.at for r in h.replays],
    }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of `list_events`; `next_cursor` is None on the last."""

    events: list[EventSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """Every event of one lead, oldest first, and its progress through `LEAD_STAGES`."""

    lead_id: str
    events: list[EventSummary]

    def stages(self) -> list[tuple[str, list[EventSummary]]]:
        """Each lead stage with its events ([] when it has not happened)."""
        return [(stage, [e for e in self.events if e.type == stage]) for stage in LEAD_STAGES]


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")


def _handlers_of(entry: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {k[2:]: json.loads(v) for k, v in entry.items() if k.startswith("h:")}


def _replays_of(entry: dict[str, str]) -> tuple[Replay, ...]:
    raw = json.loads(entry.get("replays") or "[]")
    return tuple(
        Replay(
            int(r.get("at", 0)),
            tuple(r.get("handlers") or ()) if not r.get("default") or r.get("handlers") else (),
            restricted=not r.get("default"),
        )
        for r in raw
    )


def _summary(event_id: str, entry: dict[str, str], position: str = "") -> EventSummary:
    handlers = _handlers_of(entry)
    received_ms, seq = int(entry.get("received_ms") or 0), int(entry.get("seq") or 0)
    return EventSummary(
        id=event_id,
        type=entry.get("type", ""),
        state=event_state(entry.get("state", ""), unhandled=bool(entry.get("unhandled"))),
        received_ms=received_ms,
        seq=seq,
        lead_id=entry.get("lead_id"),
        invoice_id=entry.get("invoice_id"),
        attempts=sum(int(h.get("attempts") or 0) for h in handlers.values()),
        handlers={name: str(h.get("state", "")) for name, h in handlers.items()},
        replays=len(_replays_of(entry)),
        position=position or f"{received_ms}-{seq}",
    )


def _decode(entry: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in entry.items() if k != b"body"}


def _attempts(state: dict[str, Any]) -> tuple[Attempt, ...]:
    runs = state.get("runs") or []
    first = int(state.get("attempts") or 0) - len(runs) + 1
    return tuple(
        Attempt(
            number=max(1, first + i),
            started_ms=int(r.get("at", 0)),
            duration_ms=float(r.get("ms", 0)),
            error=ErrorInfo.of(r.get("error")),
        )
        for i, r in enumerate(runs if isinstance(runs, list) else [])
    )


async def show_event(redis: Redis, event_id: str) -> EventRecord | None:
    """The whole record of one event, or None when the ledger has no such id."""
    raw = await redis.hgetall(event_key(event_id))  # type: ignore[misc]
    if not raw:
        return None
    entry = _decode(raw)
    replays = _replays_of(entry)
    handlers = tuple(
        HandlerRecord(
            name=name,
            state=str(h.get("state", "")),
            attempts=int(h.get("attempts") or 0),
            runs=_attempts(h),
            next_ms=int(h["next_ms"]) if h.get("next_ms") and h.get("state") == "pending" else None,
            finished_ms=int(h["finished_ms"]) if h.get("finished_ms") else None,
            first_error=ErrorInfo.of(h.get("first_error")),
            last_error=ErrorInfo.of(h.get("last_error")),
            replays=tuple(r for r in replays if r.covers(name)),
        )
        for name, h in sorted(_handlers_of(entry).items())
    )
    summary = _summary(event_id, entry)
    finished = entry.get("done_ms") or entry.get("dead_ms")
    return EventRecord(
        summary=summary,
        body=raw.get(b"body", b""),
        sha256=entry.get("sha256", ""),
        secret_index=int(entry["secret"]) if entry.get("secret", "").isdigit() else None,
        queued_ms=int(entry.get("queued_ms") or summary.received_ms),
        started_ms=int(entry["processing_ms"]) if entry.get("processing_ms") else None,
        finished_ms=int(finished) if finished else None,
        handlers=handlers,
        replays=replays,
    )


# Candidates: (seq, id, position) newest first, from one of the sources the module docstring lists.
_Candidate = tuple[int, str, str]


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.decode().partition("-")
    return int(ms), int(seq)


async def _stream_source(redis: Redis, keys: list[str], filters: Filters) -> AsyncIterator[_Candidate]:
    """Merge the streams `keys` newest first, within since/until and after the cursor."""
    end = "+" if filters.until_ms is None else str(filters.until_ms)
    if filters.cursor is not None and (
        filters.until_ms is None or parse_cursor(filters.cursor)[0] <= filters.until_ms
    ):
        end = "(" + filters.cursor
    start = "-" if filters.since_ms is None else str(filters.since_ms)
    ends = dict.fromkeys(keys, end)  # where each stream's next read ends; "" once it is read out
    buffered = dict.fromkeys(keys, 0)
    heap: list[tuple[int, int, str, str]] = []  # (-ms, -seq, id, key): heapq pops the newest

    async def refill(key: str) -> None:
        entries = await redis.xrevrange(key, ends[key], start, count=_CHUNK)
        for raw_id, fields in entries:
            ms, seq = _stream_id(raw_id)
            heapq.heappush(heap, (-ms, -seq, fields[b"i"].decode(), key))
        buffered[key] += len(entries)
        ends[key] = "(" + entries[-1][0].decode() if len(entries) == _CHUNK else ""

    for key in keys:
        await refill(key)
    while heap:
        neg_ms, neg_seq, event_id, key = heapq.heappop(heap)
        buffered[key] -= 1
        yield -neg_seq, event_id, f"{-neg_ms}-{-neg_seq}"
        # A stream's next entries may be newer than any other's buffered ones: read it before popping on.
        if ends[key] and buffered[key] == 0:
            await refill(key)


async def _index_source(redis: Redis, key: str, filters: Filters) -> AsyncIterator[_Candidate]:
    """A lead or invoice index (members by seq), newest first, after the cursor."""
    top: str = "+inf" if filters.cursor is None else f"({parse_cursor(filters.cursor)[1]}"
    while True:
        members = await redis.zrevrangebyscore(key, top, "-inf", start=0, num=_CHUNK, withscores=True)
        for member, score in members:
            yield int(score), member.decode(), ""
        if len(members) < _CHUNK:
            return
        top = f"({int(members[-1][1])}"


async def _set_source(redis: Redis, key: str, filters: Filters) -> AsyncIterator[_Candidate]:
    """Every member of `oa:dead` or `oa:pending`, ordered by seq, newest first, after the cursor."""
    ids = [m.decode() for m in await redis.zrange(key, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in ids:
            pipe.hget(event_key(event_id), "seq")
        seqs = await pipe.execute()
    below = None if filters.cursor is None else parse_cursor(filters.cursor)[1]
    ordered = sorted(((int(s), i) for i, s in zip(ids, seqs, strict=True) if s), reverse=True)
    for seq, event_id in ordered:
        if below is None or seq < below:
            yield seq, event_id, ""


async def _known_types(redis: Redis) -> list[str]:
    """Every type received since the counters began (the `received:<type>` fields of `oa:stats`)."""
    return [f.decode()[9:] for f in await redis.hkeys(STATS_KEY) if f.startswith(b"received:")]  # type: ignore[misc]


async def _source(redis: Redis, filters: Filters) -> AsyncIterator[_Candidate]:
    if filters.lead is not None:
        return _index_source(redis, lead_index_key(filters.lead), filters)
    if filters.invoice is not None:
        return _index_source(redis, invoice_index_key(filters.invoice), filters)
    if filters.state is EventState.DEAD:
        return _set_source(redis, DEAD_KEY, filters)
    unfinished = (EventState.QUEUED, EventState.RUNNING, EventState.RETRYING)
    if filters.state in unfinished and await redis.zcard(PENDING_KEY) <= _SMALL_SET:
        return _set_source(redis, PENDING_KEY, filters)
    if filters.types and "*" not in filters.types:
        types = [t for t in await _known_types(redis) if type_matches(filters.types, t)]
        exact = [t for t in filters.types if not t.endswith("*")]
        return _stream_source(redis, [type_index_key(t) for t in sorted({*types, *exact})], filters)
    return _stream_source(redis, [TIME_INDEX_KEY], filters)


def _wanted(entry: dict[str, str], filters: Filters, below: int | None) -> bool:
    if not entry.get("state"):
        return False  # expired or purged before its index entry was trimmed
    received_ms, seq = int(entry.get("received_ms") or 0), int(entry.get("seq") or 0)
    state = event_state(entry["state"], unhandled=bool(entry.get("unhandled")))
    return (
        (below is None or seq < below)
        and type_matches(filters.types, entry.get("type", ""))
        and (filters.state is None or state is filters.state)
        and (filters.lead is None or entry.get("lead_id") == filters.lead)
        and (filters.invoice is None or entry.get("invoice_id") == filters.invoice)
        and (filters.since_ms is None or received_ms >= filters.since_ms)
        and (filters.until_ms is None or received_ms <= filters.until_ms)
    )


async def iter_events(redis: Redis, filters: Filters) -> AsyncIterator[EventSummary]:
    """Every event the filters select (ignoring `limit`), newest first, in chunks of reads."""
    below = None if filters.cursor is None else parse_cursor(filters.cursor)[1]
    chunk: list[_Candidate] = []
    source = await _source(redis, filters)
    size = min(_CHUNK, filters.limit + 1)
    async for candidate in source:
        chunk.append(candidate)
        if len(chunk) >= size:
            for summary in await _read(redis, chunk, filters, below):
                yield summary
            chunk, size = [], _CHUNK
    for summary in await _read(redis, chunk, filters, below):
        yield summary


async def _read(
    redis: Redis, chunk: list[_Candidate], filters: Filters, below: int | None
) -> list[EventSummary]:
    """The summaries of the candidates that pass the filters (a filtering read, then whole entries)."""
    if not chunk:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for _, event_id, _ in chunk:
            pipe.hmget(event_key(event_id), list(_FIELDS))
        rows = await pipe.execute()
    kept = []
    for candidate, row in zip(chunk, rows, strict=True):
        entry = {name: v.decode() for name, v in zip(_FIELDS, row, strict=True) if v is not None}
        if _wanted(entry, filters, below):
            kept.append(candidate)
    async with redis.pipeline(transaction=False) as pipe:
        for _, event_id, _ in kept:
            pipe.hgetall(event_key(event_id))
        entries = await pipe.execute()
    return [
        _summary(event_id, _decode(raw), position)
        for (_, event_id, position), raw in zip(kept, entries, strict=True)
        if raw
    ]


async def list_events(redis: Redis, filters: Filters) -> Page:
    """The first `filters.limit` events the filters select (after `filters.cursor`), newest first."""
    events: list[EventSummary] = []
    async for summary in iter_events(redis, filters):
        if len(events) == filters.limit:
            return Page(events, events[-1].position)
        events.append(summary)
    return Page(events, None)


async def lead_timeline(redis: Redis, lead_id: str) -> Timeline:
    """Every retained event that names `lead_id`, oldest first, with each handler's outcome."""
    events = [e async for e in iter_events(redis, Filters(lead=lead_id))]
    return Timeline(lead_id, events[::-1])
