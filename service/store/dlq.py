"""Dead letters: events whose handlers used up their tries (or raised `PermanentError`).

A view over the event history (service/store/history.py): `dlq list` is `events list --state dead`
one row per dead handler, and `dlq replay` is the replay of `events replay` (service/store/replay.py).

A dead event keeps its ledger entry (body, and per handler: attempts, first and last error)
until a person replays or purges it. Replay re-queues the event for its dead handlers only,
past dedup. Purge drops the body and errors but keeps a tombstone (id and body hash) for the
retention period, so a redelivery of a purged id is still answered as a duplicate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from service.store.ledger import DEAD_KEY, event_key
from service.store.replay import Replayer, ReplayResult, ReplayStatus
from service.store.replicas import run_confirmed
from service.store.scripts import load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

_KEEP_ON_PURGE = ("sha256", "type", "received_ms", "secret")
_PURGE_DEAD = load_script("service.store", "purge-dead-2")


def _iso(ms: int | None) -> str | None:
    return (
        None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead handler of one event."""

    id: str
    type: str
    handler: str
    attempts: int
    first_error: dict[str, Any] | None
    last_error: dict[str, Any] | None
    dead_at: str | None
    received_at: str | None

    def summary(self) -> dict[str, Any]:
        """The `dlq list --json` row: the last error without its traceback."""
        last = dict(self.last_error or {})
        last.pop("traceback", None)
        return {
            "id": self.id,
            "type": self.type,
            "handler": self.handler,
            "attempts": self.attempts,
            "last_error": last,
            "dead_at": self.dead_at,
            "received_at": self.received_at,
        }


def _decode(entry: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in entry.items() if k != b"body"}


def dead_letters_of(event_id: str, entry: dict[str, str]) -> list[DeadLetter]:
    """The dead handlers recorded in one ledger entry."""
    letters = []
    for field, raw in entry.items():
        if not field.startswith("h:"):
            continue
        state = json.loads(raw)
        if state.get("state") != "dead":
            continue
        letters.append(
            DeadLetter(
                id=event_id,
                type=entry.get("type", ""),
                handler=field[2:],
                attempts=int(state.get("attempts", 0)),
                first_error=state.get("first_error"),
                last_error=state.get("last_error"),
                dead_at=_iso(state.get("finished_ms") or int(entry.get("dead_ms", 0)) or None),
                received_at=_iso(int(entry["received_ms"]) if "received_ms" in entry else None),
            )
        )
    return letters


class DeadLetters:
    """List, show, replay and purge dead letters."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_s: int,
        queue_expiry_ms: int,
        min_replicas: int = 0,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.queue_expiry_ms = queue_expiry_ms
        # `OA_REDIS_MIN_REPLICAS`: a replay or purge returns once that many replicas hold it.
        self.min_replicas = min_replicas
        self.timeout_s = timeout_s
        self._purge = redis.register_script(_PURGE_DEAD)

    async def ids(self, *, older_than_s: float | None = None) -> list[str]:
        """Dead event ids, oldest first; only those dead for longer than `older_than_s` if given."""
        upper: float | str = "+inf" if older_than_s is None else time.time() * 1000 - older_than_s * 1000
        return [raw.decode() for raw in await self.redis.zrangebyscore(DEAD_KEY, "-inf", upper)]

    async def letters(self, *, event_type: str | None = None) -> list[DeadLetter]:
        """Every dead handler of every dead event, oldest first, optionally of one type."""
        ids = await self.ids()
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hgetall(event_key(event_id))
            entries = await pipe.execute()
        letters = [
            letter
            for event_id, entry in zip(ids, entries, strict=True)
            for letter in dead_letters_of(event_id, _decode(entry))
        ]
        return [x for x in letters if event_type is None or x.type == event_type]

    async def show(self, event_id: str) -> dict[str, Any] | None:
        """The whole ledger entry of one event (body included), or None."""
        entry = await self.redis.hgetall(event_key(event_id))  # type: ignore[misc]
        if not entry:
            return None
        fields = _decode(entry)
        handlers = {k[2:]: json.loads(v) for k, v in fields.items() if k.startswith("h:")}
        body = entry.get(b"body", b"").decode(errors="replace")
        plain = {k: v for k, v in fields.items() if not k.startswith("h:")}
        return {"id": event_id, **plain, "body": body, "handlers": handlers}

    async def replay(self, event_id: str, *, now_ms: int) -> list[str]:
        """Re-queue a dead event for its dead handlers (past dedup); returns their names, [] if not dead."""
        result = await self.replay_result(event_id, now_ms=now_ms)
        return list(result.handlers) if result.status is ReplayStatus.REPLAYED else []

    async def replay_result(self, event_id: str, *, now_ms: int) -> ReplayResult:
        """`replay`, with the whole answer (`FINISHING`: dead, but a worker is still closing its run).

        The same replay as `events replay` (service/store/replay.py): one script, recorded on the event.
        """
        replayer = Replayer(
            self.redis,
            queue_expiry_ms=self.queue_expiry_ms,
            min_replicas=self.min_replicas,
            timeout_s=self.timeout_s,
        )
        return await replayer.replay(event_id, dead_only=True, now_ms=now_ms)

    async def purge(self, event_id: str) -> bool:
        """Drop a dead event's body and errors, keeping a dedup tombstone for the retention period.

        Atomic against a replay: False when the event is not dead (any more). With `min_replicas`, it
        returns once that many replicas hold the purge, and raises `NotReplicated` otherwise.
        """
        purged = await run_confirmed(
            self.redis,
            self._purge,
            keys=[event_key(event_id), DEAD_KEY],
            args=[event_id, self.retention_s, *_KEEP_ON_PURGE],
            replicas=self.min_replicas,
            timeout_s=self.timeout_s,
            what=f"purge of {event_id!r}",
        )
        return bool(purged)
