"""OA_API_PROCESSES=2: two processes share the port (SO_REUSEPORT), one serves admin, they stop together."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ENDPOINT, SECRET, envelope, signed_headers
from tests.processes import Service, service_env, wait_for, wait_until_ready
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def _established_on(port: int, state: str = "01") -> dict[int, int]:
    """Inode of each TCP socket in `state` (01 established, 0A listening) on local `port` (Linux /proc)."""
    inodes: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == state:
            inodes[int(fields[9])] = local_port
    return inodes


def _connections_of(pid: int, port: int, state: str = "01") -> int:
    established = _established_on(port, state)
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = fd.readlink().name if fd.is_symlink() else ""
        if target.startswith("socket:[") and int(target[8:-1]) in established:
            count += 1
    return count


@pytest.fixture
def two_processes(tmp_path: Path, redis_url: str) -> Iterator[tuple[Service, int]]:
    """The compose `api` command with OA_API_PROCESSES=2, started."""
    port = free_port()
    service = Service("api", service_env(redis_url, SECRET, port, OA_API_PROCESSES="2"), tmp_path / "api.log")
    service.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        assert service.process is not None
        wait_for(lambda: len(_children(service.process.pid)) == 2, timeout_s=10, what="two processes")
        yield service, port
    finally:
        service.stop()


async def _hold_connections(port: int, count: int, seen: asyncio.Event, release: asyncio.Event) -> list[int]:
    async def one(index: int) -> int:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            body = envelope(f"proc_{index}")
            status = (await http.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code
            await release.wait()  # keep the kept-alive connection open while it is counted
            return status

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(0)
    seen.set()
    return list(await asyncio.gather(*tasks))


def test_two_processes_share_the_port(two_processes: tuple[Service, int]) -> None:
    """40 connections are spread over both processes by the kernel, and every event gets 202."""
    service, port = two_processes
    assert service.process is not None
    children = _children(service.process.pid)

    statuses, counts = asyncio.run(_spread(port, children))
    assert statuses == [202] * 40
    assert sum(counts.values()) == 40, counts
    assert all(n > 0 for n in counts.values()), f"one process got every connection: {counts}"


async def _spread(port: int, children: list[int]) -> tuple[list[int], dict[int, int]]:
    """Post 40 webhooks on 40 held connections; their statuses, and how many each child process holds."""
    seen, release = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold_connections(port, 40, seen, release))
    await seen.wait()
    counts: dict[int, int] = {}
    for _ in range(200):  # until all 40 answered and are held open
        counts = {pid: _connections_of(pid, port) for pid in children}
        if sum(counts.values()) == 40:
            break
        await asyncio.sleep(0.05)
    release.set()
    return await holder, counts


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))


def test_admin_listener_is_bound_once_and_counts_its_own_process(two_processes: tuple[Service, int]) -> None:
    """One process listens on the admin port; /metrics' http_requests_total counts that process's only."""
    service, port = two_processes
    assert service.process is not None
    admin_port = int(service.env["OA_ADMIN_PORT"])
    children = _children(service.process.pid)
    listening = {pid: _connections_of(pid, admin_port, "0A") for pid in children}
    assert sorted(listening.values()) == [0, 1], listening
    admin_pid = next(pid for pid, n in listening.items() if n == 1)
    assert all(_connections_of(pid, port, "0A") == 1 for pid in children)  # each its own public socket

    statuses, counts = asyncio.run(_spread(port, children))
    assert statuses == [202] * 40
    assert sum(counts.values()) == 40, counts
    assert 0 < counts[admin_pid] < 40, counts  # both processes took webhooks
    metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert _counter(metrics.text, "oa_webhooks_http_requests_total") == counts[admin_pid]


def test_sigterm_stops_every_process(two_processes: tuple[Service, int]) -> None:
    """SIGTERM to the parent stops both processes, and it exits 0."""
    service, _port = two_processes
    assert service.process is not None
    children = _children(service.process.pid)
    service.signal(signal.SIGTERM)
    assert service.wait(20) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_a_dead_process_stops_the_set(two_processes: tuple[Service, int]) -> None:
    """One process SIGKILLed: the parent stops the other and exits non-zero, for a restart policy."""
    service, _port = two_processes
    assert service.process is not None
    first, second = _children(service.process.pid)
    os.kill(first, signal.SIGKILL)
    assert service.wait(20) != 0
    assert not Path(f"/proc/{second}").exists()
