"""Handler protection in-process against a real Redis: limits, pause and breaker, as the claim decides them.

The driver of tests/test_order.py plays the worker (claim with the plan, run with `process_event`);
the handlers here record what ran. End-to-end checks with real processes and a real HTTP server as
the CRM are in tests/test_protect_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis

from service.store import queue
from service.store.handlers import (
    BREAKER_KEY,
    FAILS_KEY,
    UnknownHandler,
    handler_views,
    pause,
    publish,
    resume,
    slots_key,
    waiting_key,
)
from service.store.history import show_event
from service.store.ledger import event_key
from tests.conftest import make_settings
from tests.test_order import Driver, Seen, _accept, _register, _state
from workers.registry import Rate, registered
from workers.runtime.claim import Claimer
from workers.runtime.protect import claim_plan, handler_spec

pytestmark = pytest.mark.usefixtures("clean_registry")
PROBE_MS = 300


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def ctx(worker_ctx: dict[str, Any], redis_url: str) -> dict[str, Any]:
    """The worker ctx with a breaker that trips after 3 failures and probes every 0.3 s."""
    settings = make_settings(
        redis_url,
        OA_RETRY_INITIAL_S=0,
        OA_MAX_TRIES=3,
        OA_BREAKER_FAILURES=3,
        OA_BREAKER_PROBE_S=PROBE_MS / 1000,
    )
    return worker_ctx | {"oa": replace(worker_ctx["oa"], settings=settings)}


class Fleet(Driver):
    """The test driver with the current handlers' plan, and their specs published as a worker does."""

    def __init__(self, ctx: dict[str, Any], redis_sync: Redis) -> None:
        super().__init__(ctx, redis_sync)
        plan = claim_plan(registered(), job_ttl_ms=600_000, slot_ttl_ms=60_000, probe_ms=PROBE_MS)
        self.claimer = Claimer(ctx["redis"], queue_name=queue.QUEUE_NAME, claim_ttl_ms=60_000, plan=plan)

    async def publish(self) -> None:
        """Record the handlers in `oa:handlers`, as each worker does when it starts."""
        await publish(self.ctx["redis"], {h.name: handler_spec(h) for h in registered()}, now_ms=_now_ms())


def _due(redis_sync: Redis) -> set[str]:
    return {m.decode() for m in redis_sync.zrangebyscore(queue.QUEUE_NAME, "-inf", _now_ms())}


