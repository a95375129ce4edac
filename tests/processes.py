"""Start the `api` and `worker` commands of docker-compose.yml as real processes, as a user would."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def compose_command(service: str) -> list[str]:
    """The `command:` of a compose service, as an argv list."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    command = spec["services"][service]["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    # Use this virtualenv's console script, as `make test` installed it.
    argv[0] = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    return argv


class Service:
    """One running compose command, its output in a log file under the test's tmp dir."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the process (again, after a stop or a kill)."""
        if self._log:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            compose_command(self.name), env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit and return its status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines printed so far (OA_LOG_FORMAT=json), parsed."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]


def service_env(redis_url: str, secret: str, port: int, **extra: str) -> dict[str, str]:
    """The environment a user would give the compose commands, plus test-speed settings.

    The admin listener gets a free port of its own (OA_ADMIN_PORT), unless `extra` names one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OA_") and k != "REDIS_URL"}
    env.update(
        {
            "REDIS_URL": redis_url,
            "OA_WEBHOOK_SECRET": secret,
            "OA_PORT": str(port),
            "OA_ADMIN_PORT": str(free_port()),
            "OA_LOG_FORMAT": "json",
            "OA_HEARTBEAT_INTERVAL_S": "1",
            "OA_POLL_DELAY_S": "0.02",
        }
    )
    env.update(extra)
    return env


def wait_until_ready(base_url: str, timeout_s: float = 20) -> None:
    """Poll `/healthz` until the API answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the API at {base_url} did not become ready")


def wait_for(
    predicate: object, *, timeout_s: float, interval_s: float = 0.05, what: str = "condition"
) -> None:
    """Poll `predicate()` until it is truthy; fail with `what` after `timeout_s`."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


HANDLERS_DIR = ROOT / "workers" / "handlers"


class Stack:
    """The api and worker compose commands, running against one Redis, with a probe handler module."""

    def __init__(self, tmp_path: Path, redis_url: str, secret: str, **settings: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = service_env(redis_url, secret, self.port, **settings)
        self.admin_url = f"http://127.0.0.1:{env['OA_ADMIN_PORT']}"
        self.api = Service("api", env, tmp_path / "api.log")
        self.worker = Service("worker", env, tmp_path / "worker.log")
        self.handler_files: list[Path] = []

    def add_handler_module(self, name: str, source: str) -> None:
        """Write a handler module into workers/handlers/ (removed again by `close`)."""
        path = HANDLERS_DIR / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        self.handler_files.append(path)

    def start(self, *, worker: bool = True) -> None:
        """Start the API (and the worker, unless told not to) and wait for the API."""
        self.api.start()
        if worker:
            self.worker.start()
        wait_until_ready(self.base_url)

    def close(self) -> None:
        """Stop both processes and remove the handler modules the test added."""
        self.worker.stop()
        self.api.stop()
        for path in self.handler_files:
            path.unlink(missing_ok=True)
