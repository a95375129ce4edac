"""`POST /webhooks/offerte-adviseur`: the receiving pipeline, one named step each, in order.

1. `read_capped_body`  - the raw bytes, refused past `OA_MAX_BODY_BYTES` while reading (413);
2. `verify_signature`  - HMAC-SHA256 of those bytes against every configured secret (401);
3. `parse_body`        - strict JSON and the envelope, only after the signature holds (400/422);
4. `record`            - dedup, ledger and job in one atomic Redis step (200/409, 503);
5. `respond`           - 202 only once Redis has confirmed the write.

The endpoint runs ahead of FastAPI's middleware and routing, which cost more per request than all
five steps together (see docs/performance.md): our HTTP protocol runs it itself and writes its answer
in one go (service/api/direct.py); under another ASGI server, `service.api.app.ReceiverApp` calls it
as a plain ASGI function. The HTTP server bounds how long the head and the body may take
(service/api/server.py). With tracing on (service/tracing.py), the steps run in one SERVER span, whose
`traceparent` `record` stores with the event; off, they run exactly as without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from redis.exceptions import RedisError
from starlette.responses import Response

from service import logs
from service.api.envelope import Envelope, MalformedBody, parse_envelope
from service.api.signature import SIGNATURE_HEADER, SignatureFailure, Verified, verify
from service.ops.metrics import REQUESTS, SIGNATURE_FAILURES
from service.store.ledger import Accepted, Outcome
from service.tracing import WebhookSpan

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.trace import Tracer
    from starlette.types import Receive, Scope, Send

    from service.api.state import Runtime

PATH = "/webhooks/offerte-adviseur"
_SIGNATURE_HEADER = SIGNATURE_HEADER.encode()
log = logging.getLogger("oa.ingest")


class Rejected(Exception):
    """The request is refused; `status`, `code` and `detail` become the JSON error response."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


# A refusal while the body is still coming closes the connection, so the server stops reading it.
_CLOSE = {"Connection": "close"}


def _too_large(max_bytes: int) -> Rejected:
    return Rejected(413, "body_too_large", f"the body is larger than {max_bytes} bytes", headers=_CLOSE)


async def read_capped_body(scope: Scope, receive: Receive, *, max_bytes: int) -> bytes:
    """Read the raw body, stopping as soon as it passes `max_bytes` (declared or streamed)."""
    for name, declared in scope["headers"]:
        if name == b"content-length" and declared.isdigit() and int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Nobody will read this answer; it is for the log line.
            detail = "the client closed the connection mid-body"
            raise Rejected(400, "client_disconnected", detail, headers=_CLOSE)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        more_body = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_SIGNATURE_DETAILS = {
    SignatureFailure.MISSING: f"the {SIGNATURE_HEADER} header is missing or empty",
    SignatureFailure.MULTIPLE: f"the {SIGNATURE_HEADER} header was sent more than once",
    SignatureFailure.MALFORMED: f"the {SIGNATURE_HEADER} header is not 64 hex digits",
    SignatureFailure.MISMATCH: "the signature does not match the body for any configured secret",
}


def verify_signature(scope: Scope, body: bytes, *, secrets: tuple[bytes, ...]) -> Verified:
    """Check the signature header (raw bytes, as received) against the body."""
    given = [value for name, value in scope["headers"] if name == _SIGNATURE_HEADER]
    result = verify(body, given, secrets)
    if isinstance(result, SignatureFailure):
        SIGNATURE_FAILURES.labels(result.value).inc()
        raise Rejected(401, result.value, _SIGNATURE_DETAILS[result])
    return result


def parse_body(body: bytes) -> Envelope:
    """Strict JSON, then the envelope; only called on a verified body."""
    try:
        return parse_envelope(body)
    except MalformedBody as exc:
        raise Rejected(exc.status, exc.code, exc.detail) from None


async def record(
    runtime: Runtime, envelope: Envelope, body: bytes, verified: Verified, *, traceparent: str = ""
) -> Accepted:
    """Dedup, ledger entry and job in one atomic step, bounded by `OA_REDIS_TIMEOUT_S`.

    `traceparent` (tracing on) is the webhook span's, kept with the event for the worker's spans.
    """
    try:
        return await runtime.ledger.accept(
            envelope,
            body,
            secret_index=verified.secret_index,
            now_ms=time.time_ns() // 1_000_000,
            traceparent=traceparent,
        )
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "redis unavailable",
            extra={"event_id": envelope.id, "type": envelope.type, "error": type(exc).__name__},
        )
        retry_after = str(runtime.settings.retry_after_s)
        raise Rejected(
            503,
            "redis_unavailable",
            "the event could not be stored; retry later",
            headers={"Retry-After": retry_after},
        ) from None


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON answer: status, encoded body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


