"""The failover drill: Sentinel topology, two APIs, two workers, steady load, then SIGKILL of the primary.

tests/test_failover.py runs it with `OA_REDIS_MIN_REPLICAS=1` (no acknowledged event may be lost);
`make bench-failover` (benchmarks/failover.py) runs it without, to count what a failover loses. Every
process it starts is stopped by PID at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from service.api.signature import SIGNATURE_HEADER
from service.store.ledger import PENDING_KEY, event_key
from tests.processes import ROOT, Service, service_env, wait_until_ready
from tests.redis_server import free_port
from tests.sentinel_topology import Topology

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SECRET = "whsec_failover_drill_0123456789"
ENDPOINT = "/webhooks/offerte-adviseur"
# Fast settings: claims of jobs that were running at the kill expire after 1 + 15 s.
_SETTINGS = {
    "OA_REDIS_TIMEOUT_S": "1",
    "OA_RETRY_AFTER_S": "1",
    "OA_JOB_TIMEOUT_S": "1",
    "OA_RECONCILE_INTERVAL_S": "1",
    "OA_SHUTDOWN_GRACE_S": "2",
    "OA_LOG_LEVEL": "WARNING",
    "OA_HANDLERS_PACKAGE": "tests.failover_handlers",
    "PYTHONPATH": str(ROOT),
}


@dataclass
class DrillResult:
    """What the load saw and what the workers ran."""

    min_replicas: int
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no HTTP answer at all
    errors: Counter[str] = field(default_factory=Counter)  # why there was none, by exception type
    acknowledged: set[str] = field(default_factory=set)
    acknowledged_after_kill: set[str] = field(default_factory=set)
    missing_from_ledger: int = 0  # acknowledged, yet the new primary has no ledger entry (dedup gone)
    runs: Counter[str] = field(default_factory=Counter)  # handler runs per event id
    first_run_at: dict[str, float] = field(default_factory=dict)  # epoch seconds
    killed_at: float = 0.0  # epoch seconds
    recovery_s: float | None = None  # kill -> 202 again on every API, for events sent after the kill
    offered_s: float = 0.0  # how long the load ran
    drain_s: float = 0.0

    @property
    def lost(self) -> set[str]:
        """Events answered 202 that no handler ever ran."""
        return self.acknowledged - set(self.runs)

    @property
    def ran_twice(self) -> int:
        """Events whose handler ran more than once."""
        return sum(1 for count in self.runs.values() if count > 1)

    @property
    def worker_recovery_s(self) -> float | None:
        """Kill -> the first handler run of an event acknowledged after it (so by the new primary)."""
        runs = [self.first_run_at[i] for i in self.acknowledged_after_kill if i in self.first_run_at]
        return min(runs) - self.killed_at if runs else None

    def summary(self) -> dict[str, object]:
        """The figures, for a report."""
        return {
            "min_replicas": self.min_replicas,
            "sent": sum(self.statuses.values()),
            "rate_per_s": round(sum(self.statuses.values()) / self.offered_s) if self.offered_s else 0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "acknowledged": len(self.acknowledged),
            "lost": len(self.lost),
            "ran_twice": self.ran_twice,
            "missing_from_ledger": self.missing_from_ledger,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "worker_recovery_s": None if self.worker_recovery_s is None else round(self.worker_recovery_s, 2),
            "drain_s": round(self.drain_s, 1),
        }


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_IDLE_REUSE_S = 2.0  # the API closes a kept-alive connection idle for 5 s


def _request(number: int) -> tuple[str, bytes]:
    event_id = f"fo_{number}"
    body = json.dumps({"id": event_id, "type": "lead.created", "payload": {"lead_id": number}}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST {ENDPOINT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {signature}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return event_id, head.encode() + body


async def _exchange(connection: _Connection, request: bytes) -> tuple[int, bool]:
    """Send one request, read its whole answer; its status, and whether the connection stays open."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    await reader.readexactly(length)
    return status, keep


