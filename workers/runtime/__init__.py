"""Our worker runtime, apart from the handler API (`workers/`) and your handlers (`workers/handlers/`).

`main` (the arq worker, `oa-webhooks worker`) -> `claim` (many due jobs per round trip, and what
may run now) -> `job` (`process_event`: run an event's due handlers) -> `journal` (the ledger's
worker side: begin and finish a run). `order` is per-lead ordering, `retry` the backoff schedule,
`reconciler` re-queues events whose job was lost; `lua/` holds their Redis scripts.
"""
