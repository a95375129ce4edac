"""An OTLP/HTTP trace receiver for tests: a real HTTP server that decodes what the SDK exports.

No collector, Jaeger or Tempo can run on these machines, so the tests run this instead: it accepts
`POST /v1/traces` (protobuf, gzip or not), decodes each `ExportTraceServiceRequest` with
opentelemetry-proto, and keeps every span with its service's name. It runs in a thread of the test
process; the API and worker processes export to it over loopback.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

KINDS = {value: name.removeprefix("SPAN_KIND_") for name, value in ProtoSpan.SpanKind.items()}
STATUSES = {value: name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class Received:
    """One span as exported: ids in hex, kind and status by name, times in ns."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]  # (trace id, span id)

    @property
    def duration_ms(self) -> float:
        """How long the span lasted."""
        return (self.end_ns - self.start_ns) / 1e6

    @classmethod
    def of(cls, service: str, span: ProtoSpan) -> Received:
        """From the protobuf message."""
        return cls(
            service=service,
            name=span.name,
            kind=KINDS[span.kind],
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            attributes=_attributes(span.attributes),
            status=STATUSES[span.status.code],
            status_message=span.status.message,
            events=[(event.name, _attributes(event.attributes)) for event in span.events],
            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        )


@dataclass
class OtlpReceiver:
    """The server and what it received (under `lock`): spans, and the number of export requests."""

    spans: list[Received] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """The base URL, for OTEL_EXPORTER_OTLP_ENDPOINT (the SDK adds /v1/traces)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OtlpReceiver:
        """Listen on a free loopback port, serving from a daemon thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                received = [
                    Received.of(_attributes(rs.resource.attributes).get("service.name", ""), span)
                    for rs in request.resource_spans
                    for ss in rs.scope_spans
                    for span in ss.spans
                ]
                with receiver.lock:
                    receiver.spans.extend(received)
                    receiver.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet: the spans are recorded instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def received(self) -> list[Received]:
        """Every span so far, in the order they arrived."""
        with self.lock:
            return list(self.spans)


def span_tree(spans: list[Received]) -> str:
    """The spans as an indented tree: name, kind, service, start (from the first span), duration, ids."""
    by_parent: dict[str, list[Received]] = {}
    ids = {s.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_ns):
        by_parent.setdefault(span.parent_span_id if span.parent_span_id in ids else "", []).append(span)
    first_ns = min((s.start_ns for s in spans), default=0)
    lines = [f"trace {trace_id}" for trace_id in sorted({s.trace_id for s in spans})]

    def walk(parent: str, depth: int) -> None:
        for span in by_parent.get(parent, []):
            pad = "  " * depth
            status = "" if span.status == "UNSET" else f", status {span.status}"
            at_ms = (span.start_ns - first_ns) / 1e6
            lines.append(
                f"{pad}{span.name}  {span.kind}  {span.service}  span {span.span_id}"
                f"  at +{at_ms:.1f} ms, {span.duration_ms:.1f} ms{status}"
            )
            lines.extend(f"{pad}    {key} = {value!r}" for key, value in sorted(span.attributes.items()))
            for name, attributes in span.events:
                shown = {k: v for k, v in attributes.items() if k != "exception.stacktrace"}
                lines.append(f"{pad}    event {name}: {shown}")
            lines.extend(f"{pad}    link -> span {span_id}" for _, span_id in span.links)
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
