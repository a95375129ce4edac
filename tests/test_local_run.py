"""`oa-webhooks run` (what `make run` calls): the whole stack without Docker, stopped by one Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.processes import wait_for, wait_until_ready
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
        "OA_ADMIN_PORT": str(free_port()),
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