def _json(content: dict[str, str]) -> bytes:
    return orjson.dumps(content)


def error_body(code: str, detail: str) -> bytes:
    """The one shape of every error we send: `{"error": code, "detail": text}`."""
    return _json({"error": code, "detail": detail})


def respond(envelope: Envelope, accepted: Accepted) -> Reply:
    """202 for a new event, 200 for a redelivery, 409 for a reused id with another body."""
    fields = {"event_id": envelope.id, "type": envelope.type, "outcome": accepted.outcome.value}
    if accepted.outcome is Outcome.ACCEPTED:
        logs.info(log, "event received", fields)
        return Reply(202, _json({"status": "accepted", "id": envelope.id}))
    if accepted.outcome is Outcome.DUPLICATE:
        logs.info(log, "duplicate delivery", fields)
        return Reply(200, _json({"status": "duplicate", "id": envelope.id}))
    log.warning(
        "id reused with another body",
        extra={**fields, "sha256": accepted.sha256, "first_sha256": accepted.first_sha256},
    )
    detail = "this event id was already received with a different body; the first is kept"
    return Reply(409, error_body("id_conflict", detail))


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """`error_body` as a Starlette response, for the other routes and FastAPI's error handlers."""
    return Response(
        error_body(code, detail), status_code=status, headers=headers, media_type="application/json"
    )


_CONTENT_TYPE = (b"content-type", b"application/json")
# One child per status, looked up once: `labels()` on every request costs a lock and a dict lookup.
_ANSWERED: dict[int, Any] = {}


def count_answer(status: int) -> None:
    """Count one answer in `oa_webhooks_http_requests_total`."""
    counter = _ANSWERED.get(status)
    if counter is None:
        counter = _ANSWERED[status] = REQUESTS.labels(str(status))
    counter.inc()


async def send_reply(send: Send, reply: Reply) -> None:
    """Write the answer as ASGI messages, and count it."""
    headers = [_CONTENT_TYPE, (b"content-length", b"%d" % len(reply.body))]
    if reply.headers:
        headers += [(name.lower().encode(), value.encode()) for name, value in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
    count_answer(reply.status)


async def receive_webhook(
    runtime: Runtime,
    scope: Scope,
    receive: Receive,
    answer: Callable[[Reply], Awaitable[None]],
    *,
    tracer: Tracer | None = None,
) -> None:
    """The endpoint: run the steps in order and `answer` (a refusal as its JSON error); traced with `tracer`.

    `answer` is `send_reply` over ASGI, or, served straight from our HTTP protocol, one write of the
    whole response (service/api/direct.py).
    """
    if tracer is None:
        await answer(await _steps(runtime, scope, receive, None))
        return
    traced = WebhookSpan(tracer, scope, PATH)
    # Current while the steps run, so that their log lines carry its ids; it ends after the answer (a
    # bug's exception is recorded on it before `app.serve_webhook` answers 500).
    with trace.use_span(traced.span, end_on_exit=True):
        reply = await _steps(runtime, scope, receive, traced)
        await answer(reply)
        traced.answered(reply.status)


async def _steps(runtime: Runtime, scope: Scope, receive: Receive, traced: WebhookSpan | None) -> Reply:
    """The five steps, noting for the span (tracing on) the event and what became of it."""
    settings = runtime.settings
    try:
        body = await read_capped_body(scope, receive, max_bytes=settings.max_body_bytes)
        verified = verify_signature(scope, body, secrets=settings.secrets)
        envelope = parse_body(body)
        traceparent = "" if traced is None else traced.event(envelope.id, envelope.type)
        accepted = await record(runtime, envelope, body, verified, traceparent=traceparent)
    except Rejected as exc:
        logs.info(log, "request rejected", {"status": exc.status, "reason": exc.code})
        if traced is not None:
            traced.outcome(exc.code)
        return Reply(exc.status, error_body(exc.code, exc.detail), exc.headers)
    if traced is not None:
        traced.outcome(accepted.outcome.value)
    return respond(envelope, accepted)
