"""The event history's queries (service/store/history.py) and replay (service/store/replay.py), real Redis.

Events go in through the ledger's real ingest script, with chosen receive times, and are run by the
worker's real job function.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from arq import Retry
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from service.api.envelope import parse_envelope
from service.ops.cli.sender import SAMPLES, sample_body
from service.store import queue
from service.store.history import EventState, Filters, lead_timeline, list_events, show_event
from service.store.ledger import DEAD_KEY, PENDING_KEY, TIME_INDEX_KEY, Ledger, event_key, type_index_key
from service.store.replay import Replayer, ReplayStatus
from workers import Context, Event, PermanentError, on
from workers.runtime.job import process_event

pytestmark = pytest.mark.usefixtures("clean_registry")
HOUR_MS = 3_600_000
NOW_MS = time.time_ns() // 1_000_000


def _body(event_id: str, event_type: str, *, lead: int = 12345, invoice: int = 987) -> bytes:
    payload = dict(SAMPLES[event_type])
    payload["lead_id"] = lead
    if "invoice_id" in payload:
        payload["invoice_id"] = invoice
    return sample_body(event_type, event_id=event_id, payload=payload)


async def _accept(redis: AsyncRedis, body: bytes, *, at_ms: int) -> None:
    ledger = Ledger(redis, queue_expiry_ms=60_000, retention_s=7 * 86_400)
    await ledger.accept(parse_envelope(body), body, secret_index=1, now_ms=at_ms)


@pytest.fixture
def redis(worker_ctx: dict[str, Any]) -> AsyncRedis:
    """The worker's connection, for the query functions too."""
    connection: AsyncRedis = worker_ctx["redis"]
    return connection


# (id, type, lead, invoice, hours ago); the worker then makes them done / dead / unhandled / ... below.
EVENTS = [
    ("e01", "lead.created", 1, 0, 10),
    ("e02", "lead.sold", 1, 0, 9),
    ("e03", "lead.created", 2, 0, 8),
    ("e04", "lead.invoiced", 1, 501, 7),
    ("e05", "invoice.created", 2, 502, 6),
    ("e06", "lead.paid", 1, 501, 5),
    ("e07", "invoice.paid", 2, 502, 4),
    ("e08", "lead.created", 3, 0, 3),
    ("e09", "lead.sold", 3, 0, 2),
    ("e10", "lead.created", 4, 0, 1),
]


@pytest.fixture
async def history(worker_ctx: dict[str, Any], redis: AsyncRedis, clean_registry: None) -> dict[str, Any]:
    """Ten events over ten hours, run by the worker except the last.

    lead.* handled (lead.sold of lead 3 dead, lead.created of lead 4 still queued), invoice.created
    unhandled, invoice.paid retrying.
    """
    calls: list[str] = []

    @on("lead.*")
    async def crm(event: Event, ctx: Context) -> None:
        calls.append(event.id)
        if event.id == "e09":
            raise PermanentError("CRM refused lead 3")

    @on("invoice.paid")
    async def books(event: Event, ctx: Context) -> None:
        raise ConnectionError("books down")

    for event_id, event_type, lead, invoice, hours in EVENTS:
        await _accept(
            redis, _body(event_id, event_type, lead=lead, invoice=invoice), at_ms=NOW_MS - hours * HOUR_MS
        )
    for event_id, event_type, *_ in EVENTS:
        if event_id != "e10":
            # arq's Retry for e07, which stays retrying.
            with contextlib.suppress(Retry):
                await process_event(worker_ctx, event_id, event_type)
    return {"calls": calls, "crm": f"{crm.__module__}.{crm.__qualname__}"}


async def _ids(redis: AsyncRedis, **filters: Any) -> list[str]:
    page = await list_events(redis, Filters(**filters))
    return [e.id for e in page.events]


@pytest.mark.usefixtures("history")
async def test_each_filter_alone(redis: AsyncRedis) -> None:
    """No filter lists all, newest first; type (exact, wildcard), state, lead, invoice, since, until too."""
    assert await _ids(redis) == [e[0] for e in reversed(EVENTS)]
    assert await _ids(redis, types=("lead.created",)) == ["e10", "e08", "e03", "e01"]
    assert await _ids(redis, types=("invoice.*",)) == ["e07", "e05"]
    assert await _ids(redis, types=("lead.paid", "invoice.paid")) == ["e07", "e06"]
    assert await _ids(redis, types=("*",)) == [e[0] for e in reversed(EVENTS)]
    assert await _ids(redis, state=EventState.DONE) == ["e08", "e06", "e04", "e03", "e02", "e01"]
    assert await _ids(redis, state=EventState.DEAD) == ["e09"]
    assert await _ids(redis, state=EventState.UNHANDLED) == ["e05"]
    assert await _ids(redis, state=EventState.RETRYING) == ["e07"]
    assert await _ids(redis, state=EventState.QUEUED) == ["e10"]
    assert await _ids(redis, state=EventState.RUNNING) == []
    assert await _ids(redis, lead="1") == ["e06", "e04", "e02", "e01"]
    assert await _ids(redis, invoice="502") == ["e07", "e05"]
    assert await _ids(redis, since_ms=NOW_MS - 2 * HOUR_MS) == ["e10", "e09"]
    assert await _ids(redis, until_ms=NOW_MS - 9 * HOUR_MS) == ["e02", "e01"]
    assert await _ids(redis, limit=3) == ["e10", "e09", "e08"]


