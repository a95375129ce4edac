"""Hostile requests against a real `oa-webhooks api` process, where the HTTP server itself decides.

Raw sockets send what httpx will not: huge or many headers, lying or malformed Content-Length,
broken chunking, stalled heads and bodies. Every answer is our JSON error shape, and Redis is
untouched. The helpers are in `tests/raw_http.py`, the `api` fixture in `conftest.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from redis import Redis

from service.settings import Settings
from tests.processes import rss_mb
from tests.raw_http import BODY, CL, SIG, SIGNATURE, Api, exchange, request_head, snapshot

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Raw:
    """One request as raw bytes, and the JSON error it must get."""

    name: str
    status: int
    error: str
    pieces: list[bytes]
    pause_s: float = 0.0
    closes: bool = True


def _head(*headers: bytes, target: bytes = b"/webhooks/offerte-adviseur") -> bytes:
    return request_head(list(headers), target=target)


_HUGE = _head(CL, SIG, b"x-big: " + b"a" * 20_000) + BODY
_TOO_LARGE = (431, "headers_too_large")
_BAD_HTTP = (400, "bad_http_request")
RAW_ROWS = [
    Raw("huge-header-in-one-read", *_TOO_LARGE, [_HUGE]),
    Raw(
        "huge-header-trickled", *_TOO_LARGE, [_HUGE[i : i + 2048] for i in range(0, len(_HUGE), 2048)], 0.005
    ),
    Raw("many-headers", *_TOO_LARGE, [_head(CL, SIG, *(b"x-h%d: v" % i for i in range(3000))) + BODY]),
    Raw(
        "huge-request-line",
        *_TOO_LARGE,
        [_head(CL, SIG, target=b"/webhooks/offerte-adviseur?" + b"q" * 20_000)],
    ),
    Raw("content-length-not-a-number", *_BAD_HTTP, [_head(b"content-length: ten", SIG) + BODY]),
    Raw("content-length-negative", *_BAD_HTTP, [_head(b"content-length: -1", SIG) + BODY]),
    Raw("content-length-twice-differing", *_BAD_HTTP, [_head(CL, b"content-length: 3", SIG) + BODY]),
    Raw("content-length-list", *_BAD_HTTP, [_head(b"content-length: 3, 4", SIG) + BODY]),
    Raw(
        "chunk-size-not-hex",
        *_BAD_HTTP,
        [_head(b"transfer-encoding: chunked", SIG) + b"zz\r\n" + BODY + b"\r\n"],
    ),
    Raw("transfer-encoding-gzip", *_BAD_HTTP, [_head(b"transfer-encoding: gzip", SIG) + BODY]),
    Raw("nul-in-header-value", *_BAD_HTTP, [_head(CL, SIG, b"x-a: a\x00b") + BODY]),
    Raw("space-before-colon", *_BAD_HTTP, [_head(CL, b"x-offerte-adviseur-signature : " + SIGNATURE) + BODY]),
    Raw("invalid-header-name", *_BAD_HTTP, [_head(CL, SIG, b"x(a): b") + BODY]),
    # RFC 9112 5.2: a server must refuse obsolete line folding with 400, or unfold it.
    Raw("obs-fold", *_BAD_HTTP, [_head(CL, b"x-offerte-adviseur-signature:\r\n " + SIGNATURE) + BODY]),
    Raw("garbage-request-line", *_BAD_HTTP, [b"\x01\x02 hello there\r\n\r\n"]),
    Raw(
        "tls-handshake-on-plain-http",
        *_BAD_HTTP,
        [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ),
    Raw("head-stalls", 408, "header_timeout", [b"POST /webhooks/offerte-adviseur HTTP/1.1\r\nhost: x\r\n"]),
    Raw("content-length-longer-than-body", 408, "body_timeout", [_head(b"content-length: 1000", SIG) + BODY]),
    # A whole request that the endpoint refuses leaves the connection usable: no close check. (The
    # bytes past a short Content-Length are read as the next request head, which times out.)
    Raw(
        "content-length-shorter-than-body",
        401,
        "signature_mismatch",
        [_head(b"content-length: 10", SIG) + BODY],
        closes=False,
    ),
    Raw(
        "signature-non-ascii",
        401,
        "signature_malformed",
        [_head(CL, b"x-offerte-adviseur-signature: " + b"\xe9" * 64) + BODY],
        closes=False,
    ),
    Raw(
        "signature-repeated",
        401,
        "signature_repeated",
        [_head(CL, SIG, b"x-offerte-adviseur-signature: " + b"0" * 64) + BODY],
        closes=False,
    ),
    Raw(
        "expect-continue-over-cap",
        413,
        "body_too_large",
        [_head(b"content-length: 100000000", b"expect: 100-continue", SIG)],
    ),
]


@pytest.mark.parametrize("row", RAW_ROWS, ids=[row.name for row in RAW_ROWS])
def test_http_level_hostile_request_gets_json_and_changes_nothing(
    row: Raw, api: Api, redis_sync: Redis
) -> None:
    """The real server answers with the status and JSON error, closes if it must, and stores nothing."""
    before = snapshot(redis_sync)
    reply = exchange(api.port, row.pieces, pause_s=row.pause_s, close_wait_s=3 if row.closes else 0)
    assert (reply.status, reply.json()["error"]) == (row.status, row.error), reply.body
    assert set(reply.json()) == {"error", "detail"}
    assert reply.headers[b"content-type"] == b"application/json"
    if row.closes:
        assert reply.closed, "the server should close a connection it cannot continue"
    assert snapshot(redis_sync) == before == (0, set())
    assert "Traceback" not in api.log()


def test_http_level_refusals_are_counted_in_metrics(api: Api) -> None:
    """Refusals made before the app runs (431, 400) still count in oa_webhooks_http_requests_total."""
    exchange(api.port, [_HUGE], close_wait_s=0)
    exchange(api.port, [b"\x01\x02 hello there\r\n\r\n"], close_wait_s=0)
    metrics = exchange(api.admin_port, [request_head([], method=b"GET", target=b"/metrics")], close_wait_s=0)
    assert b'oa_webhooks_http_requests_total{status="431"}' in metrics.body
    assert b'oa_webhooks_http_requests_total{status="400"}' in metrics.body


def _head_of_size(size: int) -> bytes:
    """A signed request head of exactly `size` bytes (request line, headers, blank line)."""
    bare = _head(CL, SIG, b"x-pad: ")
    return _head(CL, SIG, b"x-pad: " + b"p" * (size - len(bare)))


def test_head_size_limit_is_exact(api: Api, redis_sync: Redis) -> None:
    """A head of exactly OA_MAX_HEADER_BYTES is served; one byte more is 431 and stores nothing."""
    limit = Settings.model_fields["max_header_bytes"].default
    at_limit = exchange(api.port, [_head_of_size(limit) + BODY], close_wait_s=0)
    assert at_limit.status == 202, at_limit.body
    redis_sync.flushall()
    over = exchange(api.port, [_head_of_size(limit + 1) + BODY], close_wait_s=0)
    assert (over.status, over.json()["error"]) == _TOO_LARGE
    assert snapshot(redis_sync) == (0, set())


def test_a_50_mb_header_is_refused_without_buffering_it(api: Api) -> None:
    """A 50 MB header streamed at the server gets 431 while the API grows by under 10 MB."""
    assert api.service.process is not None
    pid = api.service.process.pid
    before = rss_mb(pid)
    megabyte = b"a" * 1_048_576
    reply = exchange(api.port, [_head(CL, SIG).removesuffix(b"\r\n\r\n") + b"\r\nx-big: ", *[megabyte] * 50])
    assert (reply.status, reply.json()["error"]) == _TOO_LARGE
    assert reply.closed
    assert rss_mb(pid) - before < 10
