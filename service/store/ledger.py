"""The event ledger: one Redis hash per event id, written in the same atomic step as its job.

Keys (all prefixed `oa:`):

- `oa:event:<id>`: hash with `body`, `sha256`, `type`, `received_ms`, `secret` (index of the
  matching secret), `state` (`queued` -> `processing` -> `done` | `dead`, `retrying` between tries;
  a `done` event that no handler matched also has `unhandled`) and one `h:<handler>` JSON field
  per handler; `traceparent`, the webhook span's, while tracing is on (service/tracing.py). `done`
  entries expire after the retention; `dead` ones stay.
- `oa:pending`: sorted set of ids not yet `done` or `dead` (score: receive time, ms).
- `oa:dead`: sorted set of dead-lettered ids (score: when they died, ms).
- `oa:stats` and `oa:stats:m:<minute>`: counters for `status` and `/metrics`.
- `oa:seq`: the acceptance counter; each entry keeps its number as `seq`, the order in which
  the API accepted events, whichever process or clock received them.
- `oa:idx:lead:<lead id>` and `oa:idx:invoice:<invoice id>`: sorted sets of event ids by `seq`,
  for the events whose payload names that lead or invoice (`lead_id` / `invoice_id` fields of
  the entry). They expire with the retention of their newest event.
- `oa:idx:time` and `oa:idx:type:<type>`: streams of event ids (field `i`) with IDs
  `<received ms>-<seq>`, for the event history (service/store/history.py). A stream entry takes about
  30 bytes where a sorted-set member takes over 100; trimmed to the retention by the reconciler
  (service/store/trim.py), which first takes the expired events out of their lead and invoice sets.
- `oa:idx:unfinished`: hash of the events past the retention that were not finished when their
  stream entries went (dead letters, long retries), id -> their lead and invoice ids, until they are.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from service.store import queue
from service.store.batching import JoinedScriptBatcher, ScriptBatcher
from service.store.scripts import load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.api.envelope import Envelope

PENDING_KEY = "oa:pending"
DEAD_KEY = "oa:dead"
STATS_KEY = "oa:stats"
SEQUENCE_KEY = "oa:seq"
TIME_INDEX_KEY = "oa:idx:time"
# Ids we index: a number, or a short token of safe characters (never a key pattern or whitespace).
_INDEXABLE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# An hour and five minutes: the console charts the last hour; at most 5 small fields per minute, so
# 65 hashes of well under 1 KB each.
MINUTE_STATS_TTL_S = 3900


def event_key(event_id: str) -> str:
    """The ledger hash of one event."""
    return f"oa:event:{event_id}"


def lead_index_key(lead_id: str) -> str:
    """Event ids of one lead, by acceptance order."""
    return f"oa:idx:lead:{lead_id}"


def invoice_index_key(invoice_id: str) -> str:
    """Event ids of one invoice, by acceptance order."""
    return f"oa:idx:invoice:{invoice_id}"


def type_index_key(event_type: str) -> str:
    """Event ids of one type, by receipt (a stream, like `TIME_INDEX_KEY`)."""
    return f"oa:idx:type:{event_type}"


def _indexable(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _INDEXABLE_ID.fullmatch(value):
        return value
    return ""


def payload_ids(envelope: Envelope) -> tuple[str, str]:
    """The lead id and invoice id the payload names ('' for none), as the ledger indexes them.

    `lead_id` / `invoice_id`, or `id` in a payload of that kind: the provider's own examples use
    both (`{"id": 12345}` and `{"lead_id": 12345}` for a lead).
    """
    payload, kind = envelope.payload, envelope.type.partition(".")[0]
    lead = payload.get("lead_id", payload.get("id") if kind == "lead" else None)
    invoice = payload.get("invoice_id", payload.get("id") if kind == "invoice" else None)
    return _indexable(lead), _indexable(invoice)


def minute_stats_key(now_ms: int) -> str:
    """Counters for the minute that `now_ms` falls in; they expire after `MINUTE_STATS_TTL_S`."""
    return f"oa:stats:m:{now_ms // 60_000}"


class Outcome(StrEnum):
    """What `accept` did with a verified, parsed event."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


