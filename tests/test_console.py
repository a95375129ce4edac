"""The console in-process: off without a token, the session, CSRF, headers, the chart, package data."""

from __future__ import annotations

import html
import logging
import re
import time
import tomllib
from fnmatch import fnmatch

import httpx
import pytest
from pydantic import SecretStr
from redis import Redis

from service.ops.admin import create_admin_app
from service.ops.console import auth
from service.ops.console.charts import minute_chart
from service.settings import Settings, SettingsError, load_settings
from service.store.ledger import MINUTE_STATS_TTL_S, minute_stats_key
from service.store.stats import read_minutes
from tests.conftest import CONSOLE_TOKEN, ENDPOINT, envelope, make_settings, sign_in_console, signed_headers
from tests.processes import ROOT


async def test_console_is_off_without_a_token(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Without OA_ADMIN_TOKEN every console path is a 404 JSON, and start-up logs that the console is off."""
    caplog.set_level(logging.INFO, logger="oa.console")
    app = create_admin_app(make_settings(redis_url))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://a") as http,
    ):
        answers = [await http.get(path) for path in ("/console", "/console/login", "/console/events")]
        posted = await http.post("/console/login", data={"token": CONSOLE_TOKEN})
    for answer in [*answers, posted]:
        assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    assert any("console disabled: set OA_ADMIN_TOKEN" in r.getMessage() for r in caplog.records)


async def test_pages_send_a_browser_without_a_session_to_the_login(console: httpx.AsyncClient) -> None:
    """GETs redirect to the login page (keeping where they were going); a POST is 401."""
    for path in ("/console", "/console/events?state=dead", "/console/events/evt_1", "/console/replay/evt_1"):
        answer = await console.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/login?next=/console"), path
    assert (await console.post("/console/replay/evt_1", data={"csrf": "x"})).status_code == 401
    assert (await console.get("/console/login")).status_code == 200
    assert (await console.get("/console/static/console.css")).status_code == 200


async def test_login_with_a_wrong_token_shows_an_error_and_sets_no_cookie(console: httpx.AsyncClient) -> None:
    """A wrong or empty token: 401, the form again with an error that says what to enter, no cookie."""
    tries = (("wrong-token-0123456789", "The token is not right"), ("", "Enter the console token"))
    for token, words in tries:
        answer = await console.post("/console/login", data={"token": token})
        assert answer.status_code == 401
        assert words in answer.text
        assert 'name="token" type="password"' in answer.text
        assert "set-cookie" not in answer.headers


async def test_login_sets_an_httponly_strict_session_cookie(console: httpx.AsyncClient) -> None:
    """The right token: 303 to where the user was going, and an HttpOnly, SameSite=Strict /console cookie."""
    answer = await console.post(
        "/console/login", data={"token": CONSOLE_TOKEN, "next": "/console/events?state=dead"}
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/events?state=dead")
    cookie = answer.headers["set-cookie"].lower()
    assert cookie.startswith(f"{auth.COOKIE}=")
    assert {"httponly", "samesite=strict", "path=/console"} <= {part.strip() for part in cookie.split(";")}
    assert CONSOLE_TOKEN.lower() not in cookie
    assert (await console.get("/console")).status_code == 200


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/console", "/metrics", "/console\\x"]
)
async def test_login_never_redirects_outside_the_console(console: httpx.AsyncClient, target: str) -> None:
    """`next` outside /console (another site, another path) sends the user to /console instead."""
    answer = await console.post("/console/login", data={"token": CONSOLE_TOKEN, "next": target})
    assert answer.headers["location"] == "/console"


async def test_every_answer_has_the_security_headers(console: httpx.AsyncClient) -> None:
    """CSP without unsafe-inline (no script at all), X-Frame-Options DENY and no-store on every page."""
    answers = [await console.get("/console"), await console.get("/console/login")]
    await sign_in_console(console)
    answers += [await console.get(p) for p in ("/console", "/console/events", "/console/events/nope")]
    answers.append(await console.post("/console/replay/nope", data={}))
    assert [a.status_code for a in answers] == [303, 200, 200, 200, 404, 403]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "script-src" not in csp  # falls back to default-src 'none': no script may run
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text


async def test_a_replay_post_without_its_csrf_token_is_refused(console: httpx.AsyncClient) -> None:
    """Signed in, a replay POST with no CSRF token, or another session's, is 403; the right one passes it."""
    other = await sign_in_console(console)
    csrf = await sign_in_console(console)  # a new session: `other` belonged to the previous one
    # The token that failed CI 1 run in 16 ends in "0"; sign in again until one does (about 16 times).
    for _ in range(300):
        if csrf.endswith("0"):
            break
        other, csrf = csrf, await sign_in_console(console)
    assert csrf.endswith("0")
    assert other != csrf
    # One hex digit changed (its lowest bit), so it differs from the token whatever that ends in.
    altered = csrf[:-1] + format(int(csrf[-1], 16) ^ 1, "x")
    for data in ({}, {"csrf": ""}, {"csrf": other}, {"csrf": altered}):
        answer = await console.post("/console/replay/evt_1", data=data)
        assert answer.status_code == 403, data
        assert "This form was refused" in answer.text
    assert (await console.post("/console/replay/evt_1", data={"csrf": csrf})).status_code == 404


def test_a_session_cookie_cannot_be_forged_altered_or_outlive_its_expiry() -> None:
    """The cookie is valid under its own token only, untouched, and until it expires."""
    now = time.time()
    cookie = auth.new_session(CONSOLE_TOKEN.encode(), now_s=now)
    assert auth.parse_session(cookie, CONSOLE_TOKEN.encode(), now_s=now) is not None
    assert auth.parse_session(cookie, b"another-token-0123456789", now_s=now) is None
    expires, nonce, mac = cookie.split(".")
    assert (
        auth.parse_session(f"{int(expires) + 3600}.{nonce}.{mac}", CONSOLE_TOKEN.encode(), now_s=now) is None
    )
    assert auth.parse_session(f"{expires}.{nonce}x.{mac}", CONSOLE_TOKEN.encode(), now_s=now) is None
    assert auth.parse_session(cookie, CONSOLE_TOKEN.encode(), now_s=now + auth.SESSION_TTL_S) is None
    assert auth.parse_session("garbage", CONSOLE_TOKEN.encode(), now_s=now) is None


def test_admin_token_refuses_short_and_placeholder_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """OA_ADMIN_TOKEN: empty is off; too short or a placeholder stops start-up, naming the variable."""
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "whsec_test_secret_0123456789")
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    monkeypatch.setenv("OA_ADMIN_TOKEN", "")
    assert load_settings().admin_token is None
    for bad in ("short", "change-me"):
        monkeypatch.setenv("OA_ADMIN_TOKEN", bad)
        with pytest.raises(SettingsError, match=r"^OA_ADMIN_TOKEN"):
            load_settings()
    assert make_settings("redis://x", OA_ADMIN_TOKEN=CONSOLE_TOKEN).admin_token == SecretStr(CONSOLE_TOKEN)
    assert "admin_token" in Settings.model_fields


