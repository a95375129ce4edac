"""Held events: events whose ordered handler waits behind a dead earlier event of the same key.

The worker's claim script (workers/runtime/lua/claim-2.lua) keeps `oa:held` (event id -> since when it is
held, ms) and, in the event's ledger hash, `held_by`: `<handler> <id of the event it waits for>`,
that event being dead or itself held. Both are refreshed whenever a worker looks at the event
again: when the event it waits for finishes, and at least once a minute. Reading them is O(1) per
event; counting them is one ZCARD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.store.ledger import event_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

HELD_KEY = "oa:held"


@dataclass(frozen=True, slots=True)
class Held:
    """Why one event is held: `handler` waits for event `behind`, which is dead or held itself."""

    since_ms: int
    handler: str
    behind: str

    def describe(self) -> str:
        """One line for `events list/show`."""
        return f"held: {self.handler} waits for {self.behind}, which is dead (replay it) or held"


async def held_events(redis: Redis, event_ids: list[str]) -> dict[str, Held]:
    """The held ones among `event_ids`, with why, in one round trip: for the held marker of event lists."""
    if not event_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.zscore(HELD_KEY, event_id)
            pipe.hget(event_key(event_id), "held_by")
        replies = await pipe.execute()
    held: dict[str, Held] = {}
    for index, event_id in enumerate(event_ids):
        since, reason = replies[2 * index], replies[2 * index + 1]
        if since is None:
            continue
        handler, _, behind = (reason or b"").decode().partition(" ")
        held[event_id] = Held(since_ms=int(since), handler=handler, behind=behind)
    return held


async def held_event(redis: Redis, event_id: str) -> Held | None:
    """Whether one event is held, and why (None when it is not): for `events show`."""
    return (await held_events(redis, [event_id])).get(event_id)
