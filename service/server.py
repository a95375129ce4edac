"""The HTTP server: uvicorn with h11, our limits, and malformed HTTP answered in JSON.

h11, not httptools: h11 caps the request line and headers, while httptools reads them without
a limit (a single 50 MB header grew the process from 34 to 132 MB). See README "Security".
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.app import create_app
from service.metrics import REQUESTS

if TYPE_CHECKING:
    import asyncio

    from service.settings import Settings

_log = logging.getLogger("oa.api")
_HEAD_END = re.compile(rb"\n\r?\n")


def serve(settings: Settings) -> None:
    """Run the API until SIGTERM/SIGINT, with the limits the settings give."""
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=type("Protocol", (JSONErrorsH11Protocol,), {"header_timeout_s": settings.header_timeout_s}),
        ws="none",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        access_log=settings.access_log,
        log_config=None,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keepalive_timeout_s,
        server_header=False,
    )


class JSONErrorsH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol, answering malformed HTTP in JSON and timing out a slow request head.

    - a request line and headers past `h11_max_incomplete_event_size`: 431 `headers_too_large`;
    - other malformed HTTP (bad Content-Length, both Content-Length and chunked, ...): 400
      `bad_http_request` (uvicorn itself would answer in plain text);
    - a request head that has not fully arrived `header_timeout_s` after the connection opened, or
      after its first byte on a kept-alive connection: 408 `header_timeout` if some of it came, else
      a plain close. Uvicorn has no such deadline: a client could hold a connection open forever.
    """

    header_timeout_s: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request head (idle kept-alive connections are uvicorn's)."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Refuse a request head past the limit; time each head from its first byte to its last."""
        if self.conn.their_state is h11.IDLE:
            if self._head_too_large(data):
                self._cancel_head_timer()
                self._send_json_error(431, "headers_too_large", self._head_limit_detail())
                return
            if self._head_timer is None:
                self._arm_head_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def send_400_response(self, msg: str) -> None:
        """Answer malformed HTTP with our JSON error shape, 431 when h11 found the head too large."""
        limit = self.config.h11_max_incomplete_event_size
        if limit is not None and len(self.conn.trailing_data[0]) > limit:
            self._send_json_error(431, "headers_too_large", self._head_limit_detail())
        else:
            self._send_json_error(400, "bad_http_request", msg)

    def _head_too_large(self, data: bytes) -> bool:
        # h11 measures only a head that is still incomplete after a read; this also measures one
        # that arrived whole, so the limit is exact. Cheap: at most `limit` bytes are looked at.
        limit = self.config.h11_max_incomplete_event_size
        if limit is None:
            return False
        window = self.conn.trailing_data[0] + data[: limit + 4]
        end = _HEAD_END.search(window)
        return end.end() > limit if end else len(window) > limit

    def _head_limit_detail(self) -> str:
        return (
            f"the request line and headers are larger than {self.config.h11_max_incomplete_event_size} bytes"
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            detail = f"the request headers did not arrive within {self.header_timeout_s:g} seconds"
            self._send_json_error(408, "header_timeout", detail)
        else:
            self.transport.close()

    def _send_json_error(self, status: int, code: str, detail: str) -> None:
        _log.info("request rejected", extra={"status": status, "reason": code})
        REQUESTS.labels(str(status)).inc()
        body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [b"content-type: application/json", b"content-length: %d" % len(body)]
        lines += [b"connection: close", b"", body]
        self.transport.write(b"\r\n".join(lines))
        self.transport.close()
