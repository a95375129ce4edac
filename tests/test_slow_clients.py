"""Slow and greedy clients against a real `oa-webhooks api`: they time out, and never hold up others.

Uvicorn alone has no deadline for a request's head or body; ours are OA_HEADER_TIMEOUT_S (in the
h11 protocol subclass) and OA_BODY_TIMEOUT_S (while the endpoint reads the body).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.api.signature import SIGNATURE_HEADER, sign
from tests.conftest import ENDPOINT, SECRET, envelope
from tests.processes import Service, service_env, wait_for, wait_until_ready
from tests.raw_http import Api, parse_response, read_response, request_head
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0


def _start(tmp_path: Path, redis_url: str, **settings: str) -> Service:
    port = free_port()
    service = Service("api", service_env(redis_url, SECRET, port, **settings), tmp_path / f"api-{port}.log")
    service.start()
    wait_until_ready(f"http://127.0.0.1:{port}")
    return service


@pytest.fixture
def slow_api(tmp_path: Path, redis_url: str) -> Iterator[Api]:
    """An API with short head and body deadlines."""
    service = _start(
        tmp_path, redis_url, OA_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), OA_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)
    )
    yield Api(int(service.env["OA_PORT"]), service)
    service.stop()


class Trickler(threading.Thread):
    """Send `at_once`, then `trickled` one byte every `interval_s`, until the server answers or closes."""

    def __init__(self, port: int, at_once: bytes, trickled: bytes, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port, self.at_once, self.trickled, self.interval_s = port, at_once, trickled, interval_s
        self.status: int | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.connected = threading.Event()

    def run(self) -> None:
        """Trickle and record the answer."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(self.at_once)
            self.connected.set()
            raw = b""
            data = self.trickled
            sent = 0
            while time.monotonic() - started < 30:
                if select.select([sock], [], [], self.interval_s)[0]:
                    chunk = sock.recv(65_536)
                    raw += chunk
                    parsed = parse_response(raw)
                    if parsed or not chunk:
                        break
                elif sent < len(data):
                    sock.sendall(data[sent : sent + 1])
                    sent += 1
        self.seconds = time.monotonic() - started
        parsed = parse_response(raw)
        if parsed:
            self.status = parsed[0]
            self.error = parsed[2].decode()


def test_tricklers_time_out_and_do_not_block_a_normal_request(slow_api: Api, redis_sync: Redis) -> None:
    """Next to 20 clients trickling heads and 20 trickling bodies, a normal event gets 202 in under 1 s."""
    body = envelope("evt_slow_victim")
    sig = sign(b"x" * 200, SECRET.encode()).encode()
    body_head = request_head([b"content-length: 200", b"x-offerte-adviseur-signature: " + sig])
    slow_heads = [Trickler(slow_api.port, b"", request_head([b"x-pad: " + b"p" * 200])) for _ in range(20)]
    slow_bodies = [Trickler(slow_api.port, body_head, b"x" * 200) for _ in range(20)]
    tricklers = slow_heads + slow_bodies
    for trickler in tricklers:
        trickler.start()
        trickler.connected.wait(5)
    time.sleep(0.5)
    started = time.monotonic()
    response = httpx.post(
        f"http://127.0.0.1:{slow_api.port}{ENDPOINT}",
        content=body,
        headers={SIGNATURE_HEADER: sign(body, SECRET.encode())},
        timeout=5,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert elapsed < 1.0, f"a normal request took {elapsed:.2f}s next to 40 slow clients"
    for trickler in tricklers:
        trickler.join(15)
    assert {(t.status, "header_timeout" in (t.error or "")) for t in slow_heads} == {(408, True)}
    assert {(t.status, "body_timeout" in (t.error or "")) for t in slow_bodies} == {(408, True)}
    assert max(t.seconds for t in slow_heads) < HEADER_TIMEOUT_S + 1.5
    assert max(t.seconds for t in slow_bodies) < BODY_TIMEOUT_S + 1.5
    assert redis_sync.keys("oa:event:*") == [b"oa:event:evt_slow_victim"]


def test_a_silent_connection_is_closed_after_the_header_timeout(slow_api: Api) -> None:
    """A client that connects and sends nothing is disconnected after OA_HEADER_TIMEOUT_S, without a reply."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow_api.port), timeout=10) as sock:
        assert sock.recv(100) == b""
    assert HEADER_TIMEOUT_S - 0.5 < time.monotonic() - started < HEADER_TIMEOUT_S + 1.5


def test_past_the_concurrency_limit_uvicorn_answers_503_in_plain_text(tmp_path: Path, redis_url: str) -> None:
    """Past OA_LIMIT_CONCURRENCY open connections a request gets uvicorn's plain 503; then service resumes."""
    service = _start(tmp_path, redis_url, OA_LIMIT_CONCURRENCY="4", OA_HEADER_TIMEOUT_S="1")
    url = f"http://127.0.0.1:{service.env['OA_PORT']}/healthz"
    try:
        idle = [socket.create_connection(("127.0.0.1", int(service.env["OA_PORT"]))) for _ in range(4)]
        time.sleep(0.2)
        refused = httpx.get(url, timeout=5)
        for sock in idle:
            sock.close()
        # Service resumes once uvicorn has seen the four connections close.
        wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, timeout_s=10, what="service again")
    finally:
        service.stop()
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("text/plain")


