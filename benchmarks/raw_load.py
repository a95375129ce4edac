"""F's load generator: signed events offered at a steady rate over plain keep-alive sockets.

httpx was the generator before, and it made F measure the client: under a moment's delay its
connection pool (which scans every connection and queued request per request) took a whole
core, fell behind its own schedule, and stamped answers late, so "202 -> handler start" came
out negative by hundreds of milliseconds. A request here costs one write and a read or two.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from benchmarks.httpx_load import Recorder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.bodies import Signed
    from benchmarks.measures import LoadResult

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_IDLE_REUSE_S = 2.0


def _request(host: str, path: str, event: Signed) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"x-offerte-adviseur-signature: {event.signature}\r\ncontent-length: {len(event.body)}\r\n\r\n"
    )
    return head.encode() + event.body


async def _exchange(connection: _Connection, request: bytes) -> int:
    """Send one request and read its whole answer; returns the status."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def open_loop(url: str, events: Sequence[Signed], *, rate: float) -> LoadResult:
    """Offer the events at `rate` per second on a fixed schedule, each on an idle connection or a new one."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    recorder = Recorder()
    idle: list[tuple[_Connection, float]] = []  # with when it was last used
    opened: list[_Connection] = []

    def reuse() -> _Connection | None:
        # The API closes a connection idle for OA_KEEPALIVE_TIMEOUT_S (5 s); a request written
        # to one it has just closed would fail, so older idle connections are not reused.
        while idle:
            connection, used_at = idle.pop()
            if time.monotonic() - used_at < _IDLE_REUSE_S:
                return connection
        return None

    async def one(event: Signed) -> None:
        recorder.sent_at[event.event_id] = time.time()
        started = time.perf_counter()
        connection = reuse()
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
                opened.append(connection)
            status = await asyncio.wait_for(_exchange(connection, _request(host, parts.path, event)), 10)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            recorder.errors += 1
            return
        recorder.record(event.event_id, status, time.perf_counter() - started)
        idle.append((connection, time.monotonic()))

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    try:
        for index, event in enumerate(events):
            wait_s = started + index / rate - time.perf_counter()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            tasks.append(asyncio.create_task(one(event)))
        await asyncio.gather(*tasks)
    finally:
        for _, writer in opened:
            writer.close()
    return recorder.result(time.perf_counter() - started)