async def test_concurrency_takes_at_most_n_slots_and_a_freed_slot_wakes_a_waiter(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """concurrency=2: two of five events are claimed; the others wait, and a freed slot wakes one."""
    crm = _register("crm", "lead.created", seen=[], concurrency=2)
    for i in range(5):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    fleet = Fleet(ctx, redis_sync)
    first = await fleet.claim()
    assert [job.id for job in first] == ["e0", "e1"]
    assert redis_sync.zcard(slots_key(crm)) == 2
    assert {m.decode() for m in redis_sync.zrange(waiting_key(crm), 0, -1)} == {"e2", "e3", "e4"}
    assert _due(redis_sync) == {"e0", "e1"}, "the waiting events are deferred, not due"
    assert redis_sync.hget(event_key("e2"), f"wait:{crm}").decode().startswith("concurrency ")
    assert _state(redis_sync, "e2", crm) == {}, "waiting used no attempt"
    await fleet.run(first[0])
    assert redis_sync.zcard(slots_key(crm)) == 1
    assert _due(redis_sync) == {"e1", "e2"}, "the freed slot woke the longest waiter"
    second = await fleet.claim()
    assert [job.id for job in second] == ["e2"]
    assert second[0].waited[crm][0] == "concurrency"
    assert redis_sync.hget(event_key("e2"), f"wait:{crm}") is None
    await fleet.run(first[1])
    await fleet.run(second[0])
    await fleet.drain()
    assert all(redis_sync.hget(event_key(f"e{i}"), "state") == b"done" for i in range(5))
    assert redis_sync.zcard(slots_key(crm)) == 0
    assert redis_sync.zcard(waiting_key(crm)) == 0


async def test_an_event_over_a_limit_runs_its_other_handlers(ctx: dict[str, Any], redis_sync: Redis) -> None:
    """A handler at its limit sits the run out; the event's unlimited handler runs at once."""
    seen: Seen = []
    crm = _register("crm", "lead.created", seen=[], concurrency=1)
    _register("audit", "lead.created", seen=seen)
    for i in range(2):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    jobs = await Fleet(ctx, redis_sync).claim()
    assert {job.id: dict(job.skip) for job in jobs} == {"e0": {}, "e1": {crm: "concurrency"}}
    for job in jobs:
        await Fleet(ctx, redis_sync).run(job)
    assert sorted(seen) == [(0, "lead.created"), (1, "lead.created")]
    assert _state(redis_sync, "e1", crm) == {}
    assert redis_sync.hget(event_key("e1"), "state") == b"queued", "waiting is not a failure"


async def test_rate_allows_n_starts_per_window_and_spreads_the_rest(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """rate="3/s": three of six events start; the others are deferred past the window, one per third of it."""
    _register("crm", "lead.created", seen=[], rate="3/s")
    for i in range(6):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    before = _now_ms()
    jobs = await Fleet(ctx, redis_sync).claim()
    assert [job.id for job in jobs] == ["e0", "e1", "e2"]
    scores = [redis_sync.zscore(queue.QUEUE_NAME, f"e{i}") for i in (3, 4, 5)]
    assert all(s is not None and s >= before + 1000 for s in scores)
    assert scores[0] < scores[1] < scores[2] <= before + 2000


async def test_pause_holds_a_handler_for_every_worker_and_resume_wakes_its_events(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Paused: its events wait (no try), other handlers run; resumed: the waiting events are due at once."""
    seen: Seen = []
    crm = _register("crm", "lead.created", seen=seen)
    audit_seen: Seen = []
    _register("audit", "lead.created", seen=audit_seen)
    fleet = Fleet(ctx, redis_sync)
    await fleet.publish()
    await pause(ctx["redis"], crm, now_ms=_now_ms())
    for i in range(3):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    await fleet.drain()
    assert seen == []
    assert len(audit_seen) == 3
    assert _due(redis_sync) == set()
    views = {v.name: v for v in await handler_views(ctx["redis"], now_ms=_now_ms())}
    assert (views[crm].state, views[crm].waiting) == ("paused", 3)
    record = await show_event(ctx["redis"], "e0")
    assert record is not None
    assert record.waiting[crm][0] == "paused"
    assert await resume(ctx["redis"], crm, now_ms=_now_ms()) == 3
    assert _due(redis_sync) == {"e0", "e1", "e2"}
    await fleet.drain()
    assert sorted(seen) == [(0, "lead.created"), (1, "lead.created"), (2, "lead.created")]
    views = {v.name: v for v in await handler_views(ctx["redis"], now_ms=_now_ms())}
    assert (views[crm].state, views[crm].waiting) == ("active", 0)


async def test_pause_for_a_duration_ends_by_itself(ctx: dict[str, Any], redis_sync: Redis) -> None:
    """`pause --for`: the events wait until the end, then run without a resume."""
    seen: Seen = []
    crm = _register("crm", "lead.created", seen=seen)
    await Fleet(ctx, redis_sync).publish()
    await pause(ctx["redis"], crm, now_ms=_now_ms(), until_ms=_now_ms() + 400)
    await _accept(ctx, "e0", "lead.created", lead_id=1)
    await Fleet(ctx, redis_sync).drain()
    assert seen == []
    await asyncio.sleep(0.5)
    await Fleet(ctx, redis_sync).drain()
    assert seen == [(1, "lead.created")]


async def test_pausing_an_unknown_handler_names_the_known_ones(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """An unknown name is refused, and the error lists the handlers the workers registered."""
    crm = _register("crm", "lead.created", seen=[])
    await Fleet(ctx, redis_sync).publish()
    with pytest.raises(UnknownHandler) as caught:
        await pause(ctx["redis"], "workers.handlers.nope.nope", now_ms=_now_ms())
    assert caught.value.known == [crm]
    assert crm in str(caught.value)


async def test_the_breaker_trips_probes_without_using_tries_and_closes(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """3 failures trip it; waiting uses no try; a failed probe gives its try back; a good one closes it."""
    down = [True]
    seen: Seen = []
    crm = _register("crm", "lead.created", seen=seen, fail=lambda _e, _c: down[0], max_tries=3)
    fleet = Fleet(ctx, redis_sync)
    for i in range(3):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    for job in await fleet.claim():
        await fleet.run(job)
    assert json.loads(redis_sync.hget(BREAKER_KEY, crm))["since_ms"] > 0
    assert int(redis_sync.hget(FAILS_KEY, crm)) == 3
    for i in range(3, 8):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    assert await fleet.claim() == [], "tripped: nothing starts before the probe is due"
    assert _state(redis_sync, "e5", crm) == {}
    await asyncio.sleep(PROBE_MS / 1000 + 0.05)
    probes = await fleet.claim()
    assert len(probes) == 1
    assert probes[0].probes == frozenset({crm})
    probe_id = probes[0].id
    attempts_before = _state(redis_sync, probe_id, crm).get("attempts", 0)
    await fleet.run(probes[0])
    assert _state(redis_sync, probe_id, crm).get("attempts", 0) == attempts_before, (
        "the failed probe gave its try back"
    )
    assert redis_sync.hexists(BREAKER_KEY, crm)
    down[0] = False
    await asyncio.sleep(PROBE_MS / 1000 + 0.05)
    probes = await fleet.claim()
    assert len(probes) == 1
    assert probes[0].id != probe_id, "probes rotate over the waiting events"
    await fleet.run(probes[0])
    assert not redis_sync.hexists(BREAKER_KEY, crm)
    assert not redis_sync.hexists(FAILS_KEY, crm)
    await fleet.drain()
    assert {f"e{i}" for i in range(8)} == {
        f"e{i}" for i in range(8) if redis_sync.hget(event_key(f"e{i}"), "state") == b"done"
    }
    assert redis_sync.zcard("oa:dead") == 0


async def test_a_permanent_error_does_not_count_towards_the_breaker(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """PermanentError is about the event: five in a row leave the breaker closed and uncounted."""
    from workers import PermanentError  # noqa: PLC0415

    def refuse(_event: object, _ctx: object) -> bool:
        raise PermanentError("unknown lead")

    crm = _register("crm", "lead.created", seen=[], fail=refuse)
    for i in range(5):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    await Fleet(ctx, redis_sync).drain()
    assert not redis_sync.hexists(BREAKER_KEY, crm)
    assert redis_sync.hget(FAILS_KEY, crm) is None


async def test_breaker_false_opts_out(ctx: dict[str, Any], redis_sync: Redis) -> None:
    """With breaker=False, failures in a row never trip it: every event keeps its own retries."""
    crm = _register("crm", "lead.created", seen=[], fail=lambda _e, _c: True, breaker=False)
    for i in range(4):
        await _accept(ctx, f"e{i}", "lead.created", lead_id=i)
    await Fleet(ctx, redis_sync).drain()
    assert not redis_sync.hexists(BREAKER_KEY, crm)
    assert redis_sync.zcard("oa:dead") == 4


def test_on_refuses_limits_that_cannot_work() -> None:
    """A concurrency below 1, or a rate not written as N/s, N/m or N/h, is refused at import, saying why."""
    from workers import on  # noqa: PLC0415

    for bad in ({"concurrency": 0}, {"concurrency": True}, {"rate": "10"}, {"rate": "0/s"}, {"rate": "5/d"}):
        with pytest.raises(ValueError, match=r"^(concurrency|rate)=") as caught:
            on("lead.created", **bad)
        assert "at least 1" in str(caught.value) or "such as '10/s'" in str(caught.value)
    assert [str(Rate.parse(text)) for text in ("10/s", "600 / m", "5000/h")] == ["10/s", "600/m", "5000/h"]
    assert Rate.parse("600/m").window_s == 60


async def test_probes_rotate_over_every_waiting_event(ctx: dict[str, Any], redis_sync: Redis) -> None:
    """While the downstream stays down, each probe goes to the event that has waited longest."""
    crm = _register("crm", "lead.created", seen=[], fail=lambda _e, _c: True, max_tries=3)
    fleet = Fleet(ctx, redis_sync)
    for i in range(3):
        await _accept(ctx, f"t{i}", "lead.created", lead_id=i)
    await fleet.drain(rounds=1)
    assert redis_sync.hexists(BREAKER_KEY, crm)
    for i in range(4):
        await _accept(ctx, f"w{i}", "lead.created", lead_id=10 + i)
    probed: list[str] = []
    for _ in range(7):
        await asyncio.sleep(PROBE_MS / 1000 + 0.02)
        for job in await fleet.claim():
            if crm in job.probes:
                probed.append(job.id)
            await fleet.run(job)
    assert len(probed) == 7
    assert set(probed) == {"t0", "t1", "t2", "w0", "w1", "w2", "w3"}, probed
    assert redis_sync.zcard("oa:dead") == 0


async def test_an_ordered_handler_keeps_each_leads_order_under_a_limit_a_pause_and_its_breaker(
    ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """ordered=True with concurrency=1 and rate: paused, tripped and probed, each lead still runs in order."""
    down = [False]
    seen: Seen = []
    mirror = _register(
        "mirror",
        "lead.*",
        seen=seen,
        fail=lambda _e, _c: down[0],
        ordered=True,
        concurrency=1,
        rate="50/s",
        max_tries=10,
    )
    fleet = Fleet(ctx, redis_sync)
    await fleet.publish()
    stages = ("lead.created", "lead.sold", "lead.invoiced", "lead.paid")
    await pause(ctx["redis"], mirror, now_ms=_now_ms())
    for stage, event_type in enumerate(stages[:2]):
        for lead in (1, 2):
            await _accept(ctx, f"l{lead}_{stage}", event_type, lead_id=lead)
    await fleet.drain()
    assert seen == []
    await resume(ctx["redis"], mirror, now_ms=_now_ms())
    down[0] = True  # the downstream fails: three failures in a row trip the breaker
    for stage, event_type in enumerate(stages[2:], start=2):
        for lead in (1, 2):
            await _accept(ctx, f"l{lead}_{stage}", event_type, lead_id=lead)
    for _ in range(6):
        await fleet.drain(rounds=3)
        await asyncio.sleep(PROBE_MS / 1000 + 0.02)
    assert redis_sync.hexists(BREAKER_KEY, mirror)
    down[0] = False
    deadline = time.monotonic() + 10
    while len(seen) < 8 and time.monotonic() < deadline:
        await fleet.drain()
        await asyncio.sleep(0.05)
    for lead in (1, 2):
        assert [t for lid, t in seen if lid == lead] == list(stages), seen
    assert redis_sync.zcard("oa:dead") == 0


async def test_a_replay_for_one_handler_waits_for_its_pause(ctx: dict[str, Any], redis_sync: Redis) -> None:
    """`events replay --handler` of a paused handler queues the event, which waits until resume."""
    from service.store.replay import Replayer  # noqa: PLC0415

    seen: Seen = []
    crm = _register("crm", "lead.created", seen=seen)
    fleet = Fleet(ctx, redis_sync)
    await fleet.publish()
    await _accept(ctx, "e0", "lead.created", lead_id=1)
    await fleet.drain()
    assert seen == [(1, "lead.created")]
    await pause(ctx["redis"], crm, now_ms=_now_ms())
    await Replayer(ctx["redis"], queue_expiry_ms=600_000).replay("e0", handler=crm)
    await fleet.drain()
    assert seen == [(1, "lead.created")], "the replay waits for the pause"
    assert redis_sync.zscore(waiting_key(crm), "e0") is not None
    await resume(ctx["redis"], crm, now_ms=_now_ms())
    await fleet.drain()
    assert seen == [(1, "lead.created"), (1, "lead.created")]
