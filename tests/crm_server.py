"""A CRM on loopback for end-to-end tests: a real HTTP server that records every call and can misbehave.

It runs in a thread of the test process; the handlers, in real worker processes, call it over HTTP.
Each call is recorded with its path, event id, start and end time, how many calls were in
flight when it arrived, and the `traceparent` it carried. `mode` says how it answers: "ok" (200
after `delay_s`), "down" (503, no Retry-After), or "limited" (429 with `Retry-After: retry_after`);
`script[path]` (modes, one per call to that path) goes first while it lasts.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    """One request the CRM received."""

    path: str
    event_id: str
    started: float
    in_flight: int
    status: int = 0
    ended: float = 0.0
    traceparent: str = ""  # the W3C trace context the caller sent, if any (tests/test_tracing_e2e.py)


@dataclass
class Crm:
    """The server's state, shared with its request threads (under `lock`)."""

    mode: str = "ok"
    delay_s: float = 0.0
    retry_after: str = "1"
    script: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Crm:
        """Listen on a free loopback port, serving from a daemon thread."""
        crm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body: Any = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with crm.lock:
                    flying = crm._in_flight.get(self.path, 0) + 1
                    crm._in_flight[self.path] = flying
                    call = Call(self.path, str(body.get("id", "")), time.monotonic(), flying)
                    call.traceparent = self.headers.get("traceparent", "")
                    crm.calls.append(call)
                    planned = crm.script.get(self.path)
                    mode = planned.pop(0) if planned else crm.mode
                    delay_s, retry_after = crm.delay_s, crm.retry_after
                try:
                    time.sleep(delay_s)
                    status, headers = {
                        "ok": (200, {}),
                        "down": (503, {}),
                        "limited": (429, {"Retry-After": retry_after}),
                    }[mode]
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                finally:
                    with crm.lock:
                        crm._in_flight[self.path] -= 1
                        call.status, call.ended = status, time.monotonic()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet: the calls are recorded instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def set(self, mode: str, *, delay_s: float | None = None, retry_after: str | None = None) -> None:
        """Change how the next calls are answered."""
        with self.lock:
            self.mode = mode
            self.delay_s = self.delay_s if delay_s is None else delay_s
            self.retry_after = self.retry_after if retry_after is None else retry_after

    def on(self, path: str) -> list[Call]:
        """The calls to `path` so far, in order of arrival."""
        with self.lock:
            return [c for c in self.calls if c.path == path]
