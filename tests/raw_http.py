"""Raw-socket helpers for tests of what the HTTP server itself decides (shared by several modules)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from service.api.signature import sign
from tests.conftest import SECRET
from tests.processes import Service

BODY = b'{"id":"evt_x","type":"lead.created","payload":{"lead_id":1}}'
SIGNATURE = sign(BODY, SECRET.encode()).encode()
SIG = b"x-offerte-adviseur-signature: " + SIGNATURE
CL = b"content-length: %d" % len(BODY)


@dataclass(frozen=True)
class Reply:
    """A parsed HTTP response, and whether the server closed the connection after it."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    closed: bool
    seconds: float

    def json(self) -> Any:
        """The body as JSON (fails the test if it is not)."""
        return json.loads(self.body)


def request_head(
    headers: list[bytes], *, method: bytes = b"POST", target: bytes = b"/webhooks/offerte-adviseur"
) -> bytes:
    """A request line and header block; each header is one raw `name: value` line."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: 127.0.0.1", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_response(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes] | None:
    """Status, headers and body of the first response in `raw`, or None while it is incomplete."""
    head, found, rest = raw.partition(b"\r\n\r\n")
    if not found:
        return None
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    if len(rest) < length:
        return None
    return int(status_line.split()[1]), headers, rest[:length]


def read_response(sock: socket.socket) -> tuple[tuple[int, dict[bytes, bytes], bytes] | None, bytes]:
    """Read one whole response, or until the server closes: (parsed or None, the bytes read)."""
    raw = b""
    parsed = None
    while parsed is None:
        chunk = sock.recv(65_536)
        if not chunk:
            break
        raw += chunk
        parsed = parse_response(raw)
    return parsed, raw


def exchange(
    port: int,
    pieces: list[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = 10.0,
    close_wait_s: float = 3.0,
) -> Reply:
    """Send `pieces` (pausing between them), read one response, then see whether the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for index, piece in enumerate(pieces):
            if index and pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed early; read what it said
        parsed, raw = read_response(sock)
        assert parsed is not None, f"no complete response: {raw[:300]!r}"
        seconds = time.monotonic() - started
        closed = False
        if close_wait_s:
            sock.settimeout(close_wait_s)
            try:
                closed = sock.recv(65_536) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
    return Reply(*parsed, closed=closed, seconds=seconds)


@dataclass(frozen=True)
class Api:
    """A running `oa-webhooks api` process (the compose command) and its log."""

    port: int
    service: Service

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.service.output()

    @property
    def admin_port(self) -> int:
        """The port of its admin listener (/metrics, /readyz)."""
        return int(self.service.env["OA_ADMIN_PORT"])


def snapshot(redis: Redis) -> tuple[int, set[bytes]]:
    """What is in Redis: DBSIZE and every key."""
    return int(redis.dbsize()), set(redis.keys("*"))
