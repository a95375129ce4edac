"""Per-key ordering in-process against a real Redis: the claim script decides, the finish script wakes.

A small driver plays the worker: it reads the due jobs, claims them with the worker's Claimer (told
which handlers are ordered) and runs each claimed event with `process_event`, as arq would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from arq import Retry
from arq.constants import in_progress_key_prefix
from redis import Redis

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.dlq import DeadLetters
from service.store.held import HELD_KEY, held_event, held_events
from service.store.history import Filters, list_events, show_event
from service.store.ledger import Ledger, event_key, lead_index_key
from workers import Context, Event, PermanentError, on
from workers.registry import registered
from workers.runtime.claim import ClaimedJob, Claimer
from workers.runtime.job import WorkerState, process_event
from workers.runtime.protect import WAIT_RECHECK_MS, claim_plan

pytestmark = pytest.mark.usefixtures("clean_registry")
Seen = list[tuple[int, str]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _body(event_id: str, event_type: str, **payload: Any) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "payload": payload}).encode()


async def _accept(ctx: dict[str, Any], event_id: str, event_type: str, **payload: Any) -> None:
    ledger = Ledger(ctx["redis"], queue_expiry_ms=600_000, retention_s=3600)
    body = _body(event_id, event_type, **payload)
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=_now_ms())


class Driver:
    """One in-process worker: claim due jobs with the order, run them as arq would."""

    def __init__(self, ctx: dict[str, Any], redis_sync: Redis) -> None:
        self.ctx = ctx
        self.redis_sync = redis_sync
        self.claimer = Claimer(
            ctx["redis"],
            queue_name=queue.QUEUE_NAME,
            claim_ttl_ms=60_000,
            plan=claim_plan(registered(), job_ttl_ms=600_000, slot_ttl_ms=60_000, probe_ms=30_000),
        )

    async def claim(self) -> list[ClaimedJob]:
        """Claim every due job (as a worker with free slots would)."""
        now = _now_ms()
        ids = self.redis_sync.zrangebyscore(queue.QUEUE_NAME, "-inf", now)
        return await self.claimer.claim(ids, limit=100, now_ms=now)

    async def run(self, job: ClaimedJob) -> None:
        """Run one claimed job to its end, as arq's run_job and finish_job do."""
        state: WorkerState = self.ctx["oa"]
        state.claims[job.id] = job
        event_type = (self.redis_sync.hget(event_key(job.id), "type") or b"").decode()
        try:
            await process_event(self.ctx, job.id, event_type)
        except Retry:
            pass
        else:
            self.redis_sync.zrem(queue.QUEUE_NAME, job.id)
        self.redis_sync.delete(in_progress_key_prefix + job.id)

    async def drain(self, rounds: int = 10) -> None:
        """Claim and run until nothing is due."""
        for _ in range(rounds):
            jobs = await self.claim()
            if not jobs:
                return
            for job in jobs:
                await self.run(job)


def _recorder(seen: Seen, *, fail: Callable[[Event, Context], bool] | None = None) -> Any:
    async def record(event: Event, ctx: Context) -> None:
        if fail and fail(event, ctx):
            raise RuntimeError("failing as told")
        seen.append((int(getattr(event.payload, "lead_id", 0) or 0), event.type))

    return record


def _register(
    name: str, *types: str, seen: Seen, fail: Callable[[Event, Context], bool] | None = None, **options: Any
) -> str:
    func = _recorder(seen, fail=fail)
    func.__qualname__ = name
    on(*types, **options)(func)
    return f"{func.__module__}.{name}"


def _state(redis_sync: Redis, event_id: str, handler: str) -> dict[str, Any]:
    raw = redis_sync.hget(event_key(event_id), f"h:{handler}")
    return {} if raw is None else dict(json.loads(raw))


Run = Callable[[], Awaitable[None]]


