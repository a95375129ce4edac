"""The worker's job function against a real Redis: handler matching, isolation, retries, dead letters."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from arq import Retry
from redis import Redis

from service.api.envelope import parse_envelope
from service.store.ledger import DEAD_KEY, PENDING_KEY, STATS_KEY, Ledger, event_key
from tests.conftest import envelope
from workers import Context, Event, LeadCreated, PermanentError, on
from workers.registry import handlers_for
from workers.runtime.job import process_event

pytestmark = pytest.mark.usefixtures("clean_registry")


async def _accept(ctx: dict[str, Any], body: bytes) -> None:
    ledger = Ledger(ctx["redis"], queue_expiry_ms=10_000, retention_s=3600)
    await ledger.accept(parse_envelope(body), body, secret_index=0, now_ms=time.time_ns() // 1_000_000)


def _handler_state(redis_sync: Redis, event_id: str, name: str) -> dict[str, Any]:
    raw = redis_sync.hget(event_key(event_id), f"h:{name}")
    assert raw is not None
    return dict(json.loads(raw))


def test_patterns_match_types_prefixes_and_everything() -> None:
    """`on` takes exact types, several types, `prefix.*` and `*`."""

    @on("lead.paid", "invoice.paid")
    async def paid(event: Event, ctx: Context) -> None: ...

    @on("lead.*")
    async def leads(event: Event, ctx: Context) -> None: ...

    @on("*")
    async def everything(event: Event, ctx: Context) -> None: ...

    def names(event_type: str) -> list[str]:
        return [h.func.__name__ for h in handlers_for(event_type)]

    assert names("lead.paid") == ["paid", "leads", "everything"]
    assert names("invoice.paid") == ["paid", "everything"]
    assert names("lead.created") == ["leads", "everything"]
    assert names("leads.x") == ["everything"]
    assert names("something.new") == ["everything"]


async def test_handler_gets_a_typed_payload_with_extra_fields(worker_ctx: dict[str, Any]) -> None:
    """`event.payload` is the model of its type, with the example's fields and unknown extras kept."""
    seen: list[Event] = []

    @on("lead.created")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    body = json.dumps(
        {
            "id": "evt_typed",
            "type": "lead.created",
            "payload": {
                "lead_id": 12345,
                "website_code": "1cd4",
                "subcategory_id": "1",
                "created_at": "2024-03-01T12:00:00Z",
                "name": "extra",
            },
        }
    ).encode()
    await _accept(worker_ctx, body)
    await process_event(worker_ctx, "evt_typed", "lead.created")
    payload = seen[0].payload
    assert isinstance(payload, LeadCreated)
    assert payload.lead_id == 12345
    assert payload.created_at is not None
    assert payload.created_at.year == 2024
    assert payload.model_extra == {"name": "extra"}


async def test_one_failing_handler_does_not_stop_its_siblings(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """Both handlers run; the failing one is retried alone, the other is not run again."""
    calls = {"good": 0, "flaky": 0}

    @on("lead.paid")
    async def good(event: Event, ctx: Context) -> None:
        calls["good"] += 1

    @on("lead.paid")
    async def flaky(event: Event, ctx: Context) -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("downstream hiccup")

    await _accept(worker_ctx, envelope("evt_sib", "lead.paid"))
    with pytest.raises(Retry):
        await process_event(worker_ctx, "evt_sib", "lead.paid")
    assert calls == {"good": 1, "flaky": 1}
    assert redis_sync.hget(event_key("evt_sib"), "state") == b"retrying"
    await process_event(worker_ctx, "evt_sib", "lead.paid")
    assert calls == {"good": 1, "flaky": 2}
    assert redis_sync.hget(event_key("evt_sib"), "state") == b"done"
    assert redis_sync.ttl(event_key("evt_sib")) > 29 * 86_400
    assert redis_sync.zscore(PENDING_KEY, "evt_sib") is None


async def test_event_without_handlers_is_counted_as_unhandled(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """No matching handler: the event is done, and counted as unhandled, without an error."""
    await _accept(worker_ctx, envelope("evt_none", "lead.reopened"))
    await process_event(worker_ctx, "evt_none", "lead.reopened")
    assert redis_sync.hget(event_key("evt_none"), "state") == b"done"
    assert redis_sync.hget(STATS_KEY, "unhandled_total") == b"1"


async def test_permanent_error_goes_straight_to_dead_letters(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """PermanentError skips the retries: one attempt, then dead with the error kept."""

    @on("invoice.paid")
    async def refuse(event: Event, ctx: Context) -> None:
        raise PermanentError("invoice unknown here")

    await _accept(worker_ctx, envelope("evt_perm", "invoice.paid", invoice_id=5))
    await process_event(worker_ctx, "evt_perm", "invoice.paid")
    state = _handler_state(redis_sync, "evt_perm", f"{__name__}.{refuse.__qualname__}")
    assert state["state"] == "dead"
    assert state["attempts"] == 1
    assert state["last_error"]["type"] == "workers.context.PermanentError"
    assert state["last_error"]["message"] == "invoice unknown here"
    assert redis_sync.zscore(DEAD_KEY, "evt_perm") is not None


async def test_retry_on_limits_which_errors_are_retried(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """With `retry_on=(ConnectionError,)`, a ValueError is not retried."""

    @on("lead.sold", retry_on=(ConnectionError,))
    async def strict(event: Event, ctx: Context) -> None:
        raise ValueError("bad data")

    await _accept(worker_ctx, envelope("evt_strict", "lead.sold"))
    await process_event(worker_ctx, "evt_strict", "lead.sold")
    assert redis_sync.hget(event_key("evt_strict"), "state") == b"dead"


async def test_always_failing_handler_dies_after_max_tries(
    worker_ctx: dict[str, Any], redis_sync: Redis
) -> None:
    """OA_MAX_TRIES=3: two retries, then dead; a per-handler max_tries overrides it."""
    calls = 0

    @on("lead.created", max_tries=2)
    async def broken(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    await _accept(worker_ctx, envelope("evt_max"))
    with pytest.raises(Retry):
        await process_event(worker_ctx, "evt_max", "lead.created")
    await process_event(worker_ctx, "evt_max", "lead.created")
    assert calls == 2
    assert redis_sync.hget(event_key("evt_max"), "state") == b"dead"
    await process_event(worker_ctx, "evt_max", "lead.created")
    assert calls == 2
