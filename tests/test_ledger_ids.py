"""The ingest step numbers events in acceptance order and indexes them by the lead and invoice they name."""

from __future__ import annotations

import httpx
import pytest
from redis import Redis

from service.api.envelope import Envelope
from service.store.ledger import (
    MINUTE_STATS_TTL_S,
    event_key,
    invoice_index_key,
    lead_index_key,
    minute_stats_key,
    payload_ids,
)
from tests.conftest import ENDPOINT, envelope, signed_headers


@pytest.mark.parametrize(
    ("event_type", "payload", "expected"),
    [
        ("lead.created", {"lead_id": 12345}, ("12345", "")),
        ("lead.created", {"id": 12345}, ("12345", "")),
        ("lead.paid", {"lead_id": 7, "invoice_id": 987}, ("7", "987")),
        ("invoice.paid", {"id": "inv-42", "lead_id": 7}, ("7", "inv-42")),
        ("invoice.created", {"invoice_id": 9, "id": 3}, ("", "9")),
        ("lead.sold", {"lead_id": True}, ("", "")),
        ("lead.sold", {"lead_id": "a b"}, ("", "")),
        ("lead.sold", {"lead_id": {"nested": 1}}, ("", "")),
        ("lead.sold", {"lead_id": "x" * 65}, ("", "")),
        ("other.thing", {"id": 5}, ("", "")),
    ],
)
def test_payload_ids_reads_both_documented_spellings_and_only_safe_values(
    event_type: str, payload: dict[str, object], expected: tuple[str, str]
) -> None:
    """`lead_id`/`invoice_id`, or `id` of the payload's own kind; booleans, objects, odd text are not ids."""
    assert payload_ids(Envelope(id="e", type=event_type, payload=payload)) == expected


async def test_accept_numbers_events_and_indexes_their_lead_and_invoice(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """Three accepted events get rising `seq` numbers; the lead and invoice indexes list them so."""
    bodies = [
        envelope("e1", "lead.created", id=55),
        envelope("e2", "lead.invoiced", lead_id=55, invoice_id=9),
        envelope("e3", "invoice.paid", invoice_id=9, lead_id=55),
    ]
    for body in bodies:
        assert (await client.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code == 202
    seqs = [int(redis_sync.hget(event_key(f"e{i}"), "seq")) for i in (1, 2, 3)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert redis_sync.zrange(lead_index_key("55"), 0, -1, withscores=True) == [
        (f"e{i}".encode(), float(seq)) for i, seq in zip((1, 2, 3), seqs, strict=True)
    ]
    assert redis_sync.zrange(invoice_index_key("9"), 0, -1) == [b"e2", b"e3"]
    assert redis_sync.hget(event_key("e1"), "lead_id") == b"55"
    assert redis_sync.hget(event_key("e1"), "invoice_id") is None
    assert 0 < redis_sync.ttl(lead_index_key("55")) <= 30 * 86_400


async def test_an_event_without_ids_writes_no_index(client: httpx.AsyncClient, redis_sync: Redis) -> None:
    """A payload that names no lead or invoice leaves no index key behind."""
    body = envelope("e_none", "invoice.created", amount_cents=10)
    assert (await client.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code == 202
    assert redis_sync.keys("oa:idx:lead:*") + redis_sync.keys("oa:idx:invoice:*") == []
    assert redis_sync.hget(event_key("e_none"), "seq") is not None


async def test_one_hset_keeps_every_field_and_the_minute_counter_keeps_its_ttl(
    client: httpx.AsyncClient, redis_sync: Redis
) -> None:
    """The accept script's single HSET stores every field; the minute's counter has a TTL after each event."""
    bodies = [
        envelope("m1", "lead.paid", lead_id=8, invoice_id=21),
        envelope("m2", "lead.created", lead_id=8),
    ]
    for body in bodies:
        assert (await client.post(ENDPOINT, content=body, headers=signed_headers(body))).status_code == 202
        minute = minute_stats_key(int(redis_sync.hget(event_key("m1"), "received_ms")))
        assert 0 < redis_sync.ttl(minute) <= MINUTE_STATS_TTL_S
    stored = redis_sync.hgetall(event_key("m1"))
    assert {k.decode() for k in stored} == {
        "body", "sha256", "received_ms", "secret", "type", "state", "seq", "lead_id", "invoice_id"
    }  # fmt: skip
    assert (stored[b"body"], stored[b"type"], stored[b"state"]) == (bodies[0], b"lead.paid", b"queued")
    assert (stored[b"lead_id"], stored[b"invoice_id"], stored[b"secret"]) == (b"8", b"21", b"0")
    assert int(redis_sync.hget(minute, "received")) == 2
