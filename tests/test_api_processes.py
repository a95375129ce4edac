"""OA_API_PROCESSES=2: two processes share the port (SO_REUSEPORT), one serves admin, a dead one restarts."""

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
    """The compose `api` command with OA_API_PROCESSES=2, started: both processes listening."""
    port = free_port()
    service = Service("api", service_env(redis_url, SECRET, port, OA_API_PROCESSES="2"), tmp_path / "api.log")
    service.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        assert service.process is not None
        parent, admin_port = service.process.pid, int(service.env["OA_ADMIN_PORT"])
        wait_for(lambda: _serving(parent, port, admin_port, 2), timeout_s=10, what="two serving processes")
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


def _listening(pid: int, port: int) -> bool:
    """Whether process `pid` (still) holds a socket listening on `port`."""
    try:
        return _connections_of(pid, port, "0A") > 0
    except OSError:  # gone, or a zombie whose descriptors are closed
        return False


def _serving(parent: int, port: int, admin_port: int, count: int) -> bool:
    """`count` processes each listen on the public port, and one of them on the admin port."""
    children = _children(parent)
    return (
        len(children) == count
        and all(_listening(pid, port) for pid in children)
        and sum(_listening(pid, admin_port) for pid in children) == 1
    )


def _post_new_connection(port: int, event_id: str) -> int:
    """One signed webhook on a connection of its own (so the kernel picks a process for it)."""
    body = envelope(event_id)
    headers = {**signed_headers(body), "connection": "close"}
    return httpx.post(
        f"http://127.0.0.1:{port}{ENDPOINT}", content=body, headers=headers, timeout=10
    ).status_code


def test_a_killed_process_is_restarted_while_the_port_keeps_answering(
    two_processes: tuple[Service, int],
) -> None:
    """The admin process SIGKILLed: every webhook meanwhile gets 202; two processes serve again, admin too."""
    service, port = two_processes
    assert service.process is not None
    admin_port = int(service.env["OA_ADMIN_PORT"])
    admin_pid = next(pid for pid in _children(service.process.pid) if _listening(pid, admin_port))
    os.kill(admin_pid, signal.SIGKILL)
    wait_for(
        lambda: not _listening(admin_pid, port), timeout_s=5, what="the killed process's sockets to close"
    )
    statuses: list[int] = []

    def answered_and_serving_again() -> bool:
        statuses.append(_post_new_connection(port, f"restart_{len(statuses)}"))
        assert service.process is not None
        return _serving(service.process.pid, port, admin_port, 2)

    wait_for(answered_and_serving_again, timeout_s=10, what="two serving processes again")
    assert admin_pid not in _children(service.process.pid)
    assert set(statuses) == {202}, statuses
    assert httpx.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=5).status_code == 200
    assert service.process.poll() is None


def test_a_process_that_keeps_dying_is_restarted_with_growing_delays(
    two_processes: tuple[Service, int],
) -> None:
    """Killed three times in a row, a process is back after 0.5, 1 and 2 s; SIGTERM still stops all (0)."""
    service, port = two_processes
    assert service.process is not None
    admin_port, parent = int(service.env["OA_ADMIN_PORT"]), service.process.pid
    for _ in range(3):
        victim = next(pid for pid in _children(parent) if not _listening(pid, admin_port))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda v=victim: v not in _children(parent) and _serving(parent, port, admin_port, 2),
            timeout_s=15,
            what="the killed process to be replaced",
        )
    restarts = [r for r in service.records() if r["msg"].startswith("an API process exited")]
    assert [r["retry_in_s"] for r in restarts] == [0.5, 1.0, 2.0], restarts
    assert all(r["status"] == -signal.SIGKILL for r in restarts), restarts
    children = _children(parent)
    service.signal(signal.SIGTERM)
    assert service.wait(20) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