@pytest.mark.usefixtures("history")
async def test_filters_combine(redis: AsyncRedis) -> None:
    """Filters together select only what every one of them selects."""
    assert await _ids(redis, types=("lead.*",), state=EventState.DONE, since_ms=NOW_MS - 7 * HOUR_MS) == [
        "e08",
        "e06",
        "e04",
    ]
    assert await _ids(redis, lead="2", types=("invoice.*",)) == ["e07", "e05"]
    assert await _ids(redis, lead="1", until_ms=NOW_MS - 6 * HOUR_MS, since_ms=NOW_MS - 9 * HOUR_MS) == [
        "e04",
        "e02",
    ]
    assert await _ids(redis, state=EventState.DEAD, lead="3", types=("lead.sold",)) == ["e09"]
    assert await _ids(redis, state=EventState.DEAD, lead="1") == []
    assert await _ids(redis, invoice="501", state=EventState.DONE, types=("lead.paid",)) == ["e06"]


@pytest.mark.usefixtures("history")
async def test_paging_walks_every_event_once(redis: AsyncRedis) -> None:
    """Pages of 3 (by the time index, the type index and a set) cover the selection once, in order."""
    for filters in ({}, {"types": ("lead.*",)}, {"state": EventState.DONE}, {"lead": "1"}):
        everything = await _ids(redis, **filters)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = await list_events(redis, Filters(limit=3, cursor=cursor, **filters))
            seen += [e.id for e in page.events]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == everything, filters
        assert len(everything) > 3


async def test_summary_rows_carry_what_list_json_needs(redis: AsyncRedis, history: dict[str, Any]) -> None:
    """A row has id, type, state, received_at in ISO-8601 UTC, lead and invoice ids, attempts per handler."""
    page = await list_events(redis, Filters(types=("lead.paid",)))
    row = page.events[0].to_json()
    assert row["id"] == "e06"
    assert row["received_at"].endswith("Z")
    assert abs(page.events[0].received_ms - (NOW_MS - 5 * HOUR_MS)) == 0
    assert (row["type"], row["state"], row["lead_id"], row["invoice_id"], row["attempts"]) == (
        "lead.paid",
        "done",
        1,
        501,
        1,
    )
    assert row["handlers"] == {history["crm"]: "done"}


async def test_lead_timeline_follows_the_lead_through_its_stages(
    redis: AsyncRedis, history: dict[str, Any]
) -> None:
    """The timeline of lead 1 is created, sold, invoiced, paid, oldest first, with its handler's outcome."""
    timeline = await lead_timeline(redis, "1")
    assert [e.id for e in timeline.events] == ["e01", "e02", "e04", "e06"]
    assert [(stage, [e.id for e in events]) for stage, events in timeline.stages()] == [
        ("lead.created", ["e01"]),
        ("lead.sold", ["e02"]),
        ("lead.invoiced", ["e04"]),
        ("lead.paid", ["e06"]),
    ]
    assert all(e.handlers == {history["crm"]: "done"} for e in timeline.events)
    lead3 = await lead_timeline(redis, "3")
    assert [(stage, [e.state for e in events]) for stage, events in lead3.stages()] == [
        ("lead.created", [EventState.DONE]),
        ("lead.sold", [EventState.DEAD]),
        ("lead.invoiced", []),
        ("lead.paid", []),
    ]


@pytest.mark.usefixtures("history")
async def test_show_of_a_retrying_event_lists_each_attempt_with_its_error(redis: AsyncRedis) -> None:
    """`show` has body, secret, times, and per handler each attempt's start, duration and error."""
    record = await show_event(redis, "e07")
    assert record is not None
    assert record.secret_index == 1
    assert '"invoice_id": 502' in record.body_text
    assert record.summary.state is EventState.RETRYING
    (books,) = record.handlers
    assert books.state == "pending"
    assert [(a.number, a.error and a.error.type, a.error and a.error.message) for a in books.runs] == [
        (1, "ConnectionError", "books down")
    ]
    assert books.runs[0].started_ms >= NOW_MS
    assert books.runs[0].duration_ms >= 0
    assert "ConnectionError: books down" in (books.runs[0].error.traceback if books.runs[0].error else "")
    assert record.finished_ms is None
    assert await show_event(redis, "nope") is None


