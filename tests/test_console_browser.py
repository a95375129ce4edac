"""The console in a real browser (Debian's chromium through Playwright), on a real API, worker and Redis.

One API process (with OA_ADMIN_TOKEN) and one worker for the module, seeded with done and dead
events; each test gets a fresh browser context. Screenshots of every page go to tests/artifacts/console/.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright
from redis import Redis

from service.ops.cli.sender import SAMPLES, sample_body
from service.store.ledger import DEAD_KEY, MINUTE_STATS_TTL_S, PENDING_KEY, event_key, minute_stats_key
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.processes import BIN, ROOT, Stack, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

TOKEN = "browser-test-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2;alert(1)">'
PROBE = """
from workers import Context, Event, PermanentError, on


@on("lead.paid")
async def crm(event: Event, ctx: Context) -> None:
    await ctx.redis.hincrby("test:console:runs", event.id, 1)
    if await ctx.redis.sismember("test:console:refuse", event.id):
        note = getattr(event.payload, "note", "")
        raise PermanentError(f"CRM refused lead {event.payload.lead_id} {note}")
"""
# Minutes ago -> events received in that minute, written as past minute counters for the chart: older
# than the 5 minutes of `last_5m`, and young enough to stay in the chart's hour while the module runs.
HISTORY = {m: 7 + round(4 * math.sin(m / 5)) + m % 3 for m in range(6, 55)}


def _post(stack: Stack, event_id: str, event_type: str, **payload: Any) -> None:
    body = sample_body(event_type, event_id=event_id, payload={**SAMPLES[event_type], **payload})
    answer = httpx.post(stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10)
    assert answer.status_code == 202, answer.text


@pytest.fixture(scope="module")
def redis_module(redis_server: RedisServer) -> Iterator[Redis]:
    """The session Redis, emptied once for this module (its tests share the seeded events)."""
    client = Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, redis_module: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """API (console on) and worker, with a CRM handler that refuses listed events, and seeded events."""
    fast = {
        "OA_ADMIN_TOKEN": TOKEN,
        "OA_MAX_TRIES": "2",
        "OA_RETRY_INITIAL_S": "0.05",
        "OA_RETRY_JITTER": "0",
    }
    running = Stack(tmp_path_factory.mktemp("console"), redis_server.url, SECRET, **fast)
    try:
        running.add_handler_module("console_probe", PROBE)
        redis_module.sadd("test:console:refuse", "evt_dead_view", "evt_replay", "evt_xss")
        now_ms = int(time.time() * 1000)
        for m, count in HISTORY.items():
            key = minute_stats_key(now_ms - m * 60_000)
            redis_module.hset(key, mapping={"received": count, "processed": count - (m % 4 == 0)})
            redis_module.expire(key, MINUTE_STATS_TTL_S)
        running.start()
        _post(running, "evt_created", "lead.created", lead_id=5001)
        _post(running, "evt_sold", "lead.sold", lead_id=5001)
        _post(running, "evt_dead_view", "lead.paid", lead_id=5001)
        _post(running, "evt_replay", "lead.paid", lead_id=5002)
        _post(running, "evt_xss", "lead.paid", lead_id=5003, note=XSS)
        wait_for(
            lambda: redis_module.zcard(PENDING_KEY) == 0 and redis_module.zcard(DEAD_KEY) == 3,
            timeout_s=30,
            what="the seeded events to finish",
        )
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium; missing, it fails the run in CI (CI=true) and skips elsewhere, saying why."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs these tests")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (no cookies); fails the test if a dialog opens or the page logs an error (CSP)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    opened.on("dialog", on_dialog)
    opened.on("console", on_console)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert dialogs == [], "a dialog opened: a script ran"
    # A page answered 401 (a wrong token) or 400 (a form with a field error) is logged by the browser as
    # a failed load: expected.
    unexpected = [e for e in errors if "status of 401" not in e and "status of 400" not in e]
    assert unexpected == [], f"the page logged errors: {unexpected}"


def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def _sign_in(page: Page, stack: Stack, path: str = "/console") -> None:
    page.goto(stack.admin_url + path)
    page.get_by_label("Console token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_login_with_a_wrong_then_the_right_token(page: Page, stack: Stack) -> None:
    """A wrong token shows the form again with an error; the right one opens the page asked for."""
    page.goto(stack.admin_url + "/console/events?state=dead")
    assert page.url.startswith(stack.admin_url + "/console/login")
    page.get_by_label("Console token").fill("not-the-token-0123456789")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The token is not right")
    expect(page.locator("#token-error")).to_contain_text("Enter the value of OA_ADMIN_TOKEN")
    _shot(page, "login-error")
    assert page.context.cookies() == []
    page.get_by_label("Console token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == stack.admin_url + "/console/events?state=dead"
    expect(page.get_by_role("heading", name="Events", exact=True)).to_be_visible()
    (cookie,) = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")


def _metrics(page: Page) -> dict[str, str]:
    values: dict[str, str] = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('[data-metric]')]"
        ".map(e => [e.dataset.metric, e.textContent.trim()]))"
    )
    return values


def test_overview_numbers_equal_status_json(page: Page, stack: Stack) -> None:
    """Queue, lag, counters, workers, secrets on the page equal `oa-webhooks status --json`; it refreshes."""
    _sign_in(page, stack)
    status = subprocess.run(
        [str(BIN / "oa-webhooks"), "status", "--json"],
        env=stack.api.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = json.loads(status.stdout)
    page.reload()
    shown = _metrics(page)
    for name in ("queued", "scheduled", "in_progress", "dead", *(f"{n}_total" for n in _COUNTERS)):
        assert shown[name] == str(expected[name]), name
    for name in _COUNTERS:
        assert shown[f"last_5m_{name}"] == str(expected["last_5m"][name]), name
    assert float(shown["oldest_queued_age_s"]) == pytest.approx(expected["oldest_queued_age_s"], abs=0.1)
    assert shown["workers"] == str(len(expected["workers"])) == "1"
    assert {k: v for k, v in shown.items() if k.startswith("secret_")} == {
        f"secret_{i}": str(n) for i, n in expected["secrets"].items()
    }
    # The chart reads the whole hour: the seeded past minutes plus this run's events.
    assert int(shown["hour_received"]) == sum(HISTORY.values()) + expected["last_5m"]["received"]
    expect(page.locator("svg[role=img] polyline")).to_have_count(2)
    expect(page.locator("text=Ready now")).to_be_visible()
    path = _shot(page, "overview")
    assert path.stat().st_size < 200_000
    # It refreshes itself: a new event shows up without any navigation by the test.
    received = int(shown["received_total"])
    _post(stack, "evt_late", "lead.created", lead_id=5009)
    counter = "document.querySelector('[data-metric=received_total]').textContent.trim()"
    page.wait_for_function(f"() => {counter} === '{received + 1}'", timeout=15_000)


_COUNTERS = ("received", "processed", "retried", "failed", "unhandled")


def test_search_box_finds_a_leads_events(page: Page, stack: Stack) -> None:
    """Typing a lead id lists that lead's events and its stages; an event id opens that event."""
    _sign_in(page, stack, "/console/events")
    page.get_by_label("Event id or lead id").fill("5001")
    page.get_by_role("button", name="Search").click()
    assert "q=5001" in page.url
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(3)
    ids = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)]
    assert ids == ["evt_dead_view", "evt_sold", "evt_created"]
    expect(page.get_by_role("heading", name="Lead 5001")).to_be_visible()
    _shot(page, "events-lead")
    page.get_by_label("Event id or lead id").fill("evt_replay")
    page.get_by_role("button", name="Search").click()
    assert page.url.endswith("/console/events/evt_replay")
    page.goto(stack.admin_url + "/console/events?q=nobody-99")
    expect(page.get_by_role("alert")).to_contain_text("No event and no lead has the id 'nobody-99'")


