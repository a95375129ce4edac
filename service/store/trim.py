"""Trim the history indexes to the retention, so that an index entry does not outlive its event.

This pass, in the worker's reconciler every `OA_RECONCILE_INTERVAL_S`, is the only trimming: ingest
does not trim (its `XADD ... MINID ~` dropped whole stream nodes unread, and with them the only record
of which lead and invoice sets their events were in). So the streams hold at most one interval of
entries past the retention (about 30 bytes each, in the time stream and a type stream).

- the stream entries received before `now - retention` go (`XTRIM MINID`), from `oa:idx:time` and
  from the stream of every type received so far (the `received:<type>` counters name them);
- those events also leave their lead and invoice indexes, unless the event is still in the ledger
  and not finished: a dead letter stays findable by lead and invoice (and by `--state dead`) until
  it is purged or replayed, and an event still retrying stays until it is done. Such an event goes
  into `oa:idx:unfinished` (id -> its lead and invoice ids) as its stream entry is trimmed, and each
  pass looks at those again: once one is finished, it leaves its sets too. So every expired event
  leaves its lead and invoice sets, and `oa:idx:unfinished` holds only events still in the ledger.

Never `SCAN`/`KEYS`: the keys come from the entries being trimmed (the time stream's entries carry
the lead and invoice ids, as the event may have expired already) and from `oa:idx:unfinished`.
"""

from __future__ import annotations

import json
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
# Past the retention, not finished when its stream entry was trimmed: event id -> [lead, invoice].
UNFINISHED_KEY = "oa:idx:unfinished"
_FINISHED = (None, b"done", b"purged")  # None: expired from the ledger
_Row = tuple[str, str, str]  # event id, lead id, invoice id ('' for none)


async def trim_indexes(redis: Redis, *, now_ms: int, retention_s: int) -> int:
    """Drop index entries older than the retention; returns how many events left the time index."""
    cutoff = now_ms - retention_s * 1000
    await _recheck_unfinished(redis)
    start, trimmed = "-", 0
    while True:
        entries = await redis.xrange(TIME_INDEX_KEY, start, f"({cutoff}", count=_BATCH)
        if not entries:
            break
        rows = [
            (fields[b"i"].decode(), fields.get(b"l", b"").decode(), fields.get(b"n", b"").decode())
            for _, fields in entries
        ]
        await _leave_sets(redis, rows, rechecked=False)
        trimmed += len(entries)
        start = "(" + entries[-1][0].decode()
    types = await known_types(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for key in [TIME_INDEX_KEY, *(type_index_key(t) for t in types)]:
            pipe.xtrim(key, minid=cutoff, approximate=False)
        await pipe.execute()
    return trimmed


async def _recheck_unfinished(redis: Redis) -> None:
    """The events noted in `UNFINISHED_KEY` by earlier passes leave their sets once they are finished."""
    rows: list[_Row] = []
    async for field, value in redis.hscan_iter(UNFINISHED_KEY, count=_BATCH):
        lead, invoice = json.loads(value)
        rows.append((field.decode(), lead, invoice))
        if len(rows) == _BATCH:
            await _leave_sets(redis, rows, rechecked=True)
            rows = []
    if rows:
        await _leave_sets(redis, rows, rechecked=True)


async def _leave_sets(redis: Redis, rows: list[_Row], *, rechecked: bool) -> None:
    """Finished (or expired) events leave their lead and invoice sets; the others are (still) noted."""
    async with redis.pipeline(transaction=False) as pipe:
        for event_id, _, _ in rows:
            pipe.hget(event_key(event_id), "state")
        states = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for (event_id, lead, invoice), state in zip(rows, states, strict=True):
            if state not in _FINISHED:
                # Running, retrying or a dead letter: it stays findable by lead and invoice.
                if not rechecked and (lead or invoice):
                    pipe.hset(UNFINISHED_KEY, event_id, json.dumps([lead, invoice]))
                continue
            if lead:
                pipe.zrem(lead_index_key(lead), event_id)
            if invoice:
                pipe.zrem(invoice_index_key(invoice), event_id)
            if rechecked:
                pipe.hdel(UNFINISHED_KEY, event_id)
        await pipe.execute()
