"""Bodies that never end, and odd requests the real server accepts on purpose, against `oa-webhooks api`.

Over the cap, the server answers 413 and closes: it stops reading, so a client cannot make it take
in more than the cap plus what the kernel's socket buffers hold.
"""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest
from redis import Redis

from service.store.ledger import event_key
from tests.processes import wait_for
from tests.raw_http import (
    BODY,
    CL,
    SIG,
    SIGNATURE,
    Api,
    Reply,
    exchange,
    parse_response,
    request_head,
    snapshot,
)

pytestmark = pytest.mark.e2e
CAP = 262_144
# Far more than the cap: the server must have stopped reading long before this.
FLOOD_BYTES = 256 * 1024 * 1024
# The cap plus room for loopback socket buffers on both sides (about 6 MiB were measured).
READ_BOUND = CAP + 16 * 1024 * 1024


def flood(port: int, head: bytes, chunk: bytes, *, max_bytes: int) -> tuple[Reply | None, int]:
    """Send `head`, then `chunk` over and over while reading; stop when the server closes or at `max_bytes`.

    Returns the response (if one came) and how many body bytes the server let us send.
    """
    sent = 0
    raw = b""
    parsed = None
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(0)
        while sent < max_bytes and time.monotonic() - started < 30:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                try:
                    data = sock.recv(65_536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                raw += data
                parsed = parsed or parse_response(raw)
            elif writable:
                try:
                    sent += sock.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
    reply = Reply(*parsed, closed=True, seconds=time.monotonic() - started) if parsed else None
    return reply, sent


@pytest.mark.parametrize(
    ("name", "header", "chunk"),
    [
        ("content-length", b"content-length: %d" % FLOOD_BYTES, b"x" * 65_536),
        ("chunked", b"transfer-encoding: chunked", b"10000\r\n" + b"x" * 65_536 + b"\r\n"),
    ],
)
def test_endless_body_gets_413_and_the_server_stops_reading(
    name: str, header: bytes, chunk: bytes, api: Api, redis_sync: Redis
) -> None:
    """A body far over the cap (declared or chunked) gets 413 JSON, then the server closes the connection."""
    reply, sent = flood(api.port, request_head([header, SIG]), chunk, max_bytes=FLOOD_BYTES)
    assert reply is not None, f"no response after sending {sent} bytes ({name})"
    assert (reply.status, reply.json()["error"]) == (413, "body_too_large")
    assert sent < READ_BOUND, f"the server read {sent} bytes of a {name} body past a {CAP}-byte cap"
    assert snapshot(redis_sync) == (0, set())


def test_whitespace_around_the_signature_is_accepted(api: Api, redis_sync: Redis) -> None:
    """Spaces and tabs around the signature value are optional whitespace (RFC 9110), not the value: 202."""
    signature_line = b"x-offerte-adviseur-signature: \t " + SIGNATURE + b" \t"
    reply = exchange(api.port, [request_head([CL, signature_line]) + BODY], close_wait_s=0)
    assert reply.status == 202, reply.body
    assert redis_sync.hget(event_key("evt_x"), "body") == BODY


def test_client_leaving_mid_body_is_logged_without_a_traceback(api: Api, redis_sync: Redis) -> None:
    """A client that closes mid-body is one INFO line (client_disconnected); no traceback, nothing stored."""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(request_head([b"content-length: 1000", SIG]) + BODY[:20])
        time.sleep(0.2)
    wait_for(lambda: "client_disconnected" in api.log(), timeout_s=5, what="the disconnect to be logged")
    assert "Traceback" not in api.log()
    assert [r for r in api.service.records() if r["level"] == "error"] == []
    assert snapshot(redis_sync) == (0, set())


def test_the_api_still_serves_after_hostile_traffic(api: Api) -> None:
    """After everything above, the API still answers a normal request at once."""
    response = httpx.get(f"http://127.0.0.1:{api.port}/healthz", timeout=5)
    assert response.status_code == 200
    assert [r for r in api.service.records() if r["level"] == "error"] == []
