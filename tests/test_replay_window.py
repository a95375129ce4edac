"""A replay while a worker is still closing the event's last run: the real arq worker, a real Redis.

The worker's finish script marks an event done (or dead); only then does arq's `finish_job` delete
`arq:job:<id>` and take the id off the queue. A replay queued in that gap would be deleted with it.
arq calls a worker's `on_job_end` exactly there (after the job function, before `finish_job`), so
the tests below replay from that hook and let arq's own `finish_job` run after it.
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
import time
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.api.envelope import parse_envelope
from service.ops.admin import create_admin_app
from service.ops.cli.sender import sample_body
from service.store import queue
from service.store.ledger import DEAD_KEY, Ledger, event_key
from service.store.replay import Replayer, ReplayResult
from tests.arq_worker import ArqWorker
from tests.conftest import CONSOLE_TOKEN, SECRET, make_settings, sign_in_console
from tests.processes import service_env
from tests.redis_server import free_port
from workers import Context, Event, PermanentError, on

pytestmark = pytest.mark.usefixtures("clean_registry")
BIN = Path(sys.executable).parent
STILL_FINISHING = "still being finished by a worker (replay again in a moment)"


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[Any]:
    """The worker's arq client (our JSON serializer) on the session Redis."""
    redis = queue.connect_arq(redis_url, timeout_s=2)
    yield redis
    await redis.aclose(close_connection_pool=True)


async def _accept(redis: Any, event_id: str, event_type: str) -> None:
    body = sample_body(event_type, event_id=event_id)
    ledger = Ledger(redis, queue_expiry_ms=600_000, retention_s=3600)
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)


async def test_a_replay_between_the_finish_script_and_arqs_finish_job_is_refused_not_lost(
    redis_url: str, redis_sync: Redis, arq_redis: Any
) -> None:
    """In the gap the replay answers `finishing` and changes nothing; once arq is done, a replay runs."""
    runs: list[str] = []

    @on("lead.paid")
    async def books(event: Event, ctx: Context) -> None:
        runs.append(event.id)

    settings = make_settings(redis_url)
    replayer = Replayer(arq_redis, queue_expiry_ms=settings.queue_expiry_ms)
    await _accept(arq_redis, "paid_1", "lead.paid")
    seen: list[tuple[bytes | None, int, ReplayResult]] = []

    async def replay_in_the_gap() -> None:
        state = redis_sync.hget(event_key("paid_1"), "state")
        claimed = int(redis_sync.exists(queue.in_progress_key("paid_1")))
        seen.append((state, claimed, await replayer.replay("paid_1")))

    async with httpx.AsyncClient() as http:
        worker = ArqWorker(settings, arq_redis, http)
        worker.between_finish_and_finish_job(replay_in_the_gap)
        await worker.run("paid_1")
        [(state, claimed, result)] = seen
        assert (state, claimed) == (b"done", 1), "the replay did not land between the two steps"
        after = (
            result.status.value,
            redis_sync.hget(event_key("paid_1"), "state"),
            redis_sync.exists(queue.job_key("paid_1")),
            redis_sync.zscore(queue.QUEUE_NAME, "paid_1"),
        )
        # Before the fix: ('replayed', b'queued', 0, None): the console said "replayed", the
        # ledger waits for a job that arq's finish_job has just deleted.
        assert after == ("finishing", b"done", 0, None), after
        assert result.state == "done"
        assert redis_sync.hget(event_key("paid_1"), "replays") is None, "a refused replay is not recorded"

        worker.between_finish_and_finish_job(None)
        again = await replayer.replay("paid_1")
        assert again.status.value == "replayed"
        assert redis_sync.exists(queue.job_key("paid_1")) == 1
        await worker.run("paid_1")
    assert runs == ["paid_1", "paid_1"]
    assert redis_sync.hget(event_key("paid_1"), "state") == b"done"
    assert redis_sync.exists(queue.job_key("paid_1"), queue.in_progress_key("paid_1")) == 0


async def _cli(redis_url: str, *args: str) -> tuple[int, str]:
    """Run `oa-webhooks ARGS` as an operator would; its exit status and its stdout and stderr together."""
    env = service_env(redis_url, SECRET, free_port())
    process = await asyncio.create_subprocess_exec(
        str(BIN / "oa-webhooks"), *args, env=env, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return await process.wait(), output.decode()


async def test_console_events_replay_and_dlq_replay_say_that_the_run_is_still_finishing(
    redis_url: str, redis_sync: Redis, arq_redis: Any
) -> None:
    """In the gap, all three ways to replay say "still being finished", exit 1 and change nothing."""

    @on("lead.sold")
    async def crm(event: Event, ctx: Context) -> None:
        raise PermanentError("the CRM refuses this lead")

    settings = make_settings(redis_url, OA_ADMIN_TOKEN=CONSOLE_TOKEN)
    await _accept(arq_redis, "sold_1", "lead.sold")
    app = create_admin_app(settings)
    answers: dict[str, tuple[int, str]] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as console,
        httpx.AsyncClient() as http,
    ):
        csrf = await sign_in_console(console)

        async def replay_three_ways() -> None:
            assert redis_sync.hget(event_key("sold_1"), "state") == b"dead"
            posted = await console.post("/console/replay/sold_1", data={"csrf": csrf})
            page = await console.get(posted.headers["location"])
            flash = re.search(r'id="flash">([^<]*)<', page.text)
            answers["console"] = (posted.status_code, html.unescape(flash[1]) if flash else page.text)
            answers["events"] = await _cli(redis_url, "events", "replay", "sold_1")
            answers["dlq"] = await _cli(redis_url, "dlq", "replay", "sold_1")

        worker = ArqWorker(settings, arq_redis, http)
        worker.between_finish_and_finish_job(replay_three_ways)
        await worker.run("sold_1")
    status, flash = answers["console"]
    assert status == 303
    assert flash.startswith("Not replayed yet: a worker is still finishing the event's last run"), flash
    for command in ("events", "dlq"):
        code, output = answers[command]
        assert (code, STILL_FINISHING in output) == (1, True), (command, output)
    assert "is not a dead letter" not in answers["dlq"][1]
    assert redis_sync.hget(event_key("sold_1"), "state") == b"dead"
    assert redis_sync.zscore(DEAD_KEY, "sold_1") is not None
    assert redis_sync.hget(event_key("sold_1"), "replays") is None
    assert redis_sync.exists(queue.job_key("sold_1")) == 0
    # The run is over now: the same command replays it.
    code, output = await _cli(redis_url, "dlq", "replay", "sold_1")
    assert (code, redis_sync.exists(queue.job_key("sold_1"))) == (0, 1), output
