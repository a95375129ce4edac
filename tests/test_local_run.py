"""`oa-webhooks run` (what `make run` calls): the whole stack without Docker, stopped by one Ctrl-C."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.processes import ROOT, wait_for, wait_until_ready
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def test_run_starts_redis_api_and_worker_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    """With no Redis at REDIS_URL and no secret, `run` writes .env, starts redis-server, API and worker."""
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env |= {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "OA_PORT": str(api_port),
        "OA_ADMIN_PORT": str(admin_port := free_port()),
        "OA_LOG_FORMAT": "json",
    }
    log = (tmp_path / "run.log").open("wb")
    runner = subprocess.Popen(
        [str(BIN / "oa-webhooks"), "run"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}")
        assert "OA_WEBHOOK_SECRET=" in (tmp_path / ".env").read_text()
        assert re.search(r"^OA_ADMIN_TOKEN=[0-9a-f]{64}$", (tmp_path / ".env").read_text(), re.MULTILINE)
        sent = subprocess.run(
            [str(BIN / "oa-webhooks"), "send", "lead.created", "--id", "run_1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        output = tmp_path / "run.log"
        wait_for(
            lambda: b"example handler saw lead.created" in output.read_bytes(),
            timeout_s=10,
            what="the example handler's log line",
        )
        console_line = (
            f"console on http://127.0.0.1:{admin_port}/console - sign in with OA_ADMIN_TOKEN (in .env)"
        )
        assert console_line in output.read_text()
        assert (tmp_path / ".data" / "redis" / "appendonlydir").is_dir()
        assert (tmp_path / ".data" / "redis" / "redis.log").stat().st_size > 0
    finally:
        os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        runner.wait(timeout=60)
        log.close()
    with Redis(port=redis_port, socket_connect_timeout=1) as redis, pytest.raises(RedisConnectionError):
        redis.ping()
    leftovers = subprocess.run(["pgrep", "-f", f"--port {redis_port}"], capture_output=True, check=False)
    assert leftovers.stdout == b""


BROKEN = """
import pathlib

with pathlib.Path(__file__).with_name("starts.log").open("a") as starts:
    starts.write("start\\n")
raise RuntimeError("{message}")
"""


def test_run_backs_off_from_a_worker_that_cannot_start_and_tells_each_error_once(tmp_path: Path) -> None:
    """A broken handler module: restarts back off (1 s, 2 s, 4 s...), each distinct error is printed once."""
    package = tmp_path / "brokenhandlers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(BROKEN.format(message="first failure"))
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env |= {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "OA_PORT": str(api_port),
        "OA_LOG_FORMAT": "json",
        "OA_WEBHOOK_SECRET": "whsec_local_run_secret_0123456789",
        "OA_HANDLERS_PACKAGE": "brokenhandlers",
        "PYTHONPATH": str(tmp_path),
    }
    output = tmp_path / "run.log"
    starts = package / "starts.log"
    log = output.open("wb")
    runner = subprocess.Popen(
        [str(BIN / "oa-webhooks"), "run"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}")
        started = time.monotonic()
        time.sleep(12)
        first_window = starts.read_text().count("start")
        elapsed_s = time.monotonic() - started
        (package / "bad.py").write_text(BROKEN.format(message="second failure"))
        # Its traceback's last line, the worker's summary line and the runner's line, each once.
        wait_for(
            lambda: (
                output.read_bytes().count(b"RuntimeError: second failure") >= 3
                and output.read_bytes().count(b"oa-webhooks run: the worker exited") >= 2
            ),
            timeout_s=40,
            what="the new error, told once by each",
        )
    finally:
        os.killpg(runner.pid, signal.SIGINT)
        runner.wait(timeout=60)
        log.close()
    text = output.read_text()
    # Without backoff the worker was restarted every 0.5 s: 18 runs in 12 s here, each printing it all.
    assert 2 <= first_window <= 5, (first_window, elapsed_s)
    # Once each: the traceback's last line, the worker's summary line, and the runner's line.
    assert text.count("RuntimeError: first failure") == 3, text
    assert text.count("RuntimeError: second failure") == 3, text
    assert text.count("oa-webhooks run: the worker exited") == 2, text
    assert "Events wait safely in the queue" in text
    assert "handler module brokenhandlers.bad could not be imported" in text


CONSOLE_LINE = re.compile(
    r"^console on (http://\S+/console) - sign in with OA_ADMIN_TOKEN \(in \.env\)$", re.MULTILINE
)


def test_the_template_for_compose_and_production_leaves_the_console_off() -> None:
    """`.env.example`, which compose and production start from, has an empty OA_ADMIN_TOKEN."""
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    assert "OA_ADMIN_TOKEN=" in lines


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _sign_in(console_url: str, token: str) -> httpx.Response:
    """Sign in through the login form as a browser would (every field it sends), then open the console."""
    with httpx.Client(timeout=10, follow_redirects=True) as http:
        form_page = http.get(console_url)
        assert form_page.url.path == "/console/login", form_page.url
        form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', form_page.text, re.DOTALL)
        assert form, form_page.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form[2]))
        return http.post(httpx.URL(console_url).join(html.unescape(form[1])), data=fields | {"token": token})


def test_make_run_in_a_fresh_clone_turns_the_console_on(tmp_path: Path) -> None:
    """A fresh clone's `make run` writes a token to .env, prints the console's URL, and the token signs in."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=60)
    venv = BIN.parent
    redis_port, api_port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env |= {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "OA_PORT": str(api_port),
        "OA_ADMIN_PORT": str(admin_port),
        "OA_LOG_FORMAT": "json",
        "PYTHONPATH": str(clone),  # the clone's code, not this checkout's, in this virtualenv
    }
    output = tmp_path / "run.log"
    log = output.open("wb")
    # This virtualenv stands in for the clone's `.venv` (VENV=), as installed (-o: not re-installed).
    runner = subprocess.Popen(
        ["make", "-C", str(clone), f"VENV={venv}", "-o", f"{venv}/.installed-stamp", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}")
        said = CONSOLE_LINE.search(output.read_text())
        assert said, output.read_text()
        assert said[1] == f"http://127.0.0.1:{admin_port}/console"
        token = re.search(r"^OA_ADMIN_TOKEN=(\S+)$", (clone / ".env").read_text(), re.MULTILINE)
        assert token, (clone / ".env").read_text()
        wait_for(
            lambda: _answers(f"http://127.0.0.1:{admin_port}/readyz"), timeout_s=20, what="the admin port"
        )
        overview = _sign_in(said[1], token[1])
        assert (overview.status_code, overview.url.path) == (200, "/console"), overview.text
        assert "<h1>Overview</h1>" in overview.text
        refused = _sign_in(said[1], "not-the-token-0123456789")
        assert (refused.status_code, refused.url.path) == (401, "/console/login")
    finally:
        os.killpg(runner.pid, signal.SIGINT)
        runner.wait(timeout=60)
        log.close()
