"""The processes a bench run starts: its own durable redis-server, the three servers and the workers.

Every process gets the environment a user would give the compose commands, runs from the work
directory (so no `.env` of the checkout leaks in) and writes its output to a log file there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import httpx

from benchmarks.bodies import SECRET
from tests.processes import compose_command, rss_mb
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
# docker-compose.yml's Redis: every acknowledged event is fsynced before Redis answers.
COMPOSE_DURABILITY = {
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "",
    "maxmemory-policy": "noeviction",
}


def start_redis(directory: Path) -> RedisServer:
    """A redis-server on a free port with the compose durability settings, checked after start."""
    server = RedisServer(directory, appendfsync="always")
    server.start()
    with server.client() as client:
        for name, expected in COMPOSE_DURABILITY.items():
            actual = client.config_get(name).get(name)
            if actual != expected:
                server.stop()
                raise RuntimeError(f"redis-server started with {name}={actual!r}, not {expected!r}")
    return server


class Proc:
    """One child process with its output in `<work>/<name>.log`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], work: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (it must be running)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> Proc:
        """Start it; returns self."""
        self._log = (self.work / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.work, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def alive(self) -> bool:
        """True while it runs."""
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float:
        """Its resident set size now, in MiB."""
        return rss_mb(self.pid)

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM, then SIGKILL past `timeout_s`; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()
        return self.process.returncode


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """What compose gives the api and worker, plus PYTHONPATH so `benchmarks.*` imports from anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OA_", "BENCH_")) and k != "REDIS_URL"}
    env |= {
        "REDIS_URL": redis_url,
        "OA_WEBHOOK_SECRET": SECRET,
        "OA_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    return env | extra


def wait_for_port(port: int, proc: Proc, timeout_s: float = 20) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {proc.work / proc.name}.log")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not listen on {port} within {timeout_s}s")


# What each app answers to `GET /healthz`: proof that the intended app serves the port.
_HEALTHZ_STATUS = {"raw": 202, "naive": 404, "ours": 200, "ours2": 200, "ours-traced": 200}


def start_server(kind: str, redis_url: str, work: Path, **extra: str) -> tuple[Proc, int]:
    """A: `raw`, B: `naive` (both via benchmarks/serve.py), C: `ours` (the compose `api` command), and
    C2: `ours2`, the same with OA_API_PROCESSES=2; Ct: `ours-traced`, with `extra`'s OTEL_* variables."""
    port = free_port()
    extra = {"OA_API_PROCESSES": "2"} if kind == "ours2" else extra
    env = service_env(redis_url, OA_PORT=str(port), OA_ADMIN_PORT=str(free_port()), **extra)
    ours = kind.startswith("ours")
    argv = compose_command("api") if ours else [sys.executable, "-m", "benchmarks.serve", kind]
    proc = Proc(f"server-{kind}", argv, env, work).start()
    wait_for_port(port, proc)
    status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
    if status != _HEALTHZ_STATUS[kind]:
        proc.stop()
        raise RuntimeError(f"the {kind} server answered /healthz with {status}: is it the right app?")
    return proc, port


def start_worker(
    name: str,
    redis_url: str,
    work: Path,
    probe_file: Path,
    *,
    bare: bool = False,
    handlers: str = "benchmarks.handlers",
    **extra: str,
) -> Proc:
    """D: the compose `worker` command with a probe handler package (O: the ordered one); E: bare arq.

    `extra`: more environment (Dt: the OTEL_* variables that turn tracing on).
    """
    env = service_env(redis_url, OA_HANDLERS_PACKAGE=handlers, BENCH_PROBE_FILE=str(probe_file), **extra)
    argv = [sys.executable, "-m", "benchmarks.bare_arq"] if bare else compose_command("worker")
    return Proc(name, argv, env, work).start()


def data_memory(client: Redis) -> int:
    """Redis's `used_memory` less its clients' buffers, in bytes: what the keys take."""
    info = cast("dict[str, Any]", client.info("memory"))
    return int(info["used_memory"]) - int(info["mem_clients_normal"])
