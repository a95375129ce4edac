"""Event history: find events in the ledger by type, state, lead, invoice and time, and read one whole.

The query layer of `oa-webhooks events` and of the console; every function takes a
`redis.asyncio.Redis` and only reads (the rows it returns are in service/store/summary.py, the whole
records in service/store/records.py; replay, the one write, is service/store/replay.py, exported here
too). Where the candidates come from (never `SCAN`/`KEYS`):

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
from typing import TYPE_CHECKING

from service.store.ledger import (
    DEAD_KEY,
    PENDING_KEY,
    STATS_KEY,
    TIME_INDEX_KEY,
    event_key,
    invoice_index_key,
    lead_index_key,
    type_index_key,
)
from service.store.records import Attempt, ErrorInfo, EventRecord, HandlerRecord, Replay, record_of
from service.store.replay import Replayer, ReplayResult, ReplayStatus
from service.store.summary import (
    FILTER_STATES,
    FINAL_STATES,
    LEAD_STAGES,
    EventState,
    EventSummary,
    Filters,
    Page,
    Timeline,
    decode_entry,
    event_state,
    iso,
    parse_cursor,
    summary_of,
    type_matches,
    valid_type_pattern,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

# `--state` with a set source reads the whole set; past this size the time index is cheaper.
_SMALL_SET = 5_000
_CHUNK = 200
_FIELDS = ("type", "state", "received_ms", "lead_id", "invoice_id", "seq", "unhandled")


async def show_event(redis: Redis, event_id: str) -> EventRecord | None:
    """The whole record of one event, or None when the ledger has no such id."""
    raw = await redis.hgetall(event_key(event_id))  # type: ignore[misc]
    return record_of(event_id, raw) if raw else None


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
    # A first page needs limit + 1 entries of each stream at most; later reads take more at once.
    counts = dict.fromkeys(keys, min(_CHUNK, filters.limit + 1))

    async def refill(key: str) -> None:
        entries = await redis.xrevrange(key, ends[key], start, count=counts[key])
        for raw_id, fields in entries:
            ms, seq = _stream_id(raw_id)
            heapq.heappush(heap, (-ms, -seq, fields[b"i"].decode(), key))
        buffered[key] += len(entries)
        ends[key] = "(" + entries[-1][0].decode() if len(entries) == counts[key] else ""
        counts[key] = _CHUNK

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


async def known_types(redis: Redis) -> list[str]:
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
        types = [t for t in await known_types(redis) if type_matches(filters.types, t)]
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
        summary_of(event_id, decode_entry(raw), position)
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


__all__ = [
    "FILTER_STATES",
    "FINAL_STATES",
    "LEAD_STAGES",
    "Attempt",
    "ErrorInfo",
    "EventRecord",
    "EventState",
    "EventSummary",
    "Filters",
    "HandlerRecord",
    "Page",
    "Replay",
    "ReplayResult",
    "ReplayStatus",
    "Replayer",
    "Timeline",
    "event_state",
    "iso",
    "iter_events",
    "known_types",
    "lead_timeline",
    "list_events",
    "show_event",
    "type_matches",
    "valid_type_pattern",
]
