"""Per-lead order with real processes: API, two workers (one SIGKILLed mid-handler), retries, dead letters.

The handler module below records, per lead, each handler's starts and (once per event, atomically
with the effect) its successes, in Redis lists. The ordered handler's lists must show each lead's
events in acceptance order; the unordered one, fed the same failures, shows the disorder the
issue measured, which proves the check can fail.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.store.ledger import DEAD_KEY
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.processes import Service, Stack, wait_for

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
STAGES = ["lead.created", "lead.sold", "lead.invoiced", "lead.paid"]
SETTINGS = {
    # A killed worker's claims last OA_JOB_TIMEOUT_S + 15 s: long enough for the other leads to finish.
    "OA_JOB_TIMEOUT_S": "8",
    "OA_RETRY_INITIAL_S": "1.5",
    "OA_RETRY_JITTER": "0",
    "OA_MAX_TRIES": "4",
    "OA_RECONCILE_INTERVAL_S": "1",
    "OA_REDIS_TIMEOUT_S": "1",
    "OA_SHUTDOWN_GRACE_S": "2",
    # The probe handlers fail the first try of a third of the leads at once, while a success takes
    # 0.2 s: often ten failures come before the first success, which trips the circuit breaker and
    # holds every lead until its probe, 30 s on (1 run in 6 timed out so). Order is tested here.
    "OA_BREAKER_FAILURES": "1000",
}

SOURCE = '''
import asyncio
import os

from workers import Context, Event, PermanentError, on

# The effect and its record in one step, so a run killed between them cannot record twice.
RECORD_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX') then redis.call('RPUSH', KEYS[2], ARGV[1]) end
"""


async def run(kind: str, event: Event, ctx: Context) -> None:
    lead = event.payload.lead_id
    redis = ctx.redis
    running = f"order:running:{os.getpid()}"
    await redis.rpush(f"order:{kind}:starts:{lead}", event.type)
    await redis.sadd(running, event.id)
    try:
        if event.type == "lead.created" and lead == 1000 and not await redis.exists("order:fixed"):
            raise PermanentError("the CRM refuses this lead")
        if event.type == "lead.created" and lead % 3 == 0 and ctx.attempt == 1:
            raise RuntimeError("first try of lead.created fails")
        await asyncio.sleep(0.2)
        keys = [f"order:{kind}:effect:{event.id}", f"order:{kind}:done:{lead}"]
        await redis.eval(RECORD_ONCE, 2, *keys, event.type)
    finally:
        await redis.srem(running, event.id)


@on("lead.*", ordered=True)
async def ordered(event: Event, ctx: Context) -> None:
    await run("ordered", event, ctx)


@on("lead.*")
async def unordered(event: Event, ctx: Context) -> None:
    await run("unordered", event, ctx)


@on("lead.*", ordered=True, on_dead="skip")
async def skipping(event: Event, ctx: Context) -> None:
    await run("skipping", event, ctx)
