"""The event handed to handlers, and a typed payload model for each documented event type.

Payload models keep unknown fields (`extra="allow"`): the provider's documentation elides
some, and its webhooks are in beta. An unknown event type gets a `Payload` with every field.

The models require no field: the provider documents none for invoices, and its two lead
examples disagree (`id` in one, `lead_id` in the other). A payload that still does not fit its
model (a field of the wrong type) is handed over as the plain `Payload`, every field kept, and
`Event.mismatched_fields` names the fields that did not fit.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from service.api.envelope import Envelope


class Payload(BaseModel):
    """Base of every payload model; extra fields are kept and reachable as attributes."""

    model_config = ConfigDict(extra="allow", frozen=True)


class LeadPayload(Payload):
    """Fields of a lead, as in the provider's `lead.created` examples (`id` is read as `lead_id`)."""

    lead_id: int | None = Field(default=None, validation_alias=AliasChoices("lead_id", "id"))
    website_code: str | None = None
    subcategory_id: str | int | None = None
    created_at: datetime | None = None


class LeadCreated(LeadPayload):
    """`lead.created`: a new lead was created."""


class LeadSold(LeadPayload):
    """`lead.sold`: a lead was marked as sold."""


class LeadInvoiced(LeadPayload):
    """`lead.invoiced`: an invoice was created for a lead."""


class LeadPaid(LeadPayload):
    """`lead.paid`: a lead's invoice was paid."""


class InvoicePayload(Payload):
    """Fields of an invoice, all optional: the provider documents none (`id` is read as `invoice_id`)."""

    invoice_id: int | None = Field(default=None, validation_alias=AliasChoices("invoice_id", "id"))
    lead_id: int | None = None
    created_at: datetime | None = None


class InvoiceCreated(InvoicePayload):
    """`invoice.created`: a new invoice was created."""


class InvoicePaid(InvoicePayload):
    """`invoice.paid`: an invoice was successfully paid."""


PAYLOAD_MODELS: dict[str, type[Payload]] = {
    "lead.created": LeadCreated,
    "lead.sold": LeadSold,
    "lead.invoiced": LeadInvoiced,
    "lead.paid": LeadPaid,
    "invoice.created": InvoiceCreated,
    "invoice.paid": InvoicePaid,
}
KNOWN_TYPES = frozenset(PAYLOAD_MODELS)

_NOW = "2024-03-01T12:00:00Z"
# A realistic payload per documented type: what `oa-webhooks send` posts and `workers.testing.make_event`
# starts from, shaped as the provider's examples.
SAMPLES: dict[str, dict[str, Any]] = {
    "lead.created": {
        "lead_id": 12345,
        "website_code": "1cd440df63f796a1f69da652cd0209",
        "subcategory_id": "1",
        "created_at": _NOW,
    },
    "lead.sold": {
        "lead_id": 12345,
        "website_code": "1cd440df63f796a1f69da652cd0209",
        "subcategory_id": "1",
        "created_at": _NOW,
    },
    "lead.invoiced": {"lead_id": 12345, "invoice_id": 987, "created_at": _NOW},
    "lead.paid": {"lead_id": 12345, "invoice_id": 987, "created_at": _NOW},
    "invoice.created": {"invoice_id": 987, "lead_id": 12345, "created_at": _NOW},
    "invoice.paid": {"invoice_id": 987, "lead_id": 12345, "created_at": _NOW},
}


def sample_payload(event_type: str) -> dict[str, Any]:
    """A copy of the sample payload of `event_type`; `{"id": 1}` for a type we do not know."""
    return dict(SAMPLES.get(event_type, {"id": 1}))


def sample_body(
    event_type: str, *, event_id: str | None = None, payload: dict[str, Any] | None = None
) -> bytes:
    """The JSON body of a sample event: `payload`, else the type's sample; a random id unless given."""
    chosen = payload if payload is not None else sample_payload(event_type)
    envelope = {"id": event_id or f"evt_{secrets.token_hex(8)}", "type": event_type, "payload": chosen}
    return json.dumps(envelope).encode()


@dataclass(frozen=True, slots=True)
class Event:
    """One verified Offerte Adviseur event. `id` is the same on every redelivery: key side effects on it.

    `payload` is the model of the event's type, or the plain `Payload` when it did not fit that
    model; then `mismatched_fields` names the fields that did not fit (otherwise it is empty).
    """

    id: str
    type: str
    payload: Payload
    received_at: datetime
    mismatched_fields: tuple[str, ...] = ()


def field_names(exc: ValidationError) -> tuple[str, ...]:
    """The top-level field names a validation error is about, never the values (they may be personal)."""
    return tuple(sorted({str(error["loc"][0]) if error["loc"] else "(payload)" for error in exc.errors()}))


def build_event(envelope: Envelope, *, received_ms: int) -> Event:
    """The event with its payload validated for its type, or as the plain `Payload` when it does not fit."""
    model = PAYLOAD_MODELS.get(envelope.type, Payload)
    received_at = datetime.fromtimestamp(received_ms / 1000, tz=UTC)
    try:
        payload = model.model_validate(envelope.payload)
    except ValidationError as exc:
        plain = Payload.model_validate(envelope.payload)
        return Event(envelope.id, envelope.type, plain, received_at, mismatched_fields=field_names(exc))
    return Event(id=envelope.id, type=envelope.type, payload=payload, received_at=received_at)