async def test_a_later_event_waits_unclaimed_and_is_woken_by_the_earlier_ones_finish(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """lead.sold is not claimed while lead.created is queued; created's finish makes sold due now."""
    seen: Seen = []
    name = _register("mirror", "lead.*", seen=seen, ordered=True)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    await _accept(worker_ctx, "s1", "lead.sold", lead_id=1)
    await _accept(worker_ctx, "c2", "lead.created", lead_id=2)
    driver = Driver(worker_ctx, redis_sync)
    jobs = await driver.claim()
    assert [job.id for job in jobs] == ["c1", "c2"]
    deferred = redis_sync.zscore(queue.QUEUE_NAME, "s1")
    assert deferred is not None
    assert deferred >= _now_ms() + WAIT_RECHECK_MS - 2_000
    assert _state(redis_sync, "s1", name) == {}, "waiting must not use an attempt"
    assert redis_sync.hget(event_key("c1"), f"w:{name}") == b"s1"
    before_ms = _now_ms()
    for job in jobs:
        await driver.run(job)
    assert before_ms <= (redis_sync.zscore(queue.QUEUE_NAME, "s1") or 0) <= _now_ms()
    await driver.drain()
    assert seen == [(1, "lead.created"), (2, "lead.created"), (1, "lead.sold")]
    assert _state(redis_sync, "s1", name)["attempts"] == 1


async def test_a_retrying_earlier_event_keeps_the_order(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """lead.created fails its first try: sold, invoiced and paid wait, then all run in order, once each."""
    seen: Seen = []
    _register(
        "mirror",
        "lead.*",
        seen=seen,
        ordered=True,
        fail=lambda event, ctx: event.type == "lead.created" and ctx.attempt == 1,
    )
    for index, event_type in enumerate(("lead.created", "lead.sold", "lead.invoiced", "lead.paid")):
        await _accept(worker_ctx, f"e{index}", event_type, lead_id=7)
    await Driver(worker_ctx, redis_sync).drain()
    assert seen == [(7, "lead.created"), (7, "lead.sold"), (7, "lead.invoiced"), (7, "lead.paid")]


async def test_a_dead_earlier_event_holds_and_a_replay_releases(
    worker_ctx: dict[str, Any], redis_sync: Redis, admin_client: httpx.AsyncClient
) -> None:
    """A dead lead.created holds sold (oa:held with why, /metrics); after a replay both run in order."""
    seen: Seen = []
    fixed: list[bool] = []

    def fail(event: Event, ctx: Context) -> bool:
        if event.type == "lead.created" and not fixed:
            raise PermanentError("CRM refuses")
        return False

    name = _register("mirror", "lead.*", seen=seen, ordered=True, fail=fail)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    await _accept(worker_ctx, "s1", "lead.sold", lead_id=1)
    await _accept(worker_ctx, "i1", "lead.invoiced", lead_id=1)
    driver = Driver(worker_ctx, redis_sync)
    await driver.drain()
    assert seen == []
    assert redis_sync.hget(event_key("c1"), "state") == b"dead"
    assert redis_sync.zrange(HELD_KEY, 0, -1) == [b"s1"]
    held = await held_event(worker_ctx["redis"], "s1")
    assert held is not None
    assert (held.handler, held.behind) == (name, "c1")
    assert await held_event(worker_ctx["redis"], "c1") is None
    # The event history marks it: `events show` and `events list` (and so the console) say why.
    shown = await show_event(worker_ctx["redis"], "s1")
    assert shown is not None
    assert shown.summary.held == {"handler": name, "behind": "c1"}
    listed = {e.id: e.held for e in (await list_events(worker_ctx["redis"], Filters(lead="1"))).events}
    assert listed == {"c1": None, "s1": {"handler": name, "behind": "c1"}, "i1": None}
    metrics = (await admin_client.get("/metrics")).text
    assert "oa_webhooks_held_events 1.0" in metrics
    assert "oa_webhooks_held_alert_seconds 3600.0" in metrics
    # i1 waits behind s1, which is held: after its next look, it is held too.
    redis_sync.zadd(queue.QUEUE_NAME, {"i1": _now_ms() - 1})
    await driver.drain()
    assert set(await held_events(worker_ctx["redis"], ["s1", "i1", "c1"])) == {"s1", "i1"}
    fixed.append(True)
    dlq = DeadLetters(worker_ctx["redis"], retention_s=3600, queue_expiry_ms=600_000)
    assert await dlq.replay("c1", now_ms=_now_ms()) == [name]
    await driver.drain()
    assert seen == [(1, "lead.created"), (1, "lead.sold"), (1, "lead.invoiced")]
    assert redis_sync.zcard(HELD_KEY) == 0
    assert redis_sync.hget(event_key("s1"), "held_by") is None


async def test_purging_the_dead_event_lets_the_held_one_go(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Purge of the dead lead.created: at its next look, the held lead.sold runs and is no longer held."""
    seen: Seen = []

    def fail(event: Event, ctx: Context) -> bool:
        if event.type == "lead.created":
            raise PermanentError("CRM refuses")
        return False

    _register("mirror", "lead.*", seen=seen, ordered=True, fail=fail)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    await _accept(worker_ctx, "s1", "lead.sold", lead_id=1)
    driver = Driver(worker_ctx, redis_sync)
    await driver.drain()
    assert redis_sync.zrange(HELD_KEY, 0, -1) == [b"s1"]
    dlq = DeadLetters(worker_ctx["redis"], retention_s=3600, queue_expiry_ms=600_000)
    assert await dlq.purge("c1")
    redis_sync.zadd(queue.QUEUE_NAME, {"s1": _now_ms() - 1})  # its next look, without the minute's wait
    await driver.drain()
    assert seen == [(1, "lead.sold")]
    assert redis_sync.zcard(HELD_KEY) == 0


async def test_on_dead_skip_lets_later_events_go(worker_ctx: dict[str, Any], redis_sync: Redis) -> None:
    """With on_dead="skip", a dead lead.created does not hold lead.sold."""
    seen: Seen = []

    def fail(event: Event, ctx: Context) -> bool:
        if event.type == "lead.created":
            raise PermanentError("CRM refuses")
        return False

    _register("mirror", "lead.*", seen=seen, ordered=True, on_dead="skip", fail=fail)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    await _accept(worker_ctx, "s1", "lead.sold", lead_id=1)
    await Driver(worker_ctx, redis_sync).drain()
    assert seen == [(1, "lead.sold")]
    assert redis_sync.zcard(HELD_KEY) == 0


async def test_an_unordered_sibling_runs_while_the_ordered_handler_waits(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Sold's plain handler runs at once; its ordered one waits, and is woken mid-run by created."""
    ordered_seen: Seen = []
    plain_seen: Seen = []
    ordered = _register("mirror", "lead.*", seen=ordered_seen, ordered=True)
    _register("plain", "lead.sold", seen=plain_seen)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    await _accept(worker_ctx, "s1", "lead.sold", lead_id=1)
    driver = Driver(worker_ctx, redis_sync)
    jobs = {job.id: job for job in await driver.claim()}
    assert set(jobs) == {"c1", "s1"}
    assert jobs["s1"].waiting == (ordered,)
    # created finishes while sold's run is going on: sold's finish must not defer it to the fallback.
    await driver.run(jobs["c1"])
    assert redis_sync.hget(event_key("s1"), "woken") == b"1"
    await driver.run(jobs["s1"])
    assert plain_seen == [(1, "lead.sold")]
    assert _state(redis_sync, "s1", ordered) == {}
    assert (redis_sync.zscore(queue.QUEUE_NAME, "s1") or 0) <= _now_ms()
    await driver.drain()
    assert ordered_seen == [(1, "lead.created"), (1, "lead.sold")]
    assert redis_sync.hget(event_key("s1"), "state") == b"done"


async def test_concurrent_claimers_never_run_two_events_of_one_lead_at_once(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Eight claimers at once over 50 leads x 3 events: each claims at most the first event of a lead."""
    _register("mirror", "lead.*", seen=[], ordered=True)
    for lead in range(50):
        for stage, event_type in enumerate(("lead.created", "lead.sold", "lead.paid")):
            await _accept(worker_ctx, f"l{lead}_{stage}", event_type, lead_id=lead)
    ids = redis_sync.zrangebyscore(queue.QUEUE_NAME, "-inf", "+inf")
    plan = claim_plan(registered(), job_ttl_ms=600_000, slot_ttl_ms=60_000, probe_ms=30_000)
    claimers = [
        Claimer(worker_ctx["redis"], queue_name=queue.QUEUE_NAME, claim_ttl_ms=60_000, plan=plan)
        for _ in range(8)
    ]
    import asyncio  # noqa: PLC0415 - only this test gathers

    results = await asyncio.gather(*(c.claim(ids, limit=100, now_ms=_now_ms()) for c in claimers))
    taken = sorted(job.id for result in results for job in result)
    assert taken == sorted(f"l{lead}_0" for lead in range(50))


async def test_other_keys_order_by_invoice_and_expired_indexes(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """order_key="invoice_id" orders by invoice; an index that expired no longer holds anything."""
    seen: Seen = []
    _register("by_invoice", "invoice.*", seen=seen, order_key="invoice_id")
    await _accept(worker_ctx, "ic", "invoice.created", invoice_id=5, lead_id=1)
    await _accept(worker_ctx, "ip", "invoice.paid", invoice_id=5, lead_id=1)
    await _accept(worker_ctx, "other", "invoice.created", invoice_id=6, lead_id=1)
    driver = Driver(worker_ctx, redis_sync)
    assert sorted(job.id for job in await driver.claim()) == ["ic", "other"]
    redis_sync.delete("oa:idx:invoice:5")
    redis_sync.zadd(queue.QUEUE_NAME, {"ip": _now_ms() - 1})
    assert [job.id for job in await driver.claim()] == ["ip"]
    assert redis_sync.exists(lead_index_key("1"))


async def test_a_record_without_its_default_fields_counts_as_due(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """A pending handler record that leaves out next_ms and attempts (their defaults) is due, not an error."""
    name = _register("mirror", "lead.*", seen=[], ordered=True)
    await _accept(worker_ctx, "c1", "lead.created", lead_id=1)
    redis_sync.hset(event_key("c1"), f"h:{name}", '{"state":"pending"}')
    assert [job.id for job in await Driver(worker_ctx, redis_sync).claim()] == ["c1"]


async def test_an_event_without_its_key_runs_unordered_logged_once(
    worker_ctx: dict[str, Any], redis_sync: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Invoice events without lead_id run for an ordered `*` handler, with one warning for both."""
    seen: Seen = []
    _register("everything", "*", seen=seen, ordered=True)
    await _accept(worker_ctx, "a", "invoice.created", invoice_id=1)
    await _accept(worker_ctx, "b", "invoice.created", invoice_id=2)
    with caplog.at_level(logging.WARNING, logger="oa.worker"):
        await Driver(worker_ctx, redis_sync).drain()
    assert len(seen) == 2
    lines = [r.getMessage() for r in caplog.records if "unordered" in r.getMessage()]
    assert len(lines) == 1
    assert "has no lead_id" in lines[0]


def test_only_keys_recorded_at_ingest_can_order() -> None:
    """on() refuses an order_key the ledger does not record, naming the two it does; and a stray on_dead."""
    with pytest.raises(ValueError, match="'lead_id' or 'invoice_id'"):
        on("lead.*", order_key="email")
    with pytest.raises(ValueError, match="ordered=True"):
        on("lead.*", on_dead="skip")
    with pytest.raises(ValueError, match="'hold'"):
        on("lead.*", ordered=True, on_dead="drop")
    assert not registered()
