"""Handler protection end to end: real API and worker processes, a real Redis, a real HTTP server as the CRM.

Each test writes a handler module that calls the CRM (tests/crm_server.py) and starts the compose
commands with two workers, as a user runs them; the CRM records what reached it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.store.handlers import BREAKER_KEY, slots_key
from service.store.ledger import DEAD_KEY, event_key
from tests.conftest import ENDPOINT, SECRET, envelope, signed_headers
from tests.crm_server import Crm
from tests.processes import BIN, Service, Stack, wait_for

pytestmark = pytest.mark.e2e
MODULE = "protect_probe"
PREFIX = f"workers.handlers.{MODULE}"
HANDLERS = """
import os

from workers import Context, Event, on

CRM = os.environ["CRM_URL"]


async def _call(ctx: Context, path: str, event: Event) -> None:
    (await ctx.http.post(CRM + path, json={{"id": event.id}})).raise_for_status()


@on("lead.created"{options})
async def limited(event: Event, ctx: Context) -> None:
    await _call(ctx, "/limited", event)


{free}"""
FREE = """
@on("lead.created")
async def free(event: Event, ctx: Context) -> None:
    await _call(ctx, "/free", event)
"""


class Fleet:
    """The api and two worker processes, with the handler module and the CRM's address."""

    def __init__(
        self, tmp_path: Path, redis_url: str, crm: Crm, options: str, *, free: bool = True, **settings: str
    ) -> None:
        self.stack = Stack(tmp_path, redis_url, SECRET, CRM_URL=crm.url, **settings)
        self.stack.add_handler_module(MODULE, HANDLERS.format(options=options, free=FREE if free else ""))
        self.second = Service("worker", self.stack.worker.env, tmp_path / "worker-2.log")

    def start(self, *, workers: int = 2) -> None:
        """Start the API and the workers."""
        self.stack.start()
        if workers == 2:
            self.second.start()

    def send(self, count: int, *, prefix: str = "e") -> list[str]:
        """Post `count` signed lead.created events; every one is accepted."""
        ids = [f"{prefix}{i:03d}" for i in range(count)]
        with httpx.Client(base_url=self.stack.base_url, timeout=10) as http:
            for i, event_id in enumerate(ids):
                body = envelope(event_id, "lead.created", lead_id=1000 + i)
                assert http.post(ENDPOINT, content=body, headers=signed_headers(body)).status_code == 202
        return ids

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `oa-webhooks ARGS` as an operator would, with the stack's settings."""
        return subprocess.run(
            [str(BIN / "oa-webhooks"), *args],
            env=self.stack.api.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def close(self) -> None:
        """Stop every process; remove the module."""
        self.second.stop()
        self.stack.close()


@pytest.fixture
def crm() -> Iterator[Crm]:
    """The CRM, listening on loopback."""
    server = Crm().start()
    yield server
    server.stop()


def _fleet(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    crm: Crm,
    options: str,
    *,
    free: bool = True,
    **settings: str,
) -> Fleet:
    fleet = Fleet(tmp_path, redis_url, crm, options, free=free, **settings)
    request.addfinalizer(fleet.close)
    return fleet


def _all_done(redis_sync: Redis, ids: list[str]) -> bool:
    return all(redis_sync.hget(event_key(i), "state") == b"done" for i in ids)


def _succeeded(fleet: Fleet, handler: str) -> dict[str, int]:
    """How many times each event's `handler` logged success, across both workers."""
    counts: dict[str, int] = {}
    for service in (fleet.stack.worker, fleet.second):
        if service.process is None:
            continue
        for line in service.records():
            if line.get("msg") == "handler succeeded" and line.get("handler") == handler:
                counts[line["event_id"]] = counts.get(line["event_id"], 0) + 1
    return counts


def test_concurrency_is_a_fleet_wide_limit(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm
) -> None:
    """concurrency=2 over 2 workers: the CRM never sees more than 2 calls at once; unlimited sees more."""
    crm.set("ok", delay_s=0.3)
    fleet = _fleet(request, tmp_path, redis_url, crm, ", concurrency=2")
    fleet.start()
    ids = fleet.send(30)
    wait_for(lambda: _all_done(redis_sync, ids), timeout_s=60, what="30 events done")
    limited, free = crm.on("/limited"), crm.on("/free")
    assert sorted(c.event_id for c in limited) == ids, "each event called the limited endpoint once"
    assert max(c.in_flight for c in limited) <= 2
    assert max(c.in_flight for c in free) > 2, "without the limit the same load overlaps: the test can fail"
    assert redis_sync.zcard(slots_key(f"{PREFIX}.limited")) == 0


RATE_HANDLERS = """
import os

from workers import Context, Event, on

CRM = os.environ["CRM_URL"]


@on("lead.rate_probe", rate="10/s")
async def limited(event: Event, ctx: Context) -> None:
    (await ctx.http.post(CRM + "/limited", json={"id": event.id})).raise_for_status()


@on("lead.free_probe")
async def free(event: Event, ctx: Context) -> None:
    (await ctx.http.post(CRM + "/free", json={"id": event.id})).raise_for_status()
"""


def test_rate_is_a_fleet_wide_limit(tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm) -> None:
    """rate="10/s" over 2 workers: no 1-second window at the CRM holds more than 10 starts."""
    stack = Stack(tmp_path, redis_url, SECRET, CRM_URL=crm.url)
    second = Service("worker", stack.worker.env, tmp_path / "worker-2.log")
    try:
        # Types that only these handlers match: an event over the limit is then not claimed at all, so
        # a worker runs at most the ten it may start at once, and each reaches the CRM promptly.
        stack.add_handler_module(MODULE, RATE_HANDLERS)
        stack.start()
        second.start()
        # The limited events first, alone: the unlimited ones would load the workers meanwhile and
        # delay the calls the limiter let through.
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            for kind in ("rate", "free"):
                ids = []
                for i in range(35):
                    body = envelope(f"{kind}{i:03d}", f"lead.{kind}_probe", lead_id=i)
                    assert http.post(ENDPOINT, content=body, headers=signed_headers(body)).status_code == 202
                    ids.append(f"{kind}{i:03d}")
                wait_for(
                    lambda ids=ids: _all_done(redis_sync, ids), timeout_s=60, what=f"35 {kind} events done"
                )
    finally:
        second.stop()
        stack.close()
    starts = sorted(c.started for c in crm.on("/limited"))
    assert len(starts) == 35
    # Starts are counted by Redis's clock at the claim, exactly (tests/test_protect.py); each call leaves
    # the worker a few ms to a few hundred ms later on a loaded machine (its event loop runs the other
    # runs first), so a window at the CRM allows 300 ms of that jitter.
    busiest = max(sum(1 for s in starts if t <= s < t + 0.7) for t in starts)
    assert busiest <= 10, busiest
    assert starts[-1] - starts[0] >= 2.5, "35 starts at 10/s take three windows: the limit binds"
    free = sorted(c.started for c in crm.on("/free"))
    assert max(sum(1 for s in free if t <= s < t + 0.7) for t in free) > 10, "the unlimited one is not held"


def test_a_429_with_retry_after_is_retried_no_sooner_than_it_asks(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm
) -> None:
    """A 429 with Retry-After: 3 is retried at least 3 s later, though the backoff would wait 0.1 s."""
    crm.set("ok", retry_after="3")
    crm.script["/limited"] = ["limited"]
    fleet = _fleet(request, tmp_path, redis_url, crm, ", concurrency=1", OA_RETRY_INITIAL_S="0.1")
    fleet.start(workers=1)
    ids = fleet.send(1)
    wait_for(lambda: _all_done(redis_sync, ids), timeout_s=30, what="the event done")
    first, second = crm.on("/limited")
    assert (first.status, second.status) == (429, 200)
    assert second.started - first.ended >= 2.95, second.started - first.ended
    retry = [r for r in fleet.stack.worker.records() if r.get("outcome") == "retrying"]
    assert [r["retry_in_s"] >= 3 for r in retry] == [True]


def test_an_outage_trips_the_breaker_makes_no_dead_letter_and_drains_after_recovery(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm
) -> None:
    """CRM down 15 s, 40 events: far fewer calls than tries x events, no dead letter, a quick drain."""
    crm.set("down")
    settings = {
        "OA_RETRY_INITIAL_S": "0.2",
        "OA_RETRY_MAX_DELAY_S": "1",
        "OA_MAX_TRIES": "5",
        "OA_BREAKER_FAILURES": "5",
        "OA_BREAKER_PROBE_S": "1",
    }
    fleet = _fleet(request, tmp_path, redis_url, crm, "", **settings)
    fleet.start()
    handler = f"{PREFIX}.limited"
    ids = fleet.send(40)
    wait_for(lambda: redis_sync.hexists(BREAKER_KEY, handler), timeout_s=20, what="the breaker to trip")
    listed = {h["name"]: h for h in json.loads(fleet.cli("handlers", "--json").stdout)}
    assert listed[handler]["state"] == "tripped"
    status = json.loads(fleet.cli("status", "--json").stdout)
    assert {h["name"]: h["state"] for h in status["handlers"]}[handler] == "tripped"
    metrics = httpx.get(f"{fleet.stack.admin_url}/metrics", timeout=5).text
    assert f'oa_webhooks_handler_paused{{handler="{handler}",reason="tripped"}} 1.0' in metrics
    time.sleep(15)  # the outage itself: what is measured is what happens during it
    during = len(crm.on("/limited"))
    crm.set("ok")
    back = time.monotonic()
    wait_for(lambda: _all_done(redis_sync, ids), timeout_s=30, what="40 events done after recovery")
    drain_s = time.monotonic() - back
    print(
        f"\nbreaker: {during} calls during the outage (40 events x 5 tries = 200); drained in {drain_s:.1f} s"
    )
    assert during < 100, during
    assert redis_sync.zcard(DEAD_KEY) == 0
    assert not redis_sync.hexists(BREAKER_KEY, handler)
    assert _succeeded(fleet, handler) == dict.fromkeys(ids, 1)
    changes = [
        (r["handler"], r["outcome"])
        for s in (fleet.stack.worker, fleet.second)
        for r in s.records()
        if r.get("outcome") in ("tripped", "closed")
    ]
    # Both handlers call the CRM, so both trip; one line per change, not one per event.
    assert sorted(changes) == [
        (f"{PREFIX}.free", "closed"),
        (f"{PREFIX}.free", "tripped"),
        (handler, "closed"),
        (handler, "tripped"),
    ]


def test_a_paused_handler_gets_no_call_and_each_waiting_event_runs_once_after_resume(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm
) -> None:
    """Paused: nothing reaches the CRM, the other handler runs, the lag stays low; resumed: each runs once."""
    fleet = _fleet(request, tmp_path, redis_url, crm, "")
    fleet.start()
    handler = f"{PREFIX}.limited"
    wait_for(
        lambda: handler in fleet.cli("handlers", "--json").stdout, timeout_s=20, what="the handler listed"
    )
    paused = fleet.cli("handlers", "pause", handler)
    assert paused.returncode == 0, paused.stderr
    ids = fleet.send(10)
    wait_for(lambda: len(crm.on("/free")) == 10, timeout_s=30, what="the other handler to run for all 10")
    wait_for(
        lambda: (
            {h["name"]: h for h in json.loads(fleet.cli("handlers", "--json").stdout)}[handler]["waiting"]
            == 10
        ),
        timeout_s=20,
        what="10 events waiting for the paused handler",
    )
    time.sleep(1.5)  # long enough for a worker to have called the CRM, were the pause not kept
    assert crm.on("/limited") == []
    status = json.loads(fleet.cli("status", "--json").stdout)
    assert status["oldest_queued_age_s"] < 1, "a deliberate pause is not lag"
    assert fleet.cli("handlers", "resume", handler).returncode == 0
    wait_for(lambda: _all_done(redis_sync, ids), timeout_s=30, what="10 events done after resume")
    assert sorted(c.event_id for c in crm.on("/limited")) == ids


def test_unknown_names_exit_1_and_list_the_known_handlers(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, crm: Crm
) -> None:
    """`handlers pause NAME` with a name no worker registered exits 1 and names the handlers there are."""
    fleet = _fleet(request, tmp_path, redis_url, crm, "")
    fleet.start(workers=1)
    wait_for(
        lambda: f"{PREFIX}.limited" in fleet.cli("handlers", "--json").stdout, timeout_s=20, what="listed"
    )
    answer = fleet.cli("handlers", "pause", "workers.handlers.nope.nope")
    assert answer.returncode == 1
    assert f"{PREFIX}.limited" in answer.stderr


def test_a_worker_killed_holding_a_slot_gives_it_back_and_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_sync: Redis, crm: Crm
) -> None:
    """SIGKILL mid-call with concurrency=1: the slot expires with the job timeout; all events done once."""
    crm.set("ok", delay_s=1.5)
    # Only the limited handler calls the CRM: the events it holds back are not in the killed worker's
    # hands (its quick example handler, workers/handlers/leads.py, ran on them and finished).
    fleet = _fleet(request, tmp_path, redis_url, crm, ", concurrency=1", free=False, OA_JOB_TIMEOUT_S="2")
    fleet.start(workers=1)
    ids = fleet.send(4)
    wait_for(lambda: len(crm.on("/limited")) == 1, timeout_s=20, what="the first call in flight")
    fleet.stack.worker.signal(signal.SIGKILL)
    fleet.stack.worker.wait(timeout_s=10)
    killed_at = time.monotonic()
    fleet.second.start()
    wait_for(lambda: len(crm.on("/limited")) >= 2, timeout_s=30, what="the slot to come back")
    # The slot lives the job timeout plus 5 s (OA_JOB_TIMEOUT_S + 5): then the next event may start.
    assert crm.on("/limited")[1].started - killed_at < 10
    wait_for(lambda: _all_done(redis_sync, ids), timeout_s=60, what="all 4 done")
    assert _succeeded(fleet, f"{PREFIX}.limited") == dict.fromkeys(ids, 1)
    assert max(c.in_flight for c in crm.on("/limited")) == 1
    assert redis_sync.zcard(slots_key(f"{PREFIX}.limited")) == 0
