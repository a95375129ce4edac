"""Odd but valid requests we accept on purpose (docs/security.md), and what the worker then parses.

We verify bytes, not content types: a correctly signed, valid JSON envelope is accepted whatever its
Content-Type says, and is never parsed as a form. Each accepted body must parse in the worker too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import pytest
from redis import Redis

from service.api.envelope import MAX_DEPTH, MAX_ID_CHARS, MAX_TYPE_CHARS, parse_envelope
from service.api.signature import SIGNATURE_HEADER, sign
from service.store.ledger import event_key
from tests.conftest import ENDPOINT, SECRET
from workers.events import build_event

CAP = 262_144


def _body(event_id: str, event_type: str = "lead.created", payload: object = None) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "payload": payload or {"lead_id": 1}}).encode()


def _at_cap(event_id: str) -> bytes:
    shell = _body(event_id, payload={"lead_id": 1, "notes": ""})
    return _body(event_id, payload={"lead_id": 1, "notes": "x" * (CAP - len(shell))})


@dataclass(frozen=True)
class Accepted:
    """A request we accept although it looks odd, and why."""

    name: str
    body: bytes
    content_type: bytes | None = b"application/json"
    signature: bytes | None = None  # None: the correct lowercase signature
    path: str = ENDPOINT
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _sig(body: bytes) -> bytes:
    return sign(body, SECRET.encode()).encode()


ACCEPTED = [
    Accepted("form-urlencoded-content-type", _body("a1"), b"application/x-www-form-urlencoded"),
    Accepted("multipart-content-type", _body("a2"), b"multipart/form-data; boundary=xyz"),
    Accepted("text-plain-content-type", _body("a3"), b"text/plain"),
    Accepted("no-content-type", _body("a4"), None),
    Accepted("uppercase-hex-signature", _body("a5"), signature=_sig(_body("a5")).upper()),
    Accepted("spaces-and-tab-around-signature", _body("a6"), signature=b" \t" + _sig(_body("a6")) + b"\t "),
    Accepted("empty-payload-object", b'{"id":"a7","type":"lead.archived","payload":{}}'),
    Accepted("unicode-id-and-type", _body("évt-ü-😀", "lead.créé")),
    Accepted("escaped-surrogate-pair", b'{"id":"a9","type":"t","payload":{"s":"\\ud83d\\ude00"}}'),
    Accepted("query-string", _body("a10"), path=ENDPOINT + "?source=test"),
    Accepted("id-and-type-at-their-limits", _body("i" * MAX_ID_CHARS, "t" * MAX_TYPE_CHARS)),
    Accepted(
        "nesting-at-the-limit",
        b'{"id":"a12","type":"t","payload":{"a":' + b"[" * (MAX_DEPTH - 2) + b"]" * (MAX_DEPTH - 2) + b"}}",
    ),
    Accepted("body-exactly-at-the-cap", _at_cap("a13")),
    Accepted("hundred-small-headers", _body("a14"), extra_headers=[(b"x-h%d" % i, b"v") for i in range(100)]),
]


@pytest.mark.parametrize("row", ACCEPTED, ids=[row.name for row in ACCEPTED])
async def test_odd_but_valid_request_is_accepted_and_parses_in_the_worker(
    row: Accepted, client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """The request gets 202, and the body the ledger stored parses in the worker to the same envelope."""
    headers = [(SIGNATURE_HEADER.encode(), row.signature or _sig(row.body)), *row.extra_headers]
    if row.content_type is not None:
        headers.append((b"content-type", row.content_type))
    response = await client.post(row.path, content=row.body, headers=headers)
    assert response.status_code == 202, response.text
    envelope = parse_envelope(row.body)
    assert response.json() == {"status": "accepted", "id": envelope.id}
    stored = redis_sync.hget(event_key(envelope.id), "body")
    assert stored == row.body
    assert parse_envelope(stored) == envelope
    # A payload that does not fit its type model still reaches handlers, as the plain Payload.
    event = build_event(envelope, received_ms=0)
    if event.mismatched_fields:
        assert event.payload.model_dump() == envelope.payload


def test_form_parsers_are_not_installed() -> None:
    """Nothing could parse a form body even by accident: python-multipart is not installed."""
    with pytest.raises(ImportError):
        __import__("multipart")
    with pytest.raises(ImportError):
        __import__("python_multipart")