async def test_read_minutes_gives_the_last_hour_oldest_first(redis_sync: Redis, redis_url: str) -> None:
    """60 buckets, oldest first, with the counters of each minute; minute counters live over an hour."""
    from service.store import queue  # noqa: PLC0415

    assert MINUTE_STATS_TTL_S > 3600
    now_ms = 1_700_000_000_000
    redis_sync.hset(minute_stats_key(now_ms), mapping={"received": 3, "processed": 2})
    redis_sync.hset(minute_stats_key(now_ms - 59 * 60_000), mapping={"received": 7})
    redis_sync.hset(minute_stats_key(now_ms - 60 * 60_000), mapping={"received": 100})  # outside the hour
    client = queue.connect(redis_url, timeout_s=2)
    try:
        minutes = await read_minutes(client, now_ms=now_ms)
    finally:
        await client.aclose()
    assert len(minutes) == 60
    assert minutes[-1] == (now_ms // 60_000 * 60_000, {"received": 3, "processed": 2})
    assert minutes[0][1] == {"received": 7}
    assert sum(bucket.get("received", 0) for _, bucket in minutes) == 10


def test_the_chart_scales_to_its_peak_and_keeps_every_point_inside() -> None:
    """The y axis tops at a round number over the peak; every point lies in the plotting area."""
    start = 1_700_000_000_000 // 60_000 * 60_000
    minutes = [(start + i * 60_000, {"received": i % 7, "processed": i % 5}) for i in range(60)]
    chart = minute_chart(minutes)
    assert chart.peak == 6
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]
    left, top, right, bottom = chart.plot
    for line in chart.series:
        points = [tuple(map(float, p.split(","))) for p in line.points.split()]
        assert len(points) == 60
        assert all(left <= x <= right and top <= y <= bottom for x, y in points)
    assert chart.series[0].total == sum(i % 7 for i in range(60))
    empty = minute_chart([(start, {})])
    assert empty.peak == 0
    assert [t.label for t in empty.y_ticks] == ["0", "1"]