def test_a_dead_event_shows_its_error_with_the_traceback_folded(page: Page, stack: Stack) -> None:
    """From the dead filter to the event: state dead, the handler's error, its traceback behind <details>."""
    _sign_in(page, stack, "/console/events?state=dead")
    page.get_by_role("link", name="evt_dead_view").click()
    expect(page.locator("#event-state")).to_have_text("dead")
    expect(page.locator(".error-text").first).to_contain_text("PermanentError: CRM refused lead 5001")
    traceback = page.locator("pre.traceback").first
    expect(traceback).to_be_hidden()
    page.get_by_text("Traceback").first.click()
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(page.get_by_role("button", name="Replay")).to_be_visible()
    _shot(page, "event-dead")


def test_replay_asks_first_then_the_worker_handles_the_event(
    page: Page, stack: Stack, redis_module: Redis
) -> None:
    """Replay -> a confirmation page -> Replay: the page says so and follows the event until it is done."""
    redis_module.srem("test:console:refuse", "evt_replay")
    runs_before = int(redis_module.hget("test:console:runs", "evt_replay") or 0)
    _sign_in(page, stack, "/console/events/evt_replay")
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("heading", name=re.compile("Replay event"))).to_be_visible()
    assert redis_module.hget(event_key("evt_replay"), "state") == b"dead"  # asking changed nothing
    _shot(page, "replay-confirm")
    page.get_by_role("button", name="Replay").click()
    expect(page.locator("#flash")).to_contain_text("Replayed")
    expect(page.locator("#event-state")).to_have_text("done", timeout=20_000)
    assert int(redis_module.hget("test:console:runs", "evt_replay")) == runs_before + 1
    expect(page.get_by_role("heading", name="Replays")).to_be_visible()
    expect(page.locator(".replay-mark")).to_have_count(1)  # between the dead run and the new one
    _shot(page, "event-replayed")


