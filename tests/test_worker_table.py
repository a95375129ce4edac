"""The worker table of `oa-webhooks status` shows current job counts, not those of the last heartbeat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.delivery_probe import SOURCE, completed, probe_body
from tests.processes import Stack, wait_for

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _workers(stack: Stack) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(BIN / "oa-webhooks"), "status", "--json"],
        env=stack.api.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return list(json.loads(result.stdout)["workers"])


def test_counts_follow_the_jobs_within_a_second(tmp_path: Path, redis_url: str, redis_sync: Redis) -> None:
    """With a 30 s heartbeat, `status` shows complete 10 and running 0 within 2 s of ten events finishing."""
    stack = Stack(tmp_path, redis_url, SECRET, OA_HEARTBEAT_INTERVAL_S="30")
    stack.add_handler_module("table_probe", SOURCE)
    stack.start()
    try:
        wait_for(lambda: _workers(stack), timeout_s=15, what="the worker's first heartbeat")
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            for i in range(10):
                body = probe_body(f"table_{i}")
                assert http.post(ENDPOINT, content=body, headers=signed_headers(body)).status_code == 202
        wait_for(lambda: len(completed(redis_sync)) == 10, timeout_s=15, what="ten events to complete")
        wait_for(
            lambda: [(w["jobs_complete"], w["running"]) for w in _workers(stack)] == [("10", "0")],
            timeout_s=2,
            interval_s=0.2,
            what="the worker table to show complete 10, running 0",
        )
    finally:
        stack.close()
