"""Delivery guarantees with real processes: nothing lost, nothing done twice, failures kept and replayable.

Each test checks, from what the probe handler records per event id, that every 202-acknowledged
event ran to success at least once and that its effect was applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.store.ledger import DEAD_KEY, event_key
from service.store.stats import WORKERS_KEY, worker_key
from tests.conftest import ENDPOINT, SECRET, signed_headers
from tests.delivery_probe import SOURCE, completed, effects, probe_body, starts
from tests.processes import Stack, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
FAST = {
    "OA_JOB_TIMEOUT_S": "2",
    "OA_RETRY_INITIAL_S": "0.2",
    "OA_RETRY_JITTER": "0",
    "OA_MAX_TRIES": "4",
    "OA_RECONCILE_INTERVAL_S": "1",
    "OA_REDIS_TIMEOUT_S": "1",
    "OA_SHUTDOWN_GRACE_S": "5",
}


def _stack(tmp_path: Path, redis_url: str, **settings: str) -> Stack:
    stack = Stack(tmp_path, redis_url, SECRET, **{**FAST, **settings})
    stack.add_handler_module("delivery_probe", SOURCE)
    return stack


@contextlib.contextmanager
def _stack_on_own_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Stack]]:
    """A redis-server of the test's own (to stop, kill or freeze) and a stack on it, not yet started."""
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    stack = _stack(tmp_path, server.url)
    try:
        yield server, stack
    finally:
        server.signal(signal.SIGCONT)  # a frozen server cannot stop
        stack.close()
        server.stop()


@pytest.fixture
def probe_stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    """API and worker with the probe handler and fast retry settings, started."""
    stack = _stack(tmp_path, redis_url)
    stack.start()
    yield stack
    stack.close()


def _post(stack: Stack, body: bytes) -> int:
    return httpx.post(
        stack.base_url + ENDPOINT, content=body, headers=signed_headers(body), timeout=10
    ).status_code


def _worker_entries(redis: Redis) -> list[Any]:
    return [redis.hgetall(worker_key(w.decode())) for w in redis.zrange(WORKERS_KEY, 0, -1)]


def _assert_once_each(redis: Redis, ids: list[str], *, starts_each: int = 1) -> None:
    """Each event completed exactly once, after exactly `starts_each` handler starts.

    The effect counter cannot see a double run (the probe guards its effect with SET NX), and a
    count of completions misses a second run that failed: handler starts see both.
    """
    done = completed(redis)
    assert {i: done.get(i, 0) for i in ids} == dict.fromkeys(ids, 1), {
        i: done.get(i, 0) for i in ids if done.get(i, 0) != 1
    }
    started = {i: len(starts(redis, i)) for i in ids}
    assert started == dict.fromkeys(ids, starts_each), {i: n for i, n in started.items() if n != starts_each}
    assert effects(redis) == len(ids)


def test_once_each_sees_a_double_run(redis_sync: Redis) -> None:
    """The check fails for an event whose handler started twice, though its effect was applied once."""
    redis_sync.rpush("probe:starts:twice", "1.0", "2.0")
    redis_sync.hset("probe:done", "twice", 1)
    redis_sync.set("probe:effects", 1)
    with pytest.raises(AssertionError, match="twice"):
        _assert_once_each(redis_sync, ["twice"])
    _assert_once_each(redis_sync, ["twice"], starts_each=2)


def test_sigkill_mid_handler_runs_again_on_a_new_worker(
    tmp_path: Path, redis_url: str, redis_sync: Redis
) -> None:
    """SIGKILL mid-handler: a restarted worker completes the event once arq's claim expires."""
    stack = _stack(tmp_path, redis_url)
    try:
        stack.start()
        assert _post(stack, probe_body("kill_1", sleep_s=1.5, sleep_first_only=True)) == 202
        wait_for(lambda: starts(redis_sync, "kill_1"), timeout_s=10, what="the handler to start")
        stack.worker.signal(signal.SIGKILL)
        stack.worker.wait(10)
        assert completed(redis_sync) == {}
        stack.worker.start()
        # Bounded: OA_JOB_TIMEOUT_S + 15 s (arq's claim on the job expires, then it runs again).
        wait_for(lambda: completed(redis_sync).get("kill_1"), timeout_s=25, what="the re-run")
        _assert_once_each(redis_sync, ["kill_1"], starts_each=2)
        wait_for(lambda: redis_sync.hget(event_key("kill_1"), "state") == b"done", timeout_s=5, what="done")
    finally:
        stack.close()


