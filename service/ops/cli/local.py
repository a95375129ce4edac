"""`oa-webhooks run` (the whole stack without Docker) and `oa-webhooks healthcheck` (for compose)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlparse

import httpx
import typer
from redis import Redis
from redis.exceptions import RedisError

from service.ops.cli.reload import Watcher, watched_folders
from service.ops.cli.supervise import WorkerSupervisor
from service.settings import load_settings_or_exit

if TYPE_CHECKING:
    from service.settings import Settings

# The same commands as docker-compose.yml's `api` and `worker` services, from this virtualenv
# (make runs us without activating it).
_SCRIPT = Path(sys.executable).parent / "oa-webhooks"
_BINARY = str(_SCRIPT) if _SCRIPT.exists() else "oa-webhooks"
API_COMMAND = [_BINARY, "api"]
WORKER_COMMAND = [_BINARY, "worker"]
DATA_DIR = Path(".data/redis")


def _ensure_env_file() -> None:
    """First run: write `.env` with a random secret and console token, so `make run` works at once.

    The console is on under `make run` (a random `OA_ADMIN_TOKEN`). `.env.example`, which compose
    and production start from, leaves the token empty: there the console stays off until set.
    """
    env = Path(".env")
    if os.environ.get("OA_WEBHOOK_SECRET") or env.exists():
        return
    example = Path(".env.example")
    text = example.read_text(encoding="utf-8") if example.exists() else "OA_WEBHOOK_SECRET=change-me\n"
    text = text.replace("OA_WEBHOOK_SECRET=change-me", f"OA_WEBHOOK_SECRET={secrets.token_hex(24)}")
    token = f"OA_ADMIN_TOKEN={secrets.token_hex(32)}"
    lines = text.splitlines()
    if "OA_ADMIN_TOKEN=" in lines:
        lines[lines.index("OA_ADMIN_TOKEN=")] = token
    elif not any(line.startswith("OA_ADMIN_TOKEN=") for line in lines):
        lines.append(token)
    env.write_text("\n".join(lines) + "\n", encoding="utf-8")
    typer.echo(
        "wrote .env with a random OA_WEBHOOK_SECRET and OA_ADMIN_TOKEN for local use; "
        "put your real webhook secret there"
    )


def _console_line(settings: Settings) -> str:
    """Where the console is and how to sign in, or how to turn it on."""
    if settings.admin_token is None:
        return "console off: set OA_ADMIN_TOKEN in .env (openssl rand -hex 32) to turn it on"
    where = "in .env" if "OA_ADMIN_TOKEN" not in os.environ else "in the environment"
    url = f"http://{_local(settings.admin_host)}:{settings.admin_port}/console"
    return f"console on {url} - sign in with OA_ADMIN_TOKEN ({where})"


def _local(host: str) -> str:
    """How this machine reaches a listener bound to `host`: a wildcard bind on loopback."""
    address = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    return f"[{address}]" if ":" in address else address


def durable_redis_args(*, appendfsync: str = "always") -> list[str]:
    """The flags of the compose Redis: every acknowledged event on disk, nothing evicted, compact hashes.

    `hash-max-listpack-value 1024` keeps a ledger entry (a ~400-byte body) in Redis's compact hash
    encoding: about 920 instead of 1,680 bytes per retained event (make bench).
    """
    return [
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--hash-max-listpack-value",
        "1024",
    ]


def _redis_answers(url: str) -> bool:
    try:
        with Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except (RedisError, OSError):
        return False


def _start_redis(url: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        typer.echo(
            f"Redis at {urlparse(url).hostname}:{urlparse(url).port or 6379} does not answer and there is no "
            "redis-server here. Install one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: "
            "brew install redis) or set REDIS_URL to a running Redis.",
            err=True,
        )
        raise typer.Exit(1)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    port = urlparse(url).port or 6379
    # The same durability as the compose Redis: every acknowledged event is on disk.
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(DATA_DIR.resolve()),
            *durable_redis_args(),
            "--logfile",
            "redis.log",
        ]
    )
    for _ in range(50):
        if _redis_answers(url):
            typer.echo(f"started redis-server on 127.0.0.1:{port} (data and redis.log in {DATA_DIR})")
            return process
        time.sleep(0.1)
    process.terminate()
    typer.echo("redis-server did not start; see its output above", err=True)
    raise typer.Exit(1)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()


def run(
    reload: Annotated[
        bool,
        typer.Option(
            "--reload/--no-reload", help="restart the worker when a .py file under workers/ changes"
        ),
    ] = True,
) -> None:
    """Start Redis (if REDIS_URL does not answer), the API on OA_PORT and one worker; Ctrl-C stops them."""
    _ensure_env_file()
    settings = load_settings_or_exit()
    url = settings.redis_url.get_secret_value()
    # With Sentinel, REDIS_URL names no server to check or start: the Sentinels know the primary.
    redis_process = None if settings.sentinel or _redis_answers(url) else _start_redis(url)
    api = subprocess.Popen(API_COMMAND)
    worker = WorkerSupervisor(WORKER_COMMAND)
    worker.start()
    typer.echo(
        f"API on http://{settings.host}:{settings.port} - try: oa-webhooks send lead.created; "
        f"/metrics and /readyz on http://{settings.admin_host}:{settings.admin_port}"
    )
    typer.echo(_console_line(settings))
    watcher = Watcher(watched_folders(settings.handlers_package)) if reload else None
    typer.echo(_reload_line(watcher))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if watcher:
            watcher.start()
        while True:
            time.sleep(0.2)
            if api.poll() is not None:
                typer.echo(f"the API exited with status {api.returncode}", err=True)
                break
            if watcher and (changed := watcher.changed()):
                worker.reload(f"{changed} changed")
            running = worker.process
            worker.check()
            if watcher and worker.process is not running:
                watcher.refresh()  # the new worker imports the files as they are now
    except KeyboardInterrupt:
        typer.echo("stopping...")
    finally:
        if watcher:
            watcher.stop()
        _stop([api, *([worker.process] if worker.process else [])])
        if redis_process is not None:
            _stop([redis_process])
    sys.exit(0 if api.returncode in (None, 0, -signal.SIGTERM) else 1)


def _reload_line(watcher: Watcher | None) -> str:
    if watcher is None:
        return "reload off (--no-reload): restart `make run` to run changed handlers"
    here = Path.cwd()
    folders = [f"{f.relative_to(here)}/" if f.is_relative_to(here) else f"{f}/" for f in watcher.folders]
    return f"reload on: the worker restarts when a .py file under {' or '.join(folders)} changes"


def healthcheck(
    target: Annotated[
        str,
        typer.Argument(
            help="api: both listeners answer (/healthz, admin /readyz); worker: a fresh heartbeat"
        ),
    ],
    ready: Annotated[
        bool,
        typer.Option("--ready", help="api: exit 1 unless /readyz says ready (Redis and its replicas)"),
    ] = False,
) -> None:
    """Exit 0 when the API answers, or when a worker on this host has a fresh heartbeat.

    For the API it prints `ready`, or `alive, not ready: <why>`: liveness is the exit status, so a
    Redis outage does not get a healthy process restarted; `--ready` makes readiness the exit status.
    """
    settings = load_settings_or_exit()
    if target == "api":
        alive, why_not_ready = _api_alive(settings.port, settings.admin_host, settings.admin_port)
        if alive:
            typer.echo("ready" if why_not_ready is None else f"alive, not ready: {why_not_ready}")
        else:
            admin = f"{settings.admin_host}:{settings.admin_port}"
            typer.echo(f"not alive: no answer on port {settings.port} or {admin}", err=True)
        ok = alive and (why_not_ready is None or not ready)
    elif target == "worker":
        ok = asyncio.run(_worker_alive(settings))
    else:
        raise typer.BadParameter("expected 'api' or 'worker'")
    raise typer.Exit(0 if ok else 1)


def _api_alive(port: int, admin_host: str, admin_port: int) -> tuple[bool, str | None]:
    """Both listeners answer: /healthz on the public port, and /readyz (200 or 503) on the admin port.

    Returns whether they do, and why /readyz says not ready (None when it says ready).
    """
    admin = _local(admin_host)
    try:
        with httpx.Client(timeout=3) as http:
            public_ok = http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            readyz = http.get(f"http://{admin}:{admin_port}/readyz")
    except httpx.HTTPError:
        return False, None
    if readyz.status_code == 200:
        return public_ok, None
    if readyz.status_code != 503:
        return False, None
    try:
        why = str(readyz.json()["detail"])
    except (ValueError, KeyError, TypeError):
        why = readyz.text[:200]
    return public_ok, why


async def _worker_alive(settings: Settings) -> bool:
    from service.store import queue  # noqa: PLC0415
    from service.store.stats import WORKERS_KEY  # noqa: PLC0415

    interval_s = settings.heartbeat_interval_s
    client = queue.connect(settings.redis_url.get_secret_value(), timeout_s=3, sentinel=settings.sentinel)
    try:
        fresh = await client.zrangebyscore(WORKERS_KEY, time.time() * 1000 - interval_s * 3000, "+inf")
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()
    host = socket.gethostname() + ":"
    return any(member.decode().startswith(host) for member in fresh)
