"""`oa-webhooks run` (what `make run` calls): the whole stack without Docker, stopped by one Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
