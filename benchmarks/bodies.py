"""Unique, correctly signed event bodies of about 400 bytes, shaped like the provider's real payloads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.api.signature import SIGNATURE_HEADER, sign
from service.ops.cli.sender import SAMPLES

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "whsec_bench_5f0c7e2a9b6d41c8a3e2"  # noqa: S105 - signs the bench's own test events
TARGET_BYTES = 400
_TYPES = sorted(SAMPLES)
LEAD_BASE = 100_000
INVOICE_BASE = 500_000
# What a real lead or invoice carries besides the documented sample fields (fictitious data).
_LEAD_EXTRA = {
    "name": "J. de Vries",
    "email": "j.devries@example.nl",
    "phone": "+31 6 12345678",
    "postal_code": "1234 AB",
    "city": "Utrecht",
    "comment": "",
}
_INVOICE_EXTRA = {"amount_cents": 4950, "currency": "EUR", "leads": 1, "comment": ""}


@dataclass(frozen=True, slots=True)
class Signed:
    """One request: the event id, its raw body and the signature header value."""

    event_id: str
    body: bytes
    signature: str

    def headers(self) -> dict[str, str]:
        """The headers the provider sends with it."""
        return {"content-type": "application/json", SIGNATURE_HEADER: self.signature}


def body(event_id: str, event_type: str, *, index: int = 0, lead_id: int | None = None) -> bytes:
    """A sample event of `event_type`, its comment padded so that the body is `TARGET_BYTES` long.

    The `index`-th event names lead `LEAD_BASE + index // 6` (each lead has one event of each of
    the six types, as one lead's story does) and invoice `INVOICE_BASE + index // 60` (one invoice
    per ten leads), so the ledger's lead and invoice indexes are as small as real ones.
    """
    extra = _LEAD_EXTRA if event_type.startswith("lead.") else _INVOICE_EXTRA
    payload: dict[str, Any] = {**SAMPLES[event_type], **extra}
    payload["lead_id"] = lead_of(index) if lead_id is None else lead_id
    if "invoice_id" in payload:
        payload["invoice_id"] = INVOICE_BASE + index // 60
    envelope = {"id": event_id, "type": event_type, "payload": payload}
    short = len(json.dumps(envelope).encode())
    payload["comment"] = "x" * max(0, TARGET_BYTES - short)
    return json.dumps(envelope).encode()


def lead_of(index: int) -> int:
    """The lead id the `index`-th body names."""
    return LEAD_BASE + index // len(_TYPES)


LEAD_STAGES = ("lead.created", "lead.sold", "lead.invoiced", "lead.paid")


def lead_stories(prefix: str, leads: int, *, secret: str = SECRET) -> Iterator[Signed]:
    """Each of `leads` leads goes through the four lead events, the leads in turn: first every
    lead's `lead.created`, then every `lead.sold`, and so on, as a live stream interleaves them."""
    key = secret.encode()
    for stage, event_type in enumerate(LEAD_STAGES):
        for lead in range(leads):
            event_id = f"{prefix}_{lead:06d}_{stage}"
            raw = body(event_id, event_type, lead_id=1_000_000 + lead)
            yield Signed(event_id, raw, sign(raw, key))


def signed(prefix: str, count: int, *, secret: str = SECRET) -> Iterator[Signed]:
    """`count` distinct events `<prefix>_0000000`, ...; the types take turns."""
    key = secret.encode()
    for index in range(count):
        event_id = f"{prefix}_{index:07d}"
        raw = body(event_id, _TYPES[index % len(_TYPES)], index=index)
        yield Signed(event_id, raw, sign(raw, key))
