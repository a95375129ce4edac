"""A primary, two replicas and three Sentinels from `redis-server`, on loopback, for failover tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from redis import Redis
from redis.exceptions import RedisError

from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from pathlib import Path

MASTER = "oa"
# How long the Sentinels wait before they call a silent primary down; a real deployment uses more.
DOWN_AFTER_MS = 1000


class SentinelProcess:
    """One `redis-server FILE --sentinel`, with its (rewritable) config file in `directory`."""

    def __init__(self, directory: Path, *, primary_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.primary_port = primary_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the config and start; Sentinel rewrites the file as it learns the topology."""
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.directory}",
                    f"logfile {self.directory / 'sentinel.log'}",
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2",
                    f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER} 10000",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.process = subprocess.Popen([binary, str(config), "--sentinel"])

    def client(self) -> Redis:
        """A synchronous client to ask this Sentinel."""
        return Redis(port=self.port, socket_timeout=2)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Topology:
    """A primary with two replicas, watched by three Sentinels; `stop` ends every process it started."""

    def __init__(self, directory: Path) -> None:
        self.primary = RedisServer(directory / "primary", appendfsync="always")
        self.replicas: list[RedisServer] = []
        self.directory = directory
        self.sentinels: list[SentinelProcess] = []

    @property
    def servers(self) -> list[RedisServer]:
        """The primary and the replicas, as started (roles change with a failover)."""
        return [self.primary, *self.replicas]

    @property
    def sentinel_addresses(self) -> str:
        """The value for OA_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def url(self) -> str:
        """REDIS_URL with Sentinel: host and port are ignored, the database is used."""
        return "redis://sentinel-decides:0/0"

    def settings(self, **extra: str) -> dict[str, str]:
        """The environment for the API and the worker."""
        return {
            "REDIS_URL": self.url,
            "OA_REDIS_SENTINELS": self.sentinel_addresses,
            "OA_REDIS_SENTINEL_MASTER": MASTER,
            **extra,
        }

    def start(self) -> None:
        """Start everything and wait until the Sentinels see both replicas and each other."""
        self.primary.start()
        replica_of = ("--replicaof", "127.0.0.1", str(self.primary.port))
        for name in ("replica-1", "replica-2"):
            replica = RedisServer(self.directory / name, appendfsync="always", extra_args=replica_of)
            self.replicas.append(replica)
            replica.start()
        for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
            sentinel = SentinelProcess(self.directory / name, primary_port=self.primary.port)
            self.sentinels.append(sentinel)
            sentinel.start()
        self._wait_until_watched()

    def _wait_until_watched(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._sees_everything(s) for s in self.sentinels):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Sentinels did not see the whole topology; see {self.directory}")

    @staticmethod
    def _sees_everything(sentinel: SentinelProcess) -> bool:
        try:
            with sentinel.client() as client:
                state = client.sentinel_master(MASTER)
                replicas = client.sentinel_slaves(MASTER)
        except RedisError:
            return False
        up = [r for r in replicas if not r["is_sdown"] and r.get("master-link-status") == "ok"]
        return int(state["num-other-sentinels"]) == 2 and len(up) == 2

    def primary_port(self) -> int:
        """The port of the primary that the Sentinels name now (asks each until one answers)."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    return int(client.sentinel_get_master_addr_by_name(MASTER)[1])
            except RedisError:
                continue
        raise RuntimeError("no Sentinel answered")

    def wait_for_replicas(self, count: int = 2, timeout_s: float = 20) -> RedisServer:
        """Wait until the current primary has `count` replicas online (after a failover they resync)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            primary = self.server_on(self.primary_port())
            try:
                with primary.client() as client:
                    info = client.info("replication")
            except RedisError:
                info = {}
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if info.get("role") == "master" and sum(r.get("state") == "online" for r in online) >= count:
                return primary
            time.sleep(0.1)
        raise RuntimeError(f"the primary did not get {count} replicas online; see {self.directory}")

    def role_of(self, port: int) -> bytes | None:
        """`master` or `slave` for the server on `port`, asked on a new connection; None if it did not answer.

        Sentinel's reconfiguration of a server ends its clients' connections (CLIENT KILL TYPE normal),
        so a poll on one kept connection can meet a reset while the failover it waits for goes on.
        """
        try:
            with self.server_on(port).client() as client:
                return bytes(client.role()[0])
        except RedisError:
            return None

    def server_on(self, port: int) -> RedisServer:
        """The server listening on `port`."""
        return next(s for s in self.servers if s.port == port)

    def stop(self) -> None:
        """Stop every process this topology started (thawing any frozen one first)."""
        for server in self.servers:
            server.signal(signal.SIGCONT)
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