class _Load:
    """About `rate_per_s` events a second, alternating between the APIs, each answer noted.

    Plain keep-alive sockets, not httpx: on a busy machine httpx's per-request cost kept the offered
    rate far below its schedule (benchmarks/raw_load.py says the same of the bench).
    """

    def __init__(self, ports: list[int], result: DrillResult) -> None:
        self.ports = ports
        self.result = result
        self.killed_at: float | None = None
        self.back_at: dict[int, float] = {}  # API index -> first 202 of an event sent after the kill
        self.idle: list[list[tuple[_Connection, float]]] = [[] for _ in ports]
        self.opened: list[_Connection] = []

    def _reuse(self, api: int) -> _Connection | None:
        while self.idle[api]:
            connection, used_at = self.idle[api].pop()
            if time.monotonic() - used_at < _IDLE_REUSE_S:
                return connection
            connection[1].close()
        return None

    async def _post(self, number: int) -> None:
        api = number % len(self.ports)
        event_id, request = _request(number)
        sent = time.monotonic()
        connection = self._reuse(api)
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", self.ports[api])
                self.opened.append(connection)
            status, keep = await asyncio.wait_for(_exchange(connection, request), 10)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            self.result.statuses[0] += 1
            self.result.errors[type(exc).__name__] += 1
            return
        if keep:
            self.idle[api].append((connection, time.monotonic()))
        self.result.statuses[status] += 1
        if status == 202:
            self.result.acknowledged.add(event_id)
            if self.killed_at is not None and sent > self.killed_at:
                self.result.acknowledged_after_kill.add(event_id)
            if self.killed_at is not None and sent > self.killed_at and api not in self.back_at:
                self.back_at[api] = time.monotonic()

    def _done(self, now: float, max_after_kill_s: float) -> bool:
        if self.killed_at is None:
            return False
        recovered = len(self.back_at) == len(self.ports)
        return (recovered and now - max(self.back_at.values()) > 2) or now - self.killed_at > max_after_kill_s

    async def run(
        self, *, rate_per_s: float, kill: Callable[[], None], before_kill_s: float, max_after_kill_s: float
    ) -> None:
        """Offer load; SIGKILL the primary after `before_kill_s`; stop 2 s after both APIs give 202 again."""
        tasks: set[asyncio.Task[None]] = set()
        started = next_at = time.monotonic()
        number = 0
        try:
            while not self._done(time.monotonic(), max_after_kill_s):
                if self.killed_at is None and time.monotonic() - started >= before_kill_s:
                    kill()
                    self.killed_at = time.monotonic()
                    self.result.killed_at = time.time()
                task = asyncio.create_task(self._post(number))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                number += 1
                next_at += 1 / rate_per_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        finally:
            for _, writer in self.opened:
                writer.close()
        self.result.offered_s = time.monotonic() - started
        if len(self.back_at) == len(self.ports) and self.killed_at is not None:
            self.result.recovery_s = max(self.back_at.values()) - self.killed_at


def _read_runs(probe_file: Path, result: DrillResult) -> None:
    lines = probe_file.read_text(encoding="utf-8").splitlines() if probe_file.exists() else []
    result.runs = Counter()
    result.first_run_at = {}
    for line in lines:
        event_id, _, at = line.partition(" ")
        result.runs[event_id] += 1
        result.first_run_at[event_id] = min(float(at), result.first_run_at.get(event_id, float("inf")))


def _missing_from_ledger(topology: Topology, event_ids: set[str]) -> int:
    ids = sorted(event_ids)
    with topology.server_on(topology.primary_port()).client() as primary:
        pipe = primary.pipeline(transaction=False)
        for event_id in ids:
            pipe.exists(event_key(event_id))
        return sum(1 for found in pipe.execute() if not found)


def _drained(topology: Topology) -> bool:
    # Every event the new primary holds is finished (an event it lost would never run, so waiting
    # for the acknowledged ones could not end). Jobs that were running at the kill run again once
    # their claim expires, so this also waits for those re-runs.
    try:
        with topology.server_on(topology.primary_port()).client() as primary:
            return int(primary.zcard(PENDING_KEY)) == 0
    except (RedisError, RuntimeError):  # mid-failover, or no Sentinel answered: not yet
        return False


def run_drill(
    directory: Path,
    *,
    min_replicas: int,
    rate_per_s: float = 200,
    before_kill_s: float = 4,
    max_after_kill_s: float = 20,
    drain_timeout_s: float = 40,
) -> DrillResult:
    """Start everything, load it, SIGKILL the primary, wait for the workers to drain, stop everything."""
    result = DrillResult(min_replicas=min_replicas)
    probe_file = directory / "runs.txt"
    topology = Topology(directory / "redis")
    services: list[Service] = []
    try:
        topology.start()
        ports = [free_port(), free_port()]
        settings = topology.settings(**_SETTINGS, OA_REDIS_MIN_REPLICAS=str(min_replicas))
        settings["FAILOVER_PROBE_FILE"] = str(probe_file)
        for index, port in enumerate(ports, 1):
            env = service_env(topology.url, SECRET, port, **settings)
            services.append(Service("api", env, directory / f"api-{index}.log"))
            services.append(Service("worker", env, directory / f"worker-{index}.log"))
        for service in services:
            service.start()
        for port in ports:
            wait_until_ready(f"http://127.0.0.1:{port}")
        load = _Load(ports, result)
        asyncio.run(
            load.run(
                rate_per_s=rate_per_s,
                kill=topology.primary.kill,
                before_kill_s=before_kill_s,
                max_after_kill_s=max_after_kill_s,
            )
        )
        started = time.monotonic()
        while not _drained(topology) and time.monotonic() - started < drain_timeout_s:
            time.sleep(0.25)
        result.drain_s = time.monotonic() - started
        _read_runs(probe_file, result)
        result.missing_from_ledger = _missing_from_ledger(topology, result.acknowledged)
    finally:
        for service in services:
            service.stop()
        topology.stop()
    return result
