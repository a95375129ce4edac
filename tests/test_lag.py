"""The lag is the age of the oldest event that is due and not running, at any concurrency and backlog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis import Redis

from service.api.envelope import parse_envelope
from service.store import queue
from service.store.ledger import Ledger
from service.store.stats import read_snapshot
from tests.conftest import SECRET, envelope
from tests.processes import Stack, wait_for


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_running_entries_are_skipped_past_one_page(redis_url: str, redis_sync: Redis) -> None:
    """With 250 due jobs running (more than a page of the walk), the lag is the 251st entry's age."""
    now_ms = _now_ms()
    redis_sync.zadd(queue.QUEUE_NAME, {f"e{i}": now_ms - 600_000 + i * 1000 for i in range(300)})
    for i in range(250):
        redis_sync.set(queue.in_progress_key(f"e{i}"), "1")
    redis = queue.connect(redis_url, timeout_s=2)
    try:
        snapshot = await read_snapshot(redis, heartbeat_interval_s=5)
    finally:
        await redis.aclose()
    assert snapshot.in_progress == 250
    assert snapshot.ready == 50
    assert snapshot.oldest_ready_age_s == pytest.approx(600 - 250, abs=2)


async def test_nothing_due_or_everything_running_reads_zero(redis_url: str, redis_sync: Redis) -> None:
    """No due entry, or every due entry running: nothing waits, so the lag is 0."""
    now_ms = _now_ms()
    redis_sync.zadd(queue.QUEUE_NAME, {"later": now_ms + 60_000, "busy": now_ms - 30_000})
    redis_sync.set(queue.in_progress_key("busy"), "1")
    redis = queue.connect(redis_url, timeout_s=2)
    try:
        snapshot = await read_snapshot(redis, heartbeat_interval_s=5)
    finally:
        await redis.aclose()
    assert (snapshot.oldest_ready_age_s, snapshot.in_progress, snapshot.scheduled) == (0.0, 1, 1)


SLEEPER = """
import asyncio

from workers import Context, Event, on


@on("lead.created")
async def sleep_long(event: Event, ctx: Context) -> None:
    await asyncio.sleep(60)
"""


@pytest.mark.e2e
async def test_saturated_worker_reports_the_waiting_backlog_age(
    tmp_path: Path, redis_url: str, redis_sync: Redis
) -> None:
    """400 events and a real worker at the default concurrency (50), all busy: the lag is the 51st's age."""
    stack = Stack(tmp_path, redis_url, SECRET, OA_SHUTDOWN_GRACE_S="0")
    stack.add_handler_module("lag_sleeper", SLEEPER)
    ledger_redis = queue.connect(redis_url, timeout_s=2)
    ledger = Ledger(ledger_redis, queue_expiry_ms=600_000, retention_s=3600)
    try:
        accepted_ms = _now_ms()
        for i in range(400):
            body = envelope(f"lag_{i:03d}")
            await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=accepted_ms + i)
        stack.worker.start()
        wait_for(
            lambda: sum(1 for _ in redis_sync.scan_iter(queue.in_progress_key("*"))) == 50,
            timeout_s=20,
            what="50 running handlers",
        )
        await asyncio.sleep(2)
        snapshot = await read_snapshot(ledger_redis, heartbeat_interval_s=1)
        expected_s = (_now_ms() - (accepted_ms + 50)) / 1000
        assert snapshot.in_progress == 50
        assert snapshot.ready == 350
        assert snapshot.oldest_ready_age_s == pytest.approx(expected_s, abs=0.5)
        assert snapshot.oldest_ready_age_s > 2
    finally:
        stack.close()
        await ledger_redis.aclose()
