"""A real `redis-server` on a free port, that tests can stop, kill and restart on the same data."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from service.ops.cli.local import durable_redis_args


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process with its data in `directory`, AOF on with the given fsync policy."""

    def __init__(
        self,
        directory: Path,
        *,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.binary = binary
        self.directory = directory
        self.appendfsync = appendfsync
        self.password = password
        self.extra_args = extra_args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL for REDIS_URL."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        """A synchronous client for assertions."""
        return Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        """Start (or restart, on the same data and port) and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            *durable_redis_args(appendfsync=self.appendfsync),
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra_args,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.directory}/redis.log")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) and wait."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything that was not already on disk."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP freezes it with its connections open; SIGCONT resumes it)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