def test_sigterm_lets_the_running_handler_finish(probe_stack: Stack, redis_sync: Redis) -> None:
    """SIGTERM mid-handler: the worker lets the handler finish within the grace, then exits."""
    assert _post(probe_stack, probe_body("term_1", sleep_s=1)) == 202
    wait_for(lambda: starts(redis_sync, "term_1"), timeout_s=10, what="the handler to start")
    probe_stack.worker.signal(signal.SIGTERM)
    assert probe_stack.worker.wait(15) == 0
    _assert_once_each(redis_sync, ["term_1"])
    assert redis_sync.hget(event_key("term_1"), "state") == b"done"


def test_sigterm_past_the_grace_runs_the_event_again(
    tmp_path: Path, redis_url: str, redis_sync: Redis
) -> None:
    """A handler cut short at the end of the grace period runs again on the next worker."""
    stack = _stack(tmp_path, redis_url, OA_SHUTDOWN_GRACE_S="0")
    try:
        stack.start()
        assert _post(stack, probe_body("term_2", sleep_s=1.5, sleep_first_only=True)) == 202
        wait_for(lambda: starts(redis_sync, "term_2"), timeout_s=10, what="the handler to start")
        stack.worker.signal(signal.SIGTERM)
        assert stack.worker.wait(15) == 0
        assert completed(redis_sync) == {}
        stack.worker.start()
        wait_for(lambda: completed(redis_sync).get("term_2"), timeout_s=15, what="the re-run")
        _assert_once_each(redis_sync, ["term_2"], starts_each=2)
    finally:
        stack.close()


def test_redis_down_means_503_and_everything_acknowledged_is_processed(tmp_path: Path) -> None:
    """Redis stopped: ingest answers 503, never 2xx; after a restart, 202 again and all acked run."""
    with _stack_on_own_redis(tmp_path) as (server, stack):
        stack.start()
        assert _post(stack, probe_body("up_1")) == 202
        with server.client() as redis:
            # Recorded as done, not only run: a run whose outcome Redis never got may run again.
            wait_for(lambda: redis.hget(event_key("up_1"), "state") == b"done", timeout_s=10, what="up_1")
        server.stop()
        down = [_post(stack, probe_body(f"down_{i}")) for i in range(5)]
        assert down == [503] * 5
        server.start()
        wait_for(lambda: _post(stack, probe_body("up_2")) == 202, timeout_s=15, what="ingest to recover")
        assert _post(stack, probe_body("up_3")) == 202
        with server.client() as redis:
            wait_for(
                lambda: len(completed(redis)) == 3, timeout_s=30, what="the worker to reconnect and drain"
            )
            _assert_once_each(redis, ["up_1", "up_2", "up_3"])
            assert not any(k.startswith(b"oa:event:down_") for k in redis.keys("oa:event:*"))
            # The worker rebuilt after the lost connection carries on the process's job counts.
            wait_for(
                lambda: [w.get(b"jobs_complete") for w in _worker_entries(redis)] == [b"3"],
                timeout_s=5,
                what="the worker table to count all three jobs",
            )


def test_a_frozen_redis_is_a_lost_connection_and_the_worker_recovers(tmp_path: Path) -> None:
    """A frozen Redis (SIGSTOP) is a lost connection to the worker; after SIGCONT it runs events again."""
    with _stack_on_own_redis(tmp_path) as (server, stack):
        stack.start()
        assert _post(stack, probe_body("before_freeze")) == 202
        with server.client() as redis:
            # Recorded as done, not only run: a run whose outcome Redis never got may run again.
            done = event_key("before_freeze")
            wait_for(lambda: redis.hget(done, "state") == b"done", timeout_s=15, what="the first event")
        server.signal(signal.SIGSTOP)
        wait_for(
            lambda: any(r.get("error") == "TimeoutError" for r in stack.worker.records()),
            timeout_s=15,
            what="the worker to give up on the frozen Redis",
        )
        server.signal(signal.SIGCONT)
        wait_for(lambda: _post(stack, probe_body("after_thaw")) == 202, timeout_s=15, what="ingest to answer")
        with server.client() as redis:
            wait_for(lambda: completed(redis).get("after_thaw"), timeout_s=30, what="the worker to run again")
            _assert_once_each(redis, ["before_freeze", "after_thaw"])
        assert stack.worker.process is not None
        assert stack.worker.process.poll() is None, "the worker process should have stayed up"


