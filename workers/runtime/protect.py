"""Protection of what handlers call: fleet-wide limits, an operator's pause, a breaker per handler.

All of it is decided where ordering is, in the claim script (workers/runtime/lua/claim-4.lua), once
for the whole fleet, so no two workers can both take the last slot:

- **concurrency=N**: a run takes a slot (`oa:slots:<handler>`, scored by when it expires) and its
  finish gives it back; a killed worker's slot expires after the job timeout (`slot_ttl_ms`).
- **rate="N/s"**: a start is recorded (`oa:starts:<handler>`); past N within the window, the next
  start waits until the oldest leaves it (the waiting events spread over the window).
- **pause** (`oa-webhooks handlers pause`): nothing starts until it ends.
- **breaker**: `OA_BREAKER_FAILURES` failed runs in a row, across the fleet, trip it (finish-12.lua);
  then one run at most every `OA_BREAKER_PROBE_S` is let through as a probe. A probe that fails
  gives its try back (so an outage of any length makes no dead letter); one that succeeds closes
  the breaker and wakes every waiting event.

A handler held back *waits*: no try is used, its event's other handlers run, and the event is
listed in `oa:waiting:<handler>`, whose finish (a slot freed, a breaker closed) or `resume` wakes
it; a fallback look again (`*_RECHECK_MS`) covers a wake that found it busy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from service.store import queue
from service.store.handlers import slots_key, starts_key, waiting_key
from service.store.ledger import event_key, invoice_index_key, lead_index_key

if TYPE_CHECKING:
    from service.settings import Settings
    from workers.registry import Handler

log = logging.getLogger("oa.worker")
# Fallbacks only: what an event waits for wakes it (an earlier event's finish, a freed slot, resume).
WAIT_RECHECK_MS = 10_000
# A held event waits for a person to replay (or purge) the dead one; look again once a minute.
HELD_RECHECK_MS = 60_000
PAUSE_RECHECK_MS = 60_000
BUSY_RECHECK_MS = 10_000
_INDEX_PREFIX = {"lead_id": lead_index_key(""), "invoice_id": invoice_index_key("")}


def handler_spec(handler: Handler) -> dict[str, Any]:
    """What the fleet records of a handler (`oa:handlers`), for `oa-webhooks handlers`."""
    return {
        "patterns": list(handler.patterns),
        "concurrency": handler.concurrency,
        "rate": None if handler.rate is None else str(handler.rate),
        "breaker": handler.breaker,
        "ordered": handler.ordered,
    }


def claim_plan(handlers: list[Handler], *, job_ttl_ms: int, slot_ttl_ms: int, probe_ms: int) -> bytes:
    """The claim script's ARGV[5]: each handler's patterns, order, limits and breaker, and the fallbacks.

    `guarded` is False when no handler is ordered or limited: then, while nothing is paused or
    tripped, the script takes its plain path, which reads no event.
    """
    specs: list[dict[str, Any]] = []
    for h in handlers:
        spec: dict[str, Any] = {"n": h.name, "p": list(h.patterns), "b": h.breaker}
        if h.order_key is not None:
            spec |= {"k": h.order_key, "i": _INDEX_PREFIX[h.order_key], "skip": h.on_dead == "skip"}
        if h.concurrency is not None:
            spec["c"] = h.concurrency
        if h.rate is not None:
            spec["r"] = [h.rate.starts, h.rate.window_s * 1000]
        specs.append(spec)
    return orjson.dumps(
        {
            "guarded": any(h.ordered or h.concurrency or h.rate for h in handlers),
            "event": event_key(""),
            "job": queue.job_key(""),
            "slots": slots_key(""),
            "starts": starts_key(""),
            "waiting": waiting_key(""),
            "job_ttl_ms": job_ttl_ms,
            "slot_ttl_ms": slot_ttl_ms,
            "probe_ms": probe_ms,
            "wait_ms": WAIT_RECHECK_MS,
            "held_ms": HELD_RECHECK_MS,
            "pause_ms": PAUSE_RECHECK_MS,
            "busy_ms": BUSY_RECHECK_MS,
            "handlers": specs,
        }
    )


def plan_for(handlers: list[Handler], settings: Settings) -> bytes:
    """`claim_plan` with the settings' expiry, job timeout and probe interval."""
    return claim_plan(
        handlers,
        job_ttl_ms=settings.queue_expiry_ms,
        slot_ttl_ms=int(settings.arq_job_timeout_s * 1000),
        probe_ms=int(settings.breaker_probe_s * 1000),
    )


def log_breaker_changes(changes: list[str], settings: Settings) -> None:
    """One line per breaker change, written by the one worker whose run made it."""
    for change in changes:
        what, _, name = change.partition(" ")
        if what == "tripped":
            log.warning(
                "handler tripped after %d failures in a row: its events wait, one probe every %gs",
                settings.breaker_failures,
                settings.breaker_probe_s,
                extra={"handler": name, "outcome": "tripped"},
            )
        else:
            log.info(
                "handler breaker closed: its waiting events run", extra={"handler": name, "outcome": "closed"}
            )