def test_templates_and_static_files_are_package_data() -> None:
    """Each file in service/ops/console/templates and static matches a package-data glob (a wheel has it)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["service.ops.console"]
    package = ROOT / "service" / "ops" / "console"
    files = [p for d in ("templates", "static") for p in (package / d).iterdir()]
    assert files
    for path in files:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch(relative, g) for g in globs), relative


async def _post_events(client: httpx.AsyncClient, count: int) -> None:
    """Accept `count` lead.created events (lead 7000 + i) through the public app; no worker runs them."""
    for i in range(count):
        body = envelope(f"evt_{i:03d}", "lead.created", lead_id=7000 + i)
        assert (await client.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code == 202


async def test_events_pages_with_a_cursor_and_keeps_the_filters(
    client: httpx.AsyncClient, console: httpx.AsyncClient
) -> None:
    """55 events: 50 on the first page with an 'Older events' link (cursor, same filters), 5 on the next."""
    await _post_events(client, 55)
    await sign_in_console(console)
    first = await console.get("/console/events", params={"type": "lead.*", "since": "1h"})
    assert first.status_code == 200
    assert first.text.count('<a href="/console/events/evt_') == 50
    assert "evt_054" in first.text
    assert "evt_004" not in first.text
    link = re.search(r'<a href="(\?[^"]+)" rel="next">Older events</a>', first.text)
    assert link, "no link to the next page"
    older = html.unescape(link[1])
    assert {"type=lead.%2A", "since=1h"} <= set(older[1:].split("&"))
    assert "cursor=" in older
    second = await console.get("/console/events" + older)
    assert second.text.count('<a href="/console/events/evt_') == 5
    assert "evt_004" in second.text
    assert 'rel="next"' not in second.text
    assert "Newest events" in second.text


async def test_events_filters_say_how_to_fix_a_bad_value(
    client: httpx.AsyncClient, console: httpx.AsyncClient
) -> None:
    """A bad time or state is a 400 with the error beside its field; no filter matching is an empty page."""
    await _post_events(client, 1)
    await sign_in_console(console)
    bad = await console.get("/console/events", params={"since": "yesterday", "state": "lost"})
    assert bad.status_code == 400
    assert "There is a problem" in bad.text
    assert "&#39;yesterday&#39; is not a time. Enter a duration such as 15m" in bad.text
    assert 'id="since-error"' in bad.text
    assert 'id="state-error"' in bad.text
    none = await console.get("/console/events", params={"state": "dead"})
    assert (none.status_code, "No event matches" in none.text) == (200, True)
    queued = await console.get("/console/events", params={"state": "queued"})
    assert "evt_000" in queued.text


async def test_replay_refuses_an_unfinished_event_and_an_unknown_handler(
    client: httpx.AsyncClient, console: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """A queued event has no Replay button and its replay is 409; so is a handler the event never had."""
    await _post_events(client, 1)
    csrf = await sign_in_console(console)
    page = await console.get("/console/events/evt_000")
    assert page.status_code == 200
    assert ">Replay</button>" not in page.text
    assert '<meta http-equiv="refresh" content="2">' in page.text  # it follows the unfinished event
    for data in ({"csrf": csrf}, {"csrf": csrf, "handler": "workers.handlers.nope.nope"}):
        answer = await console.post("/console/replay/evt_000", data=data)
        assert answer.status_code == 409
    assert redis_sync.hget("oa:event:evt_000", "replays") in (None, b"[]")
    assert (await console.get("/console/replay/evt_000")).status_code == 409


async def test_sign_out_needs_its_csrf_token_and_clears_the_cookie(console: httpx.AsyncClient) -> None:
    """Sign out without the CSRF token is 403 (still signed in); with it, the cookie is cleared."""
    csrf = await sign_in_console(console)
    assert (await console.post("/console/logout", data={})).status_code == 403
    assert (await console.get("/console")).status_code == 200
    answer = await console.post("/console/logout", data={"csrf": csrf})
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")
    assert "max-age=0" in answer.headers["set-cookie"].lower()
    assert (await console.get("/console")).status_code == 303