'''


def _body(lead: int, stage: int) -> bytes:
    event = {"id": f"lead{lead}_{stage}", "type": STAGES[stage], "payload": {"lead_id": lead}}
    return json.dumps(event).encode()


async def _send(base_url: str, leads: list[int]) -> None:
    """Each lead's events in order (each after the previous 202), the leads concurrently."""
    limit = asyncio.Semaphore(50)
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as http:

        async def lead_events(lead: int) -> None:
            for stage in range(len(STAGES)):
                body = _body(lead, stage)
                async with limit:
                    answer = await http.post(ENDPOINT, content=body, headers=signed_headers(body))
                assert answer.status_code == 202, answer.text

        await asyncio.gather(*(lead_events(lead) for lead in leads))


def _list(redis: Redis, key: str) -> list[str]:
    return [item.decode() for item in redis.lrange(key, 0, -1)]


def _runs_in_turn(starts: list[str]) -> list[str]:
    """The starts with repeats of one event folded: one at a time means no interleaving."""
    return [s for i, s in enumerate(starts) if i == 0 or starts[i - 1] != s]


def _status(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(BIN / "oa-webhooks"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return dict(json.loads(done.stdout))


@pytest.fixture
def order_stack(tmp_path: Path, redis_url: str) -> Any:
    """API and two workers with the recording handlers (started by the test)."""
    stack = Stack(tmp_path, redis_url, SECRET, **SETTINGS)
    stack.add_handler_module("order_probe", SOURCE)
    second = Service("worker", stack.worker.env, tmp_path / "worker2.log")
    yield stack, second
    second.stop()
    stack.close()


def test_each_lead_is_seen_in_order_across_retries_workers_and_a_sigkill(
    order_stack: tuple[Stack, Service], redis_sync: Redis
) -> None:
    """200 leads x 4: retries, two workers, one SIGKILLed mid-handler; the ordered record is in order."""
    stack, second = order_stack
    stack.start()
    second.start()
    leads = list(range(1, 201))
    assert stack.worker.process is not None
    victim = f"order:running:{stack.worker.process.pid}"

    async def send_and_kill() -> set[str]:
        sending = asyncio.create_task(_send(stack.base_url, leads))
        while not sending.done() and redis_sync.scard(victim) < 5:
            await asyncio.sleep(0.01)
        stack.worker.signal(signal.SIGKILL)
        interrupted = {member.decode() for member in redis_sync.smembers(victim)}
        await sending
        return interrupted

    interrupted = asyncio.run(send_and_kill())
    assert interrupted, "the kill must land while the worker runs handlers"

    def done(kind: str, lead: int) -> list[str]:
        return _list(redis_sync, f"order:{kind}:done:{lead}")

    def incomplete() -> set[int]:
        return {lead for lead in leads if any(len(done(k, lead)) < 4 for k in ("ordered", "unordered"))}

    def claimed(among: set[int]) -> set[int]:
        return {
            lead
            for lead in among
            for stage in range(4)
            if redis_sync.exists(f"arq:in-progress:lead{lead}_{stage}")
        }

    # Other leads go on while the killed worker's events wait for arq's claim on them to expire:
    # wait until the survivor is idle and every unfinished lead has an event still claimed. Its
    # claims last OA_JOB_TIMEOUT_S + 15 s from the kill, so this must happen well before that.
    assert second.process is not None
    survivor = f"order:running:{second.process.pid}"
    left: set[int] = set()

    def only_claimed_leads_left() -> bool:
        nonlocal left
        left = incomplete()
        return redis_sync.scard(survivor) == 0 and left == claimed(left)

    wait_for(only_claimed_leads_left, timeout_s=20, interval_s=0.2, what="the leads nobody holds to finish")
    assert left, "the killed worker's events should still wait for its claims to expire"
    assert len(left) <= 50 < len(leads) - len(left)
    wait_for(
        lambda: all(len(done(kind, lead)) == 4 for lead in leads for kind in ("ordered", "unordered")),
        timeout_s=40,
        what="every lead, after the killed worker's claims expired",
    )
    for lead in leads:
        assert done("ordered", lead) == STAGES, lead
        assert _runs_in_turn(_list(redis_sync, f"order:ordered:starts:{lead}")) == STAGES, lead
    disordered = [lead for lead in leads if done("unordered", lead) != STAGES]
    assert any(lead % 3 == 0 for lead in disordered), "the unordered handler saw failing leads in order"


def test_a_dead_event_holds_its_lead_until_a_replay_and_skip_lets_it_go(
    order_stack: tuple[Stack, Service], redis_sync: Redis
) -> None:
    """Dead lead.created holds sold (held: 1), other leads go on, a replay runs both in order; skip goes."""
    stack, _ = order_stack
    stack.start()
    asyncio.run(_send(stack.base_url, [1001]))
    first, second = _body(1000, 0), _body(1000, 1)
    for body in (first, second):
        assert (
            httpx.post(stack.base_url + ENDPOINT, content=body, headers=signed_headers(body)).status_code
            == 202
        )
    env = stack.api.env
    wait_for(
        lambda: redis_sync.zscore(DEAD_KEY, "lead1000_0") is not None, timeout_s=10, what="the dead letter"
    )
    wait_for(lambda: _status(env)["held"] == 1, timeout_s=10, what="held: 1")
    wait_for(
        lambda: _list(redis_sync, "order:skipping:done:1000") == ["lead.sold"], timeout_s=10, what="skip"
    )
    asyncio.run(_send(stack.base_url, [1003]))
    for lead in (1001, 1003):
        wait_for(
            lambda lead=lead: _list(redis_sync, f"order:ordered:done:{lead}") == STAGES,
            timeout_s=10,
            what=f"lead {lead} despite the held one",
        )
    assert _list(redis_sync, "order:ordered:starts:1000") == ["lead.created"]
    assert _status(env)["held"] == 1
    redis_sync.set("order:fixed", 1)
    replay = subprocess.run(
        [str(BIN / "oa-webhooks"), "dlq", "replay", "lead1000_0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    wait_for(
        lambda: _list(redis_sync, "order:ordered:done:1000") == ["lead.created", "lead.sold"],
        timeout_s=10,
        what="the replay, then the held event",
    )
    assert _list(redis_sync, "order:ordered:starts:1000") == ["lead.created", "lead.created", "lead.sold"]
    assert _list(redis_sync, "order:skipping:done:1000") == ["lead.sold", "lead.created"]
    wait_for(lambda: _status(env)["held"] == 0, timeout_s=10, what="held: 0")
