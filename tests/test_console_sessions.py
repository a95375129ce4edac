"""Console sessions kept in Redis: sign-out ends them, sign-in is throttled per client, Secure behind TLS."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.ops.admin import create_admin_app
from service.ops.console import auth
from service.settings import SettingsError, load_settings
from service.store.sessions import SESSIONS_KEY, SIGNIN_BLOCK_S, SIGNIN_LIMIT, blocked_key
from tests.conftest import make_settings
from tests.processes import wait_for

BIN = Path(sys.executable).parent
TOKEN = "console-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"


@asynccontextmanager
async def _console(
    redis_url: str, *, client: tuple[str, int] = ("127.0.0.1", 123), https: bool = False, **settings: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The admin app in-process (one API process), reached from `client`; redirects are not followed."""
    app = create_admin_app(make_settings(redis_url, OA_ADMIN_TOKEN=TOKEN, **settings))
    base_url = "https://admin" if https else "http://admin"
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


async def _sign_in(http: httpx.AsyncClient, **headers: str) -> httpx.Response:
    answer = await http.post("/console/login", data={"token": TOKEN}, headers=headers)
    assert answer.status_code == 303, answer.text
    return answer


def _csrf(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match, page.text
    return match[1]


async def test_sign_out_ends_the_session_even_for_a_copy_of_its_cookie(
    redis_url: str, redis_sync: Redis
) -> None:
    """After sign-out, a copy of the old cookie no longer opens the console (it did for 12 h)."""
    async with _console(redis_url) as http, _console(redis_url) as thief:
        await _sign_in(http)
        cookie = http.cookies[auth.COOKIE]
        sessions, ttl_s = redis_sync.zcard(SESSIONS_KEY), redis_sync.ttl(SESSIONS_KEY)
        thief.cookies.set(auth.COOKIE, cookie)
        assert (await thief.get("/console")).status_code == 200
        signed_out = await http.post("/console/logout", data={"csrf": _csrf(await http.get("/console"))})
        assert signed_out.status_code == 303
        stolen = await thief.get("/console")
        assert (stolen.status_code, stolen.headers["location"]) == (303, "/console/login?next=/console")
    assert (sessions, redis_sync.zcard(SESSIONS_KEY)) == (1, 0)  # kept in Redis, for its lifetime
    assert auth.SESSION_TTL_S - 5 < ttl_s <= auth.SESSION_TTL_S


async def test_sign_out_all_ends_every_session(redis_url: str) -> None:
    """`oa-webhooks console sign-out-all --yes` ends both browsers' sessions and says how many it ended."""
    async with _console(redis_url) as first, _console(redis_url, client=("10.0.0.9", 1)) as second:
        await _sign_in(first)
        await _sign_in(second)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
        said = subprocess.run(
            [str(BIN / "oa-webhooks"), "console", "sign-out-all", "--yes"],
            env={**env, "REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert said.returncode == 0, said.stderr
        assert "ended 2 console session(s)" in said.stdout
        for http in (first, second):
            assert (await http.get("/console")).status_code == 303
        await _sign_in(first)  # signing in again works
        assert (await first.get("/console")).status_code == 200


async def test_ten_wrong_tokens_in_a_minute_pause_sign_in_for_that_address(
    redis_url: str, redis_sync: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """After 10 wrong tokens: 429 with Retry-After for a minute, even for the right one; logged once."""
    caplog.set_level(logging.INFO, logger="oa.console")
    async with _console(redis_url) as http, _console(redis_url, client=("10.0.0.9", 1)) as other:
        wrong = [await http.post("/console/login", data={"token": WRONG}) for _ in range(SIGNIN_LIMIT)]
        assert [a.status_code for a in wrong] == [401] * SIGNIN_LIMIT
        paused = [await http.post("/console/login", data={"token": t}) for t in (TOKEN, WRONG, TOKEN)]
        assert [a.status_code for a in paused] == [429] * 3
        assert all(0 < int(a.headers["retry-after"]) <= SIGNIN_BLOCK_S for a in paused)
        assert "Too many sign-in attempts" in paused[0].text
        assert "set-cookie" not in paused[0].headers
        await _sign_in(other)  # another address is not paused
        assert 0 < redis_sync.pttl(blocked_key("127.0.0.1")) <= SIGNIN_BLOCK_S * 1000
        # The minute passes (its key expires): the right token works again.
        redis_sync.pexpire(blocked_key("127.0.0.1"), 1)
        wait_for(
            lambda: not redis_sync.exists(blocked_key("127.0.0.1")), timeout_s=5, what="the pause to end"
        )
        await _sign_in(http)
    throttled = [r for r in caplog.records if r.getMessage().startswith("console sign-in paused")]
    assert len(throttled) == 1, [r.getMessage() for r in caplog.records]
    assert throttled[0].__dict__["detail"] == "127.0.0.1"


async def test_the_throttle_counts_wrong_tokens_across_api_processes(redis_url: str) -> None:
    """Two apps (two API processes) share the count in Redis: 5 wrong tokens on each pause the address."""
    async with _console(redis_url) as first, _console(redis_url) as second:
        for http in (first, second):
            for _ in range(SIGNIN_LIMIT // 2):
                assert (await http.post("/console/login", data={"token": WRONG})).status_code == 401
        assert (await first.post("/console/login", data={"token": TOKEN})).status_code == 429


async def test_the_cookie_is_secure_behind_a_tls_proxy_it_trusts(redis_url: str) -> None:
    """X-Forwarded-Proto: https from OA_ADMIN_FORWARDED_ALLOW_IPS only makes the cookie Secure; https does."""
    proxy = ("10.1.2.3", 40_000)
    forwarded = {"x-forwarded-proto": "https"}

    async def secure(http: httpx.AsyncClient, **headers: str) -> bool:
        cookie = (await _sign_in(http, **headers)).headers["set-cookie"].lower()
        return "secure" in {part.strip() for part in cookie.split(";")}

    async with _console(redis_url, client=proxy, OA_ADMIN_FORWARDED_ALLOW_IPS="10.0.0.0/8, ::1") as http:
        assert await secure(http, **forwarded)
        assert not await secure(http)  # the proxy says it was plain http
    async with _console(
        redis_url, client=("192.0.2.7", 1), OA_ADMIN_FORWARDED_ALLOW_IPS="10.0.0.0/8"
    ) as http:
        assert not await secure(http, **forwarded)  # anyone else's header is ignored
    async with _console(redis_url, client=proxy) as http:
        assert not await secure(http, **forwarded)  # by default no address is trusted
    async with _console(redis_url, https=True) as http:
        assert await secure(http)


async def test_behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client(redis_url: str) -> None:
    """Through a trusted proxy, the X-Forwarded-For client is paused: one's guesses lock no one else out."""
    settings = {"OA_ADMIN_FORWARDED_ALLOW_IPS": "10.1.2.3"}
    async with _console(redis_url, client=("10.1.2.3", 1), **settings) as proxy:
        attacker = {"x-forwarded-for": "203.0.113.5"}
        for _ in range(SIGNIN_LIMIT):
            await proxy.post("/console/login", data={"token": WRONG}, headers=attacker)
        assert (
            await proxy.post("/console/login", data={"token": TOKEN}, headers=attacker)
        ).status_code == 429
        await _sign_in(proxy, **{"x-forwarded-for": "203.0.113.6"})


@pytest.mark.parametrize("value", ["10.0.0.1/8", "proxy.internal", "*", "10.0.0.300"])
def test_forwarded_allow_ips_refuses_what_is_not_an_address_or_network(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """OA_ADMIN_FORWARDED_ALLOW_IPS takes addresses and networks only; anything else stops start-up, named."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OA_WEBHOOK_SECRET", "whsec_test_secret_0123456789")
    monkeypatch.setenv("OA_ADMIN_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(SettingsError, match=r"^OA_ADMIN_FORWARDED_ALLOW_IPS: "):
        load_settings()
    monkeypatch.setenv("OA_ADMIN_FORWARDED_ALLOW_IPS", "172.18.0.0/16, 10.0.0.5,::1")
    assert load_settings().admin_forwarded_ips == ("172.18.0.0/16", "10.0.0.5", "::1")
    monkeypatch.delenv("OA_ADMIN_FORWARDED_ALLOW_IPS")
    assert load_settings().admin_forwarded_ips == ()
