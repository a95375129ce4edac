"""The HTTP server: uvicorn with httptools, our head and body limits, and malformed HTTP answered in JSON.

httptools (llhttp) is the fast parser, about four times h11's request rate here, but uvicorn's
protocol for it reads a request head of any size and has no deadline for a head or a body. The
subclass below adds exactly those guards (see docs/security.md), and runs the webhook itself instead
of through ASGI (service/api/direct.py).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api import direct
from service.api.ingest import error_body
from service.ops.metrics import REQUESTS

if TYPE_CHECKING:
    from collections.abc import Callable

    from uvicorn._types import ASGI3Application
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

_log = logging.getLogger("oa.api")
# Bytes of a request head that the parser callbacks do not show: "<method> <url> HTTP/1.1\r\n", the
# ": " and "\r\n" of each header line, and the blank line that ends the head.
_REQUEST_LINE_EXTRA = len("  HTTP/1.1\r\n\r\n")
_HEADER_LINE_EXTRA = len(": \r\n")


class HeadTooLarge(Exception):
    """The request line and headers passed `max_head_bytes` (raised inside a parser callback)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a head size limit, head and body deadlines, and JSON errors.

    - a request line and headers past `max_head_bytes`: 431 `headers_too_large`. Counted from the
      parser's callbacks (exact but for optional whitespace), and, while a head is still arriving,
      from the bytes read, so a huge header is refused after at most one more read (64 KiB-256 KiB),
      never buffered whole;
    - a head not complete `header_timeout_s` after the connection opened, or after its first byte on
      a kept-alive connection: 408 `header_timeout` if some of it came, else a plain close;
    - a body not complete `body_timeout_s` after its head: 408 `body_timeout`;
    - other malformed HTTP: 400 `bad_http_request` (uvicorn would answer in plain text).

    A request that arrives in one read, the usual case, arms no timer at all.
    """

    max_head_bytes: ClassVar[int] = 16_384
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    _deadline: asyncio.TimerHandle | None = None
    _head_open = False  # a request began and its head is not complete yet
    _body_open = False  # a head is complete and its message is not
    _head_bytes = 0  # of the open head, as the callbacks report it
    _head_bytes_read = 0  # of the open head, counted per read that neither began nor ended it

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request head (idle kept-alive connections are uvicorn's)."""
        super().connection_made(transport)
        self._arm(self.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse, then refuse an oversized head, and arm a deadline only if a head or body is left open."""
        self._unset_keepalive_if_required()
        head_was_open = self._head_open
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # ws="none": the request is answered as plain HTTP
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(431, "headers_too_large", self._head_limit_detail())
            elif self._answering_earlier_request():
                # The bad bytes follow a whole request that the app is still answering: let that
                # answer go out, then close, as h11 would. A 400 now would overtake it.
                _log.info("request rejected", extra={"status": 400, "reason": "bad_http_request"})
                self.cycle.keep_alive = False
                self.flow.pause_reading()
            else:
                self._refuse(400, "bad_http_request", str(exc) or "invalid HTTP request")
            return
        if self._head_open:
            if head_was_open:
                self._head_bytes_read += len(data)
                if self._head_bytes_read > self.max_head_bytes:
                    self._refuse(431, "headers_too_large", self._head_limit_detail())
                    return
            if self._deadline is None:
                self._arm(self.header_timeout_s, self._head_timed_out)
        elif self._body_open and self._deadline is None:
            self._arm(self.body_timeout_s, self._body_timed_out)

    def send_400_response(self, msg: str) -> None:
        """Answer malformed HTTP with our JSON error shape."""
        self._refuse(400, "bad_http_request", msg)

    # Parser callbacks: count the head as it is parsed.
    def on_message_begin(self) -> None:
        """A new request: its head is open."""
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = _REQUEST_LINE_EXTRA
        self._head_bytes_read = 0

    def on_url(self, url: bytes) -> None:
        """Count the request target."""
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count one header line."""
        self._count_head(len(name) + len(value) + _HEADER_LINE_EXTRA)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is complete: stop its clock, count its method, start the request."""
        method = self.parser.get_method()
        self._count_head(len(method))
        self._head_open = False
        self._body_open = True
        self._disarm()
        super().on_headers_complete()
        # A HEAD answer has no body write to join its head to; the webhook's is written whole.
        if method != b"HEAD" and not direct.serves(self.app, self.scope):
            self.cycle.transport = _HeadJoinsBody(self.transport, self.cycle)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """The webhook's POST runs straight from here (service/api/direct.py); the rest as ASGI."""
        if not direct.serves(app, cycle.scope) or self.config.reset_contextvars:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(direct.run(cycle, app))  # type: ignore[arg-type]
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_message_complete(self) -> None:
        """The body is complete: stop its clock."""
        self._body_open = False
        self._disarm()
        super().on_message_complete()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge

    def _answering_earlier_request(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.more_body and not cycle.response_complete

    def _head_limit_detail(self) -> str:
        return f"the request line and headers are larger than {self.max_head_bytes} bytes"

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_open:
            detail = f"the request headers did not arrive within {self.header_timeout_s:g} seconds"
            self._refuse(408, "header_timeout", detail)
        elif not self._body_open and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # connected, and sent nothing at all

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._body_open:
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app has answered already; stop waiting for the rest
            return
        self._refuse(408, "body_timeout", f"the body did not arrive within {self.body_timeout_s:g} seconds")

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Write a JSON error and close: the rest of this connection's bytes cannot be trusted."""
        self._disarm()
        _log.info("request rejected", extra={"status": status, "reason": code})
        REQUESTS.labels(str(status)).inc()
        body = error_body(code, detail)
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [b"content-type: application/json", b"content-length: %d" % len(body)]
        lines += [b"connection: close", b"", body]
        self.transport.write(b"\r\n".join(lines))
        self.transport.close()


class _HeadJoinsBody(asyncio.Transport):
    """One request's view of the connection: its response head waits for the first body bytes.

    Uvicorn writes a response's head and body separately, and uvloop sends each write at once: two
    send() system calls per answer, a seventh of the API's time under load (py-spy). Joined, a
    small answer leaves in one. Only the cycle's own writes pass through here (`100 Continue` goes
    out at once: the response has not started then); a close sends what is held first.
    """

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._transport = transport
        self._cycle = cycle
        self._head_seen = False
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold the response head; send it with the next write."""
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._head_seen and self._cycle.response_started:
            self._head_seen = True
            self._held = bytes(data)
            return
        self._transport.write(data)

    def close(self) -> None:
        """Send what is held, then close the connection."""
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the connection is closing."""
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The connection's extra info."""
        return self._transport.get_extra_info(name, default)
