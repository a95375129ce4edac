"""Trim the history indexes to the retention, so that an index entry does not outlive its event.

This pass, in the worker's reconciler every `OA_RECONCILE_INTERVAL_S`, is the only trimming: ingest
does not trim (its `XADD ... MINID ~` dropped whole stream nodes unread, and with them the only record
of which lead and invoice sets their events were in). So the streams hold at most one interval of
entries past the retention (about 30 bytes each, in the time stream and a type stream).

- the stream entries received before `now - retention` go (`XTRIM MINID`), from `oa:idx:time` and
  from the stream of every type received so far (the `received:<type>` counters name them);
- those events also leave their lead and invoice indexes, unless the event is still in the ledger
  and not done: a dead letter stays until it is purged, and stays findable by lead and invoice
  (and by `--state dead`).

Never `SCAN`/`KEYS`: the keys come from the entries being trimmed (the time stream's entries carry
the lead and invoice ids, as the event may have expired already).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.store.history import known_types
from service.store.ledger import (
    TIME_INDEX_KEY,
    event_key,
    invoice_index_key,
    lead_index_key,
    type_index_key,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

_BATCH = 500


async def trim_indexes(redis: Redis, *, now_ms: int, retention_s: int) -> int:
    """Drop index entries older than the retention; returns how many events left the time index."""
    cutoff = now_ms - retention_s * 1000
    start, trimmed = "-", 0
    while True:
        entries = await redis.xrange(TIME_INDEX_KEY, start, f"({cutoff}", count=_BATCH)
        if not entries:
            break
        async with redis.pipeline(transaction=False) as pipe:
            for _, fields in entries:
                pipe.hget(event_key(fields[b"i"].decode()), "state")
            states = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for (_, fields), state in zip(entries, states, strict=True):
                if state not in (None, b"done", b"purged"):
                    continue  # still running, or a dead letter: it stays findable by lead and invoice
                event_id = fields[b"i"].decode()
                if fields.get(b"l"):
                    pipe.zrem(lead_index_key(fields[b"l"].decode()), event_id)
                if fields.get(b"n"):
                    pipe.zrem(invoice_index_key(fields[b"n"].decode()), event_id)
            await pipe.execute()
        trimmed += len(entries)
        start = "(" + entries[-1][0].decode()
    types = await known_types(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for key in [TIME_INDEX_KEY, *(type_index_key(t) for t in types)]:
            pipe.xtrim(key, minid=cutoff, approximate=False)
        await pipe.execute()
    return trimmed