async def _post_many(base_url: str, bodies: list[bytes], *, concurrency: int) -> list[int]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as http:

        async def one(body: bytes) -> int:
            async with limit:
                return (await http.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_redis_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """1,000 acked events, Redis SIGKILLed and restarted on the same AOF: all 1,000 are processed."""
    with _stack_on_own_redis(tmp_path) as (server, stack):
        stack.start(worker=False)
        bodies = [probe_body(f"aof_{i}") for i in range(1000)]
        statuses = asyncio.run(_post_many(stack.base_url, bodies, concurrency=20))
        assert statuses == [202] * 1000
        server.kill()
        server.start()
        stack.worker.start()
        with server.client() as redis:
            wait_for(lambda: len(completed(redis)) == 1000, timeout_s=60, what="all 1,000 events")
            _assert_once_each(redis, [f"aof_{i}" for i in range(1000)])


def test_flaky_handler_succeeds_once_after_retries(probe_stack: Stack, redis_sync: Redis) -> None:
    """A handler failing N-1 times then succeeding: N tries, one success, no dead letter."""
    assert _post(probe_stack, probe_body("flaky_1", fail_times=3)) == 202
    wait_for(lambda: completed(redis_sync).get("flaky_1"), timeout_s=20, what="the fourth try to succeed")
    _assert_once_each(redis_sync, ["flaky_1"], starts_each=4)
    assert redis_sync.zcard(DEAD_KEY) == 0


def _dlq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "oa-webhooks"), "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_dead_letter_after_max_tries_then_replay(probe_stack: Stack, redis_sync: Redis) -> None:
    """An always-failing handler dies after max_tries with growing gaps; replay after a fix completes it."""
    body = probe_body("dead_1", fail_times=-1)
    assert _post(probe_stack, body) == 202
    wait_for(lambda: redis_sync.zscore(DEAD_KEY, "dead_1") is not None, timeout_s=20, what="the dead letter")
    times = starts(redis_sync, "dead_1")
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] >= 0.2
    env = probe_stack.api.env
    listed = _dlq("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["type"], r["attempts"]) for r in rows] == [("dead_1", "probe.test", 4)]
    assert rows[0]["handler"] == "workers.handlers.delivery_probe.probe"
    assert rows[0]["last_error"]["message"] == "probe failure on attempt 4"
    assert rows[0]["dead_at"]
    shown = _dlq("show", "dead_1", env=env)
    assert "RuntimeError" in shown.stdout
    assert "Traceback" in shown.stdout
    redis_sync.set("probe:fixed", 1)
    replayed = _dlq("replay", "dead_1", env=env)
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: completed(redis_sync).get("dead_1"), timeout_s=10, what="the replayed event to run")
    _assert_once_each(redis_sync, ["dead_1"], starts_each=5)  # 4 before the dead letter, 1 replayed
    assert redis_sync.zcard(DEAD_KEY) == 0
    assert _post(probe_stack, body) == 200


def test_fifty_concurrent_deliveries_give_one_202_and_one_run(probe_stack: Stack, redis_sync: Redis) -> None:
    """50 concurrent deliveries of one id: exactly one 202, 49 duplicates, and the handler runs once."""
    body = probe_body("same_1")
    statuses = asyncio.run(_post_many(probe_stack.base_url, [body] * 50, concurrency=50))
    assert sorted(statuses) == [200] * 49 + [202]
    wait_for(lambda: completed(redis_sync).get("same_1"), timeout_s=10, what="the run")
    wait_for(lambda: redis_sync.hget(event_key("same_1"), "state") == b"done", timeout_s=5, what="done")
    _assert_once_each(redis_sync, ["same_1"])


def test_reconciler_requeues_an_event_whose_job_is_gone(probe_stack: Stack, redis_sync: Redis) -> None:
    """A ledger entry left in `queued` without its arq job is re-queued by the reconciler and runs."""
    probe_stack.worker.stop()
    assert _post(probe_stack, probe_body("lost_1")) == 202
    redis_sync.delete("arq:job:lost_1")
    redis_sync.zrem("oa:queue", "lost_1")
    probe_stack.worker.start()
    wait_for(lambda: completed(redis_sync).get("lost_1"), timeout_s=20, what="the reconciler to re-queue it")
    _assert_once_each(redis_sync, ["lost_1"])
    assert any(record.get("outcome") == "requeued" for record in probe_stack.worker.records())
