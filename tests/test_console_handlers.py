"""The console's Handlers table and its Pause and Resume buttons, in-process against a real Redis."""

from __future__ import annotations

import re
import time

import httpx
from redis import Redis

from service.store import queue
from service.store.handlers import PAUSED_KEY, publish
from service.store.ledger import event_key
from tests.conftest import sign_in_console

NAME = "workers.handlers.crm.push"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _register(redis_url: str) -> None:
    client = queue.connect(redis_url, timeout_s=2)
    try:
        spec = {"patterns": ["lead.*"], "concurrency": 2, "rate": "10/s", "breaker": True, "ordered": False}
        await publish(client, {NAME: spec}, now_ms=_now_ms())
    finally:
        await client.aclose()


async def test_the_overview_lists_handlers_and_pause_then_resume_round_trips(
    console: httpx.AsyncClient, redis_url: str, redis_sync: Redis
) -> None:
    """Pause asks first, POSTs with the CSRF token, and shows paused; Resume brings it back to active."""
    await _register(redis_url)
    csrf = await sign_in_console(console)
    overview = await console.get("/console")
    row = re.search(rf'<tr data-handler="{re.escape(NAME)}">(.*?)</tr>', overview.text, re.DOTALL)
    assert row, overview.text
    assert "tag-active" in row[1]
    assert "concurrency 2" in row[1]
    assert "rate 10/s" in row[1]
    assert f'href="/console/handlers/{NAME}/pause"' in row[1]
    confirm = await console.get(f"/console/handlers/{NAME}/pause")
    assert confirm.status_code == 200
    assert f'action="/console/handlers/{NAME}/pause"' in confirm.text
    assert not redis_sync.hexists(PAUSED_KEY, NAME), "the confirmation page changes nothing"
    done = await console.post(f"/console/handlers/{NAME}/pause", data={"csrf": csrf, "for": "2h"})
    assert done.status_code == 303
    assert redis_sync.hexists(PAUSED_KEY, NAME)
    page = await console.get(done.headers["location"])
    row = re.search(rf'<tr data-handler="{re.escape(NAME)}">(.*?)</tr>', page.text, re.DOTALL)
    assert row
    assert "tag-paused" in row[1]
    assert "until" in row[1]
    assert f'href="/console/handlers/{NAME}/resume"' in row[1]
    assert f"{NAME} is paused." in page.text
    resumed = await console.post(f"/console/handlers/{NAME}/resume", data={"csrf": csrf})
    assert resumed.status_code == 303
    assert not redis_sync.hexists(PAUSED_KEY, NAME)


async def test_pause_without_a_valid_csrf_token_or_with_a_bad_duration_changes_nothing(
    console: httpx.AsyncClient, redis_url: str, redis_sync: Redis
) -> None:
    """No CSRF token: 403; a duration that is not one: 400 with the field's error; nothing is paused."""
    await _register(redis_url)
    csrf = await sign_in_console(console)
    refused = await console.post(f"/console/handlers/{NAME}/pause", data={"for": "1h"})
    assert refused.status_code == 403
    bad = await console.post(f"/console/handlers/{NAME}/pause", data={"csrf": csrf, "for": "soon"})
    assert bad.status_code == 400
    assert "&#39;soon&#39; is not a duration" in bad.text
    assert 'id="for-error"' in bad.text
    assert not redis_sync.hexists(PAUSED_KEY, NAME)


async def test_an_unknown_handler_is_404_and_names_the_known_ones(
    console: httpx.AsyncClient, redis_url: str
) -> None:
    """Pausing a name no worker registered answers 404, listing the registered handlers."""
    await _register(redis_url)
    csrf = await sign_in_console(console)
    answer = await console.post("/console/handlers/workers.handlers.nope.nope/pause", data={"csrf": csrf})
    assert answer.status_code == 404
    assert NAME in answer.text


async def test_an_events_page_says_why_a_handler_waits(console: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A waiting handler's reason and since-when are on the event's page."""
    await sign_in_console(console)
    redis_sync.hset(
        event_key("evt_wait"),
        mapping={
            "type": "lead.created",
            "state": "queued",
            "received_ms": _now_ms(),
            "seq": 1,
            "body": "{}",
            f"wait:{NAME}": f"paused {_now_ms()}",
        },
    )
    page = await console.get("/console/events/evt_wait")
    assert page.status_code == 200
    waiting = re.search(r'<dd class="waiting">(.*?)</dd>', page.text, re.DOTALL)
    assert waiting
    assert NAME in waiting[1]
    assert "paused by an operator" in waiting[1]
