"""`POST /webhooks/offerte-adviseur`: the receiving pipeline, one named step each, in order.

1. `read_capped_body`  - the raw bytes, refused past `OA_MAX_BODY_BYTES` while reading (413)
                         or when they take longer than `OA_BODY_TIMEOUT_S` to arrive (408);
2. `verify_signature`  - HMAC-SHA256 of those bytes against every configured secret (401);
3. `parse_body`        - strict JSON and the envelope, only after the signature holds (400/422);
4. `record`            - dedup, ledger and job in one atomic Redis step (200/409, 503);
5. `respond`           - 202 only once Redis has confirmed the write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from service.envelope import Envelope, MalformedBody, parse_envelope
from service.ledger import Accepted, Outcome
from service.metrics import REQUESTS, SIGNATURE_FAILURES
from service.signature import SIGNATURE_HEADER, SignatureFailure, Verified, verify
from service.state import runtime_of

if TYPE_CHECKING:
    from starlette.requests import Request

    from service.state import Runtime

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


async def read_capped_body(request: Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """Read the raw body, stopping as soon as it passes `max_bytes` (declared or streamed) or `timeout_s`."""
    too_large = Rejected(413, "body_too_large", f"the body is larger than {max_bytes} bytes", headers=_CLOSE)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        detail = f"the body did not arrive within {timeout_s:g} seconds"
        raise Rejected(408, "body_timeout", detail, headers=_CLOSE) from None
    except ClientDisconnect:
        # Nobody will read this answer; it is for the log line.
        detail = "the client closed the connection mid-body"
        raise Rejected(400, "client_disconnected", detail, headers=_CLOSE) from None
    return b"".join(chunks)


_SIGNATURE_DETAILS = {
    SignatureFailure.MISSING: f"the {SIGNATURE_HEADER} header is missing or empty",
    SignatureFailure.MULTIPLE: f"the {SIGNATURE_HEADER} header was sent more than once",
    SignatureFailure.MALFORMED: f"the {SIGNATURE_HEADER} header is not 64 hex digits",
    SignatureFailure.MISMATCH: "the signature does not match the body for any configured secret",
}


def verify_signature(request: Request, body: bytes, *, secrets: tuple[bytes, ...]) -> Verified:
    """Check the signature header (raw bytes, as received) against the body."""
    given = [value for name, value in request.scope["headers"] if name == _SIGNATURE_HEADER]
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


async def record(runtime: Runtime, envelope: Envelope, body: bytes, verified: Verified) -> Accepted:
    """Dedup, ledger entry and job in one atomic step, bounded by `OA_REDIS_TIMEOUT_S`."""
    try:
        async with asyncio.timeout(runtime.settings.redis_timeout_s):
            return await runtime.ledger.accept(
                envelope, body, secret_index=verified.secret_index, now_ms=time.time_ns() // 1_000_000
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


def respond(envelope: Envelope, accepted: Accepted) -> JSONResponse:
    """202 for a new event, 200 for a redelivery, 409 for a reused id with another body."""
    fields = {"event_id": envelope.id, "type": envelope.type, "outcome": accepted.outcome.value}
    if accepted.outcome is Outcome.ACCEPTED:
        log.info("event received", extra=fields)
        return JSONResponse({"status": "accepted", "id": envelope.id}, status_code=202)
    if accepted.outcome is Outcome.DUPLICATE:
        log.info("duplicate delivery", extra=fields)
        return JSONResponse({"status": "duplicate", "id": envelope.id}, status_code=200)
    log.warning(
        "id reused with another body",
        extra={**fields, "sha256": accepted.sha256, "first_sha256": accepted.first_sha256},
    )
    return error_response(
        409, "id_conflict", "this event id was already received with a different body; the first is kept"
    )


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error we send: `{"error": code, "detail": text}`."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def receive_webhook(request: Request) -> JSONResponse:
    """The endpoint: run the steps in order and turn a refusal into its JSON error."""
    runtime = runtime_of(request)
    settings = runtime.settings
    try:
        body = await read_capped_body(
            request, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
        )
        verified = verify_signature(request, body, secrets=settings.secrets)
        envelope = parse_body(body)
        accepted = await record(runtime, envelope, body, verified)
    except Rejected as exc:
        log.info("request rejected", extra={"status": exc.status, "reason": exc.code})
        response = error_response(exc.status, exc.code, exc.detail, exc.headers)
    else:
        response = respond(envelope, accepted)
    REQUESTS.labels(str(response.status_code)).inc()
    return response