async def test_replay_of_a_done_event_runs_its_handlers_again(
    worker_ctx: dict[str, Any], redis: AsyncRedis, history: dict[str, Any], redis_sync: Redis
) -> None:
    """A done event replays through the queue: a new job, its handler runs again, the replay is recorded."""
    replayer = Replayer(redis, queue_expiry_ms=60_000)
    result = await replayer.replay("e01")
    assert (result.status, result.handlers) == (ReplayStatus.REPLAYED, (history["crm"],))
    assert redis_sync.zscore(queue.QUEUE_NAME, "e01") is not None
    assert redis_sync.ttl("oa:event:e01") == -1  # kept until done again
    await process_event(worker_ctx, "e01", "lead.created")
    assert history["calls"].count("e01") == 2
    record = await show_event(redis, "e01")
    assert record is not None
    assert record.summary.state is EventState.DONE
    (crm,) = record.handlers
    assert [r.handlers for r in crm.replays] == [(history["crm"],)]
    assert [run.number for run in crm.runs] == [1, 1]  # the first attempt of each run-through
    assert crm.runs[1].started_ms > crm.runs[0].started_ms
    assert 0 < redis_sync.ttl("oa:event:e01") <= worker_ctx["oa"].settings.retention_s


def _snapshot(redis_sync: Redis) -> dict[str, Any]:
    keys = [event_key(e[0]) for e in EVENTS] + [queue.QUEUE_NAME, PENDING_KEY, DEAD_KEY]
    keys += [queue.job_key(e[0]) for e in EVENTS]
    return {"dbsize": redis_sync.dbsize(), **{key: redis_sync.dump(key) for key in keys}}


async def test_replay_refuses_unfinished_events_and_dry_run_changes_nothing(
    redis: AsyncRedis, history: dict[str, Any], redis_sync: Redis
) -> None:
    """Queued and retrying events are not replayed; a dry run says what would run and writes nothing."""
    replayer = Replayer(redis, queue_expiry_ms=60_000)
    assert (await replayer.replay("e10")).status is ReplayStatus.NOT_FINAL
    assert (await replayer.replay("e07")).status is ReplayStatus.NOT_FINAL
    assert (await replayer.replay("nope")).status is ReplayStatus.MISSING
    before = _snapshot(redis_sync)
    dry = await replayer.replay_many(["e09", "e05", "e01"], dry_run=True)
    assert [(r.status, r.handlers) for r in dry] == [
        (ReplayStatus.DRY_RUN, (history["crm"],)),
        (ReplayStatus.DRY_RUN, ()),
        (ReplayStatus.DRY_RUN, (history["crm"],)),
    ]
    assert _snapshot(redis_sync) == before


async def test_replay_restricted_to_one_handler_runs_only_that_one(
    worker_ctx: dict[str, Any], redis: AsyncRedis, history: dict[str, Any]
) -> None:
    """With `handler`, a handler added later runs on past events and the ones that ran do not run again."""
    late: list[str] = []

    @on("lead.created")
    async def welcome(event: Event, ctx: Context) -> None:
        late.append(event.id)

    name = f"{welcome.__module__}.{welcome.__qualname__}"
    replayer = Replayer(redis, queue_expiry_ms=60_000)
    ids = [
        e.id
        for e in (await list_events(redis, Filters(types=("lead.created",), state=EventState.DONE))).events
    ]
    assert ids == ["e08", "e03", "e01"]
    results = await replayer.replay_many(ids, handler=name, rate_per_s=None)
    assert {r.status for r in results} == {ReplayStatus.REPLAYED}
    for event_id in ids:
        await process_event(worker_ctx, event_id, "lead.created")
        await process_event(worker_ctx, event_id, "lead.created")  # a second delivery runs nothing
    assert sorted(late) == sorted(ids)
    assert history["calls"].count("e01") == 1
    record = await show_event(redis, "e01")
    assert record is not None
    assert {h.name: h.state for h in record.handlers} == {history["crm"]: "done", name: "done"}
    assert [r.handlers for r in record.replays] == [(name,)]


async def test_index_entries_are_streams_written_at_ingest(redis: AsyncRedis, redis_sync: Redis) -> None:
    """Ingest adds each event (with its lead and invoice) to the time stream and its type's, ID <ms>-<seq>."""
    await _accept(redis, _body("x1", "lead.paid"), at_ms=NOW_MS - 1000)
    await _accept(redis, _body("x2", "lead.paid"), at_ms=NOW_MS - 2000)  # an API with a slower clock
    entries = redis_sync.xrange(TIME_INDEX_KEY)
    assert [(raw_id.decode(), fields) for raw_id, fields in entries] == [
        (f"{NOW_MS - 1000}-1", {b"i": b"x1", b"l": b"12345", b"n": b"987"}),
        (f"{NOW_MS - 1000}-2", {b"i": b"x2", b"l": b"12345", b"n": b"987"}),
    ]
    assert redis_sync.xlen(type_index_key("lead.paid")) == 2
    assert await _ids(redis) == ["x2", "x1"]