def test_a_second_request_head_on_a_kept_alive_connection_has_the_same_deadline(slow_api: Api) -> None:
    """After a normal exchange, a stalled second head on the same connection gets 408 header_timeout."""
    with socket.create_connection(("127.0.0.1", slow_api.port), timeout=10) as sock:
        sock.sendall(request_head([], method=b"GET", target=b"/healthz"))
        first = b""
        while parse_response(first) is None:
            first += sock.recv(65_536)
        time.sleep(0.5)  # idle, within the keep-alive timeout
        started = time.monotonic()
        sock.sendall(b"POST /webhooks/offerte-adviseur HTTP/1.1\r\nhost: x\r\n")
        second = b""
        while parse_response(second) is None:
            chunk = sock.recv(65_536)
            assert chunk, "closed without an answer"
            second += chunk
    elapsed = time.monotonic() - started
    assert parse_response(first) is not None
    parsed = parse_response(second)
    assert parsed is not None
    assert (parsed[0], b"header_timeout" in parsed[2]) == (408, True)
    assert HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 1.5


KEEPALIVE_S = 1.0


@pytest.fixture
def keepalive_api(tmp_path: Path, redis_url: str) -> Iterator[Api]:
    """An API with OA_KEEPALIVE_TIMEOUT_S=1 and head and body deadlines past it."""
    service = _start(
        tmp_path, redis_url, OA_KEEPALIVE_TIMEOUT_S="1", OA_HEADER_TIMEOUT_S="4", OA_BODY_TIMEOUT_S="4"
    )
    yield Api(int(service.env["OA_PORT"]), service)
    service.stop()


def _exchange(sock: socket.socket, request: bytes) -> int:
    """Send one request and read its whole answer; its status."""
    sock.sendall(request)
    parsed, _ = read_response(sock)
    assert parsed is not None, "closed without an answer"
    return parsed[0]


def _seconds_until_closed(sock: socket.socket) -> float:
    started = time.monotonic()
    assert sock.recv(100) == b""
    return time.monotonic() - started


HEALTHZ = request_head([], method=b"GET", target=b"/healthz")


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(keepalive_api: Api) -> None:
    """After its answer, a connection that sends nothing more is closed OA_KEEPALIVE_TIMEOUT_S later."""
    with socket.create_connection(("127.0.0.1", keepalive_api.port), timeout=10) as sock:
        assert _exchange(sock, HEALTHZ) == 200
        waited = _seconds_until_closed(sock)
    assert KEEPALIVE_S - 0.2 < waited < KEEPALIVE_S + 0.8


def test_each_answer_restarts_the_keepalive_clock(keepalive_api: Api) -> None:
    """Requests 0.4 s apart keep a connection open for 3 s; it closes a keep-alive timeout after the last."""
    with socket.create_connection(("127.0.0.1", keepalive_api.port), timeout=10) as sock:
        for _ in range(8):
            assert _exchange(sock, HEALTHZ) == 200
            time.sleep(0.4 * KEEPALIVE_S)
        waited = _seconds_until_closed(sock) + 0.4 * KEEPALIVE_S
    assert KEEPALIVE_S - 0.2 < waited < KEEPALIVE_S + 0.8


def test_a_request_under_way_outlives_the_keepalive_timeout(keepalive_api: Api) -> None:
    """A second head sent slowly, past the keep-alive timeout but within its own deadline, is answered."""
    with socket.create_connection(("127.0.0.1", keepalive_api.port), timeout=10) as sock:
        assert _exchange(sock, HEALTHZ) == 200
        time.sleep(0.5 * KEEPALIVE_S)
        sock.sendall(HEALTHZ[:10])
        time.sleep(1.5 * KEEPALIVE_S)
        assert _exchange(sock, HEALTHZ[10:]) == 200
