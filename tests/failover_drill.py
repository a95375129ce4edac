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

import httpx
from redis.exceptions import RedisError

from service.ledger import PENDING_KEY
from service.signature import SIGNATURE_HEADER
from tests.processes import ROOT, Service, service_env, wait_until_ready
from tests.redis_server import free_port
from tests.sentinel_topology import Topology

if TYPE_CHECKING:
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
    acknowledged: set[str] = field(default_factory=set)
    runs: Counter[str] = field(default_factory=Counter)  # handler runs per event id
    recovery_s: float | None = None  # kill -> 202 again on every API, for events sent after the kill
    drain_s: float = 0.0

    @property
    def lost(self) -> set[str]:
        """Events answered 202 that no handler ever ran."""
        return self.acknowledged - set(self.runs)

    @property
    def ran_twice(self) -> int:
        """Events whose handler ran more than once."""
        return sum(1 for count in self.runs.values() if count > 1)

    def summary(self) -> dict[str, object]:
        """The figures, for a report."""
        return {
            "min_replicas": self.min_replicas,
            "sent": sum(self.statuses.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "acknowledged": len(self.acknowledged),
            "lost": len(self.lost),
            "ran_twice": self.ran_twice,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "drain_s": round(self.drain_s, 1),
        }


def _event(number: int) -> tuple[str, bytes, dict[str, str]]:
    event_id = f"fo_{number}"
    body = json.dumps({"id": event_id, "type": "lead.created", "payload": {"lead_id": number}}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return event_id, body, {"content-type": "application/json", SIGNATURE_HEADER: signature}


class _Load:
    """About `rate_per_s` events a second, alternating between the APIs, each answer noted."""

    def __init__(self, urls: list[str], result: DrillResult) -> None:
        self.urls = urls
        self.result = result
        self.killed_at: float | None = None
        self.back_at: dict[int, float] = {}  # API index -> first 202 of an event sent after the kill

    async def _post(self, http: httpx.AsyncClient, number: int) -> None:
        api = number % len(self.urls)
        event_id, body, headers = _event(number)
        sent = time.monotonic()
        try:
            status = (await http.post(self.urls[api] + ENDPOINT, content=body, headers=headers)).status_code
        except httpx.HTTPError:
            status = 0
        self.result.statuses[status] += 1
        if status == 202:
            self.result.acknowledged.add(event_id)
            if self.killed_at is not None and sent > self.killed_at and api not in self.back_at:
                self.back_at[api] = time.monotonic()

    async def run(
        self, *, rate_per_s: float, kill: object, before_kill_s: float, max_after_kill_s: float
    ) -> None:
        assert callable(kill)
        tasks: set[asyncio.Task[None]] = set()
        started = next_at = time.monotonic()
        number = 0
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=400)) as http:
            while True:
                now = time.monotonic()
                if self.killed_at is None and now - started >= before_kill_s:
                    kill()
                    self.killed_at = time.monotonic()
                if self.killed_at is not None:
                    recovered = len(self.back_at) == len(self.urls)
                    if (
                        recovered and now - max(self.back_at.values()) > 2
                    ) or now - self.killed_at > max_after_kill_s:
                        break
                task = asyncio.create_task(self._post(http, number))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                number += 1
                next_at += 1 / rate_per_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)
        if len(self.back_at) == len(self.urls) and self.killed_at is not None:
            self.result.recovery_s = max(self.back_at.values()) - self.killed_at


def _runs(probe_file: Path) -> Counter[str]:
    if not probe_file.exists():
        return Counter()
    return Counter(probe_file.read_text(encoding="utf-8").split())


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
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_until_ready(url)
        load = _Load(urls, result)
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
        result.runs = _runs(probe_file)
    finally:
        for service in services:
            service.stop()
        topology.stop()
    return result