# The accept script's first reply, looked up (an Enum call parses its value on every request).
_OUTCOMES = {outcome.value.encode(): outcome for outcome in Outcome}


@dataclass(frozen=True, slots=True)
class Accepted:
    """The result of `Ledger.accept`; `first_sha256` is the body hash the ledger holds for this id."""

    outcome: Outcome
    sha256: str
    first_sha256: str


# An accept batch closes as soon as it holds this many calls, not only at the end of the loop's
# turn; pipelined (service/store/pipeline.py), it is written at once: Redis, on another core, then
# runs the first scripts (and fsyncs them) while the API parses the next requests. Interleaved runs,
# 64 connections: 8,900 -> 9,800 req/s with 16, about the same with 12; 8 cost more CPU per request
# than it saved.
ACCEPT_BATCH = 16


class Ledger:
    """Atomic writes to the ledger and the queue. Construct once per process, in lifespan/startup."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_expiry_ms: int,
        retention_s: int,
        timeout_s: float | None = None,
        min_replicas: int = 0,
        pipelined: bool = False,
    ) -> None:
        self.redis = redis
        self.queue_expiry_ms = queue_expiry_ms
        self.retention_s = retention_s
        # Concurrent requests' accepts share round trips (see service/store/batching.py); past
        # `timeout_s` a batch fails with TimeoutError, and with `min_replicas`, it fails with
        # NotReplicated unless that many replicas confirmed it (`OA_REDIS_MIN_REPLICAS`).
        # A whole accept batch is one call of the accept script, which writes its counters once.
        # `pipelined` (the API's ledger, on a client without read timeouts): the batches share one
        # connection; call `aclose` before closing `redis`.
        self._accept = JoinedScriptBatcher(
            redis,
            load_script("service.store", "accept-11"),
            reply_size=2,
            max_batch=ACCEPT_BATCH,
            timeout_s=timeout_s,
            replicas=min_replicas,
            pipelined=pipelined,
        )
        self._requeue_if_lost = ScriptBatcher(
            redis, load_script("service.store", "requeue-if-lost-5"), timeout_s=timeout_s
        )

    async def aclose(self) -> None:
        """Give back the accept pipeline's connection (`pipelined`); call before closing `redis`."""
        await self._accept.aclose()

    async def accept(
        self, envelope: Envelope, body: bytes, *, secret_index: int, now_ms: int, traceparent: str = ""
    ) -> Accepted:
        """Record and enqueue a new event in one round trip, or say it is a duplicate or a conflict.

        A `traceparent` is stored with a new event, for the worker's spans; '' stores nothing.
        """
        sha256 = hashlib.sha256(body).hexdigest()
        job = queue.encode_job(envelope.id, envelope.type, enqueue_ms=now_ms)
        lead_id, invoice_id = payload_ids(envelope)
        reply = await self._accept(
            [
                event_key(envelope.id),
                queue.job_key(envelope.id),
                queue.QUEUE_NAME,
                PENDING_KEY,
                STATS_KEY,
                minute_stats_key(now_ms),
                SEQUENCE_KEY,
                lead_index_key(lead_id),
                invoice_index_key(invoice_id),
                TIME_INDEX_KEY,
                type_index_key(envelope.type),
            ],
            [
                envelope.id,
                body,
                sha256,
                now_ms,
                secret_index,
                envelope.type,
                job,
                self.queue_expiry_ms,
                MINUTE_STATS_TTL_S,
                lead_id,
                invoice_id,
                self.retention_s,
                traceparent,
            ],
        )
        return Accepted(_OUTCOMES[reply[0]], sha256, reply[1].decode())

    async def requeue_if_lost(self, event_id: str, event_type: str, *, now_ms: int) -> str:
        """Give an unfinished event a new arq job if its job is gone; returns what was found."""
        reply = await self._requeue_if_lost(
            [
                event_key(event_id),
                queue.job_key(event_id),
                queue.in_progress_key(event_id),
                queue.QUEUE_NAME,
                PENDING_KEY,
            ],
            [
                event_id,
                now_ms,
                queue.encode_job(event_id, event_type, enqueue_ms=now_ms),
                self.queue_expiry_ms,
            ],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)
