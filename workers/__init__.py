"""The handler API: everything a handler module needs, from one import.

    from workers import Context, Event, on

    @on("lead.paid")
    async def book_payment(event: Event, ctx: Context) -> None:
        ...

Test a handler with `workers.testing` (`make_event`, `run_handler`): it runs the handler as the
worker would and says what the worker decides, with no Redis and no secret (docs/handlers.md).

The contract, in full:

- **Idempotent.** A handler may run more than once for one event (a worker killed mid-run,
  a timeout, a retry after a partial failure). Key every side effect on `event.id`, which is
  the same for every redelivery of the event.
- **Raise to retry.** Any exception means "try later": the handler runs again with
  exponential backoff and jitter (`OA_RETRY_INITIAL_S`, `OA_RETRY_MAX_DELAY_S`) until
  `max_tries` (`OA_MAX_TRIES`, or `on(..., max_tries=N)`), then it goes to dead letters,
  where `oa-webhooks dlq` can show and replay it. `on(..., retry_on=(SomeError,))` retries
  only those exception types; anything else goes to dead letters at once.
- **Raise `PermanentError` when retrying cannot help**: straight to dead letters.
- **"Not now" is honoured.** An `httpx.HTTPStatusError` for a 429 or 503 with `Retry-After`
  (`response.raise_for_status()`), or `raise RetryLater(after_s=...)`, makes the next try wait at
  least that long, past the backoff's cap too (bounded by `OA_RETRY_AFTER_MAX_S`). It still counts
  as a try.
- **What you call is protected.** `on(..., concurrency=N)` runs at most N at once and
  `on(..., rate="10/s")` (or `"N/m"`, `"N/h"`) starts at most N per window, across every worker.
  After `OA_BREAKER_FAILURES` failed runs in a row (across the fleet) the handler's breaker trips:
  its events wait, using no try, while one probe run every `OA_BREAKER_PROBE_S` tests the
  downstream; the first that succeeds closes it (`breaker=False` opts out). An operator can pause a
  handler (`oa-webhooks handlers pause NAME`). A waiting event uses no try, and its other
  handlers run.
- **Every accepted event reaches its handlers.** `event.payload` is the model of the event's
  type (`LeadPaid`, ...), whose fields are all optional: the provider documents none for
  invoices, and its lead examples disagree (`id` or `lead_id`). A payload that still does not
  fit (say `lead_id` is not a number) comes as the plain `Payload` with every field kept, and
  `event.mismatched_fields` names the fields that did not fit; the worker logs a warning with
  those names (never the values) and counts the event in `oa_webhooks_payload_mismatch_total`.
  So check `isinstance(event.payload, LeadPaid)` before you rely on a typed field.
- **Each handler stands alone.** Several handlers of one event run concurrently; one that fails
  does not stop the others, and a retry runs only the handlers that have not yet succeeded.
- **Bounded.** Each run is cut at `OA_JOB_TIMEOUT_S` and counts as a failed try.
- **No personal data in logs at INFO**: payloads hold names and addresses. `ctx.log` already
  carries the event id, type, handler and attempt.
- **No order, unless asked.** Events run in any order, and a retry reorders them. With
  `on(..., ordered=True)` a handler sees each lead's events (by the payload's `lead_id`;
  `order_key="invoice_id"` for invoices; no other key, since only these two are recorded when an
  event is accepted) **one at a time, in the order the API accepted them**: a later event waits
  while an earlier one of the same key is queued, running or waiting for a retry, across every
  worker and a worker killed mid-run; other keys are never held up. The limit: the order is the
  order of *acceptance*. The provider sends no sequence number, so two events it sends at once
  may arrive either way round. An earlier event that is dead holds the key until it is replayed
  (`on_dead="skip"` lets later events go on instead). An event without the key runs unordered
  for that handler (logged once). Order holds within `OA_RETENTION_DAYS`.
"""

from workers.context import Context, PermanentError, RetryLater
from workers.events import (
    Event,
    InvoiceCreated,
    InvoicePaid,
    InvoicePayload,
    LeadCreated,
    LeadInvoiced,
    LeadPaid,
    LeadPayload,
    LeadSold,
    Payload,
)
from workers.registry import on

__all__ = [
    "Context",
    "Event",
    "InvoiceCreated",
    "InvoicePaid",
    "InvoicePayload",
    "LeadCreated",
    "LeadInvoiced",
    "LeadPaid",
    "LeadPayload",
    "LeadSold",
    "Payload",
    "PermanentError",
    "RetryLater",
    "on",
]
