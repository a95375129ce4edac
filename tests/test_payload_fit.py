"""Every accepted event reaches its handlers: no model requires an undocumented field; misfits come plain."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
from arq import Retry
from redis import Redis

from service.api.envelope import parse_envelope
from service.store.ledger import STATS_KEY, Ledger, event_key
from service.store.stats import read_snapshot
from tests.conftest import envelope
from workers import Context, Event, InvoiceCreated, InvoicePaid, LeadCreated, LeadPaid, Payload, on
from workers.runtime.job import process_event

pytestmark = pytest.mark.usefixtures("clean_registry")
EMAIL = "jan.jansen@example.nl"


async def _accept(ctx: dict[str, Any], body: bytes) -> None:
    ledger = Ledger(ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)


@pytest.mark.parametrize(
    ("event_type", "payload", "model"),
    [
        ("invoice.created", {}, InvoiceCreated),
        ("invoice.paid", {"amount": 10}, InvoicePaid),
        ("lead.created", {"id": 12345}, LeadCreated),  # the provider's first example
        ("lead.created", {"lead_id": 12345, "subcategory_id": "1"}, LeadCreated),  # its second
        ("lead.paid", {}, LeadPaid),
    ],
)
async def test_payloads_without_undocumented_fields_fit_their_model(
    worker_ctx: dict[str, Any], event_type: str, payload: dict[str, Any], model: type[Payload]
) -> None:
    """Invoices without invoice_id, and leads as either provider example shows them, reach handlers typed."""
    seen: list[Event] = []

    @on("*")
    async def everything(event: Event, ctx: Context) -> None:
        seen.append(event)

    await _accept(worker_ctx, envelope("evt_fit", event_type, **payload) if payload else _empty(event_type))
    await process_event(worker_ctx, "evt_fit", event_type)
    assert len(seen) == 1
    assert type(seen[0].payload) is model
    assert seen[0].mismatched_fields == ()


def _empty(event_type: str) -> bytes:
    return json.dumps({"id": "evt_fit", "type": event_type, "payload": {}}).encode()


async def test_a_misfit_payload_reaches_every_handler_plain_and_is_counted_once(
    worker_ctx: dict[str, Any],
    redis_sync: Redis,
    admin_client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A non-numeric lead_id: handlers get the plain Payload, the field is named, counted once, and shown."""
    seen: list[Event] = []
    runs = 0

    @on("lead.paid")
    async def typed(event: Event, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        seen.append(event)
        if runs == 1:
            raise RuntimeError("downstream busy")

    @on("*")
    async def everything(event: Event, ctx: Context) -> None:
        seen.append(event)

    await _accept(worker_ctx, envelope("evt_misfit", "lead.paid", lead_id="NL91ABNA0417164300", email=EMAIL))
    with caplog.at_level(logging.WARNING, logger="oa.worker"), pytest.raises(Retry):
        await process_event(worker_ctx, "evt_misfit", "lead.paid")
    await process_event(worker_ctx, "evt_misfit", "lead.paid")

    assert len(seen) == 3  # typed twice (one retry), everything once
    for event in seen:
        assert type(event.payload) is Payload
        assert event.payload.model_extra == {"lead_id": "NL91ABNA0417164300", "email": EMAIL}
        assert event.mismatched_fields == ("lead_id",)
    assert redis_sync.hget(event_key("evt_misfit"), "state") == b"done"
    assert redis_sync.hget(STATS_KEY, "payload_mismatch_total") == b"1"
    assert redis_sync.hget(STATS_KEY, "payload_mismatch:lead.paid") == b"1"
    warnings = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert warnings
    assert warnings[0].__dict__["fields"] == "lead_id"
    assert all("NL91" not in r.getMessage() and EMAIL not in r.getMessage() for r in caplog.records)

    metrics = (await admin_client.get("/metrics")).text
    assert 'oa_webhooks_payload_mismatch_total{type="lead.paid"} 1.0' in metrics
    snapshot = await read_snapshot(worker_ctx["redis"], heartbeat_interval_s=5)
    status = snapshot.as_json()
    assert status["payload_mismatch_total"] == 1
    assert status["per_type"]["payload_mismatch"] == {"lead.paid": 1}