def test_an_xss_payload_stays_inert(page: Page, stack: Stack) -> None:
    """A payload (and an error message) holding <script> and onerror= shows as text; no script runs."""
    _sign_in(page, stack, "/console/events/evt_xss")
    expect(page.locator("#payload")).to_contain_text(XSS.replace('"', '\\"'))
    expect(page.locator(".error-text").first).to_contain_text("<script>window.__pwned=1</script>")
    page.get_by_text("Traceback").first.click()
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert page.locator("main script").count() == 0
    assert page.locator("main img").count() == 0
    _shot(page, "event-xss")


def test_a_replay_post_without_its_csrf_token_is_refused(stack: Stack, redis_module: Redis) -> None:
    """Signed in, a replay POST without the CSRF token is 403 and replays nothing."""
    with httpx.Client(base_url=stack.admin_url, timeout=10) as http:
        signed_in = http.post("/console/login", data={"token": TOKEN})
        assert signed_in.status_code == 303
        refused = http.post("/console/replay/evt_dead_view", data={"handler": ""})
        assert http.get("/console/events/evt_dead_view").status_code == 200  # the session is valid
    assert refused.status_code == 403
    assert "This form was refused" in refused.text
    assert redis_module.hget(event_key("evt_dead_view"), "state") == b"dead"
    assert redis_module.hget(event_key("evt_dead_view"), "replays") in (None, b"[]")


def test_no_console_on_the_public_port(stack: Stack) -> None:
    """The public port answers 404 to every console path; the admin port serves them, as start-up logged."""
    with httpx.Client(timeout=10) as http:
        for path in ("/console", "/console/login", "/console/events", "/console/static/console.css"):
            answer = http.get(stack.base_url + path)
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found"), path
        assert http.post(stack.base_url + "/console/login", data={"token": TOKEN}).status_code == 404
        assert http.get(stack.admin_url + "/console/login").status_code == 200
    started = [r for r in stack.api.records() if r.get("msg") == "console enabled"]
    assert [r["detail"] for r in started] == [f"{stack.admin_url}/console"]


def test_pause_and_resume_a_handler_from_the_overview(page: Page, stack: Stack, redis_module: Redis) -> None:
    """Overview -> Pause -> confirm, with a duration -> Pause: paused; then Resume brings it back."""
    handler = "workers.handlers.console_probe.crm"
    _sign_in(page, stack)
    row = page.locator(f'tr[data-handler="{handler}"]')
    expect(row).to_contain_text("active", timeout=20_000)
    _shot(page, "overview-handlers")
    row.get_by_role("link", name="Pause").click()
    expect(page.get_by_role("heading", name=re.compile("Pause handler"))).to_be_visible()
    assert not redis_module.hexists("oa:paused", handler)  # asking changed nothing
    page.get_by_label("For how long (optional)").fill("soon")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#for-error")).to_contain_text("is not a duration")
    page.get_by_label("For how long (optional)").fill("2h")
    _shot(page, "pause-confirm")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#flash")).to_contain_text(f"{handler} is paused.")
    expect(row).to_contain_text("paused")
    expect(row).to_contain_text("until")
    assert redis_module.hexists("oa:paused", handler)
    _shot(page, "overview-paused")
    row.get_by_role("link", name="Resume").click()
    page.get_by_role("button", name="Resume").click()
    expect(row).to_contain_text("active")
    assert not redis_module.hexists("oa:paused", handler)
