"""An OTLP/HTTP sink for `make bench`'s traced round (Ct, Dt): it answers every export and keeps nothing.

It runs in a thread of the harness and does as little as it can while the load runs: it reads each
request and answers 200 with an empty `ExportTraceServiceResponse` (zero bytes). It only keeps the
bodies' sizes and, for the count of spans the report prints (proof that tracing was on), the bodies of
the current phase, decoded with opentelemetry-proto after it (`spans`).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class OtlpSink:
    """Listen on loopback; `endpoint` for OTEL_EXPORTER_OTLP_ENDPOINT; `take()` what came since."""

    def __init__(self) -> None:
        self._bodies: list[bytes] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with sink._lock:
                    sink._bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """The base URL (the SDK adds /v1/traces)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def take(self) -> tuple[int, int, int]:
        """(export requests, bytes, spans) since the last call; the spans are counted now, not during load."""
        with self._lock:
            bodies, self._bodies = self._bodies, []
        return len(bodies), sum(len(b) for b in bodies), _spans(bodies)

    def spans(self) -> int:
        """The spans received since the last `take`, counted now."""
        with self._lock:
            bodies = list(self._bodies)
        return _spans(bodies)

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


def _spans(bodies: list[bytes]) -> int:
    return sum(
        len(scope.spans)
        for body in bodies
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
    )
