"""Parse a verified body into the event envelope `{"id", "type", "payload"}`.

The API and the worker both call `parse_envelope`, so whatever the API accepts the worker
can parse. It raises only `MalformedBody` subclasses, whatever the bytes:

- `InvalidJSON` (HTTP 400): not UTF-8, a BOM, not JSON, trailing data, duplicate keys,
  NaN/Infinity or a number too large for a double, an unpaired surrogate escape, nesting
  deeper than `MAX_DEPTH`, or an integer past Python's digit limit (I-JSON, RFC 7493);
- `InvalidEnvelope` (HTTP 422): JSON, but not an object with a valid `id`, `type` and `payload`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

MAX_ID_CHARS = 255
MAX_TYPE_CHARS = 100
# Far below Python's recursion limit, so a body the API accepts parses in any stack (the worker's).
MAX_DEPTH = 64
_BOM = b"\xef\xbb\xbf"
# A `\uD800`-`\uDFFF` escape; only bodies with one need the (slower) unpaired-surrogate check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class MalformedBody(Exception):
    """A signed body that we cannot accept; `code` is the stable error code, `status` the HTTP status."""

    code = "malformed_body"
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidJSON(MalformedBody):
    """The body is not a JSON text we accept."""

    code = "invalid_json"
    status = 400


class InvalidEnvelope(MalformedBody):
    """The body is JSON, but not a valid event envelope."""

    code = "invalid_envelope"
    status = 422


@dataclass(frozen=True, slots=True)
class Envelope:
    """The three fields every Offerte Adviseur event carries."""

    id: str
    type: str
    payload: dict[str, Any]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys let two parsers read one body two ways; refuse them outright.
    result = dict(pairs)
    if len(result) != len(pairs):
        duplicate = next(key for key, count in Counter(k for k, _ in pairs).items() if count > 1)
        raise InvalidJSON(f"duplicate key {duplicate[:40]!r} in a JSON object")
    return result


def _reject_constant(name: str) -> None:
    raise InvalidJSON(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"the number {text[:40]} is too large for a double")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant, parse_float=_finite_float
)


def _check_depth(document: Any) -> None:
    """Refuse nesting deeper than `MAX_DEPTH`, one level of containers at a time."""
    level = [document] if isinstance(document, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise InvalidJSON(f"JSON nested deeper than {MAX_DEPTH} levels")
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]


def parse_json(body: bytes) -> Any:
    """Decode strict JSON from bytes, raising only `InvalidJSON`."""
    if not body:
        raise InvalidJSON("the body is empty")
    if body.startswith(_BOM):
        raise InvalidJSON("the body starts with a UTF-8 byte order mark; send JSON without one")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        document = _DECODER.decode(text)
    except InvalidJSON:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        # Not a ValueError: without this clause, deep nesting would become a 500.
        raise InvalidJSON("JSON nested too deeply") from None
    except ValueError as exc:
        # For example an integer past Python's digit limit.
        raise InvalidJSON(f"not valid JSON: {str(exc)[:120]}") from None
    # Both checks are skipped, at C speed, for bodies that cannot fail them.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        _check_depth(document)
    if _SURROGATE_ESCAPE.search(body) and _SURROGATE.search(json.dumps(document, ensure_ascii=False)):
        raise InvalidJSON("a JSON string holds an unpaired surrogate escape")
    return document


def _check_text(value: object, name: str, max_chars: int) -> str:
    if value is None:
        raise InvalidEnvelope(f"'{name}' is missing or null")
    if not isinstance(value, str):
        raise InvalidEnvelope(f"'{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEnvelope(f"'{name}' must not be empty")
    if len(value) > max_chars:
        raise InvalidEnvelope(f"'{name}' is longer than {max_chars} characters")
    if not value.isprintable():
        raise InvalidEnvelope(f"'{name}' contains control or unprintable characters")
    return value


def parse_envelope(body: bytes) -> Envelope:
    """Parse and check the envelope, raising only `MalformedBody` subclasses."""
    document = parse_json(body)
    if not isinstance(document, dict):
        kind = "null" if document is None else type(document).__name__
        raise InvalidEnvelope(f"the body must be a JSON object, got {kind}")
    event_id = _check_text(document.get("id"), "id", MAX_ID_CHARS)
    event_type = _check_text(document.get("type"), "type", MAX_TYPE_CHARS)
    payload = document.get("payload")
    if payload is None:
        raise InvalidEnvelope("'payload' is missing or null")
    if not isinstance(payload, dict):
        raise InvalidEnvelope(f"'payload' must be an object, got {type(payload).__name__}")
    return Envelope(id=event_id, type=event_type, payload=payload)
