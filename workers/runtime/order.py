"""Per-key order of `ordered=True` handlers: the rules the claim script keeps, and how runs wake each other.

The guarantee, per (handler, key): the handler runs the key's events one at a time, in the order the
API accepted them (`seq`, numbered in the same atomic step as the ledger entry). How it holds:

1. **At ingest** each event gets `seq` and, when its payload names them, a place in
   `oa:idx:lead:<lead id>` / `oa:idx:invoice:<invoice id>` (sorted by `seq`; service/store/ledger.py).
2. **At claim** (workers/runtime/lua/claim-4.lua, one atomic script for the whole fleet, told the
   handlers by workers/runtime/protect.py) an ordered handler H of event E with key K may run only
   when every earlier event of K that H matches is finished for H: done, or dead with
   `on_dead="skip"`. A queued, running or retrying earlier event makes E *wait*: E is not claimed (so
   no attempt is used), and its job is deferred. E registers itself on the earlier event (`w:<H>`
   field), whose finish re-scores E's job to its place at the head of the queue
   (workers/runtime/lua/finish-12.lua). If E is claimed for another handler meanwhile, the finish of
   that run sees the wake (`woken`) and schedules E at once. The deferral (`WAIT_RECHECK_MS`) is
   only a fallback.
3. **A dead earlier event holds** the key (`on_dead="hold"`): E is *held*, listed in `oa:held` with
   the reason in its `held_by` field (service/store/held.py reads both), and looked at again every
   `HELD_RECHECK_MS` (workers/runtime/protect.py). A replay re-queues the dead event; its success
   wakes E.

What this covers: several workers (one script decides); a worker SIGKILLed mid-handler (the event
stays unfinished while arq's claim on it lasts, so later ones wait, then it runs again); retries
(a retrying event is unfinished); events whose index entry expired after `OA_RETENTION_DAYS`
(they no longer count: order holds within the retention). A purged dead event no longer holds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.store.ledger import payload_ids

if TYPE_CHECKING:
    from service.api.envelope import Envelope
    from workers.registry import Handler

log = logging.getLogger("oa.worker")
_noted: set[tuple[str, str]] = set()


def note_unordered(handlers: list[Handler], envelope: Envelope) -> None:
    """Log, once per handler and reason, that an event without its key runs unordered for a handler."""
    lead_id, invoice_id = payload_ids(envelope)
    ids = {"lead_id": lead_id, "invoice_id": invoice_id}
    for h in handlers:
        if h.order_key is None or ids[h.order_key]:
            continue
        present = h.order_key in envelope.payload
        reason = f"its {h.order_key} is not a plain id" if present else f"it has no {h.order_key}"
        if (h.name, reason) in _noted:
            continue
        _noted.add((h.name, reason))
        log.warning(
            "an event runs unordered for %s: %s (logged once per handler and reason)",
            h.name,
            reason,
            extra={"event_id": envelope.id, "type": envelope.type, "handler": h.name},
        )
