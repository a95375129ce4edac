"""What a query of the event history returns: an event's state, its summary row, a page, a timeline.

Plain frozen dataclasses built from a ledger entry (service/store/ledger.py), with the JSON forms that
`events list --json` prints, and the filters a query takes. The whole record of one event (`events
show`) is in service/store/records.py; the queries are in service/store/history.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

DEFAULT_LIMIT = 50
_TYPE_PATTERN = re.compile(r"\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?")
LEAD_STAGES = ("lead.created", "lead.sold", "lead.invoiced", "lead.paid")


class EventState(StrEnum):
    """Where an event stands, as `events list --state` names it."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    UNHANDLED = "unhandled"
    PURGED = "purged"  # a dead letter whose body was dropped; not a filter value


FILTER_STATES = tuple(s.value for s in EventState if s is not EventState.PURGED)
FINAL_STATES = frozenset({EventState.DONE, EventState.DEAD, EventState.UNHANDLED})
_STORED = {
    "queued": EventState.QUEUED,
    "processing": EventState.RUNNING,
    "retrying": EventState.RETRYING,
    "done": EventState.DONE,
    "dead": EventState.DEAD,
    "purged": EventState.PURGED,
}


def event_state(stored: str, *, unhandled: bool = False) -> EventState:
    """The state of an entry from its `state` field (and `unhandled` flag)."""
    state = _STORED.get(stored, EventState.QUEUED)
    return EventState.UNHANDLED if state is EventState.DONE and unhandled else state


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds, or None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def valid_type_pattern(pattern: str) -> bool:
    """True for a type (`lead.paid`), a wildcard (`lead.*`) or `*`, as `on()` takes them."""
    return _TYPE_PATTERN.fullmatch(pattern) is not None


def type_matches(patterns: tuple[str, ...], event_type: str) -> bool:
    """True when no pattern is given, or one is the type, its `prefix.*`, or `*`."""
    return not patterns or any(
        p in ("*", event_type) or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """What `list_events` selects; all given filters must hold. Times are ms since the epoch."""

    types: tuple[str, ...] = ()
    state: EventState | None = None
    lead: str | None = None
    invoice: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def __post_init__(self) -> None:
        """Refuse values no query could mean (the CLI says what is accepted before this)."""
        if self.limit < 1:
            raise ValueError("limit must be at least 1")
        if bad := [p for p in self.types if not valid_type_pattern(p)]:
            raise ValueError(f"not an event type or wildcard: {bad[0]!r}")
        if self.cursor is not None:
            parse_cursor(self.cursor)


def parse_cursor(cursor: str) -> tuple[int, int]:
    """A cursor is `<ms>-<seq>`, as a page's `next_cursor` gives it."""
    ms, dash, seq = cursor.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a cursor: {cursor!r} (use the one a page printed)")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class EventSummary:
    """One row of `events list`: an event and how each of its handlers stands."""

    id: str
    type: str
    state: EventState
    received_ms: int
    seq: int
    lead_id: str | None
    invoice_id: str | None
    attempts: int
    handlers: dict[str, str]
    replays: int
    # `<handler> <id of the event it waits for>` while an ordered handler holds this event behind a
    # dead one (service/store/held.py); None otherwise.
    held_by: str | None = None
    position: str = field(repr=False, default="")

    @property
    def held(self) -> dict[str, str] | None:
        """Which ordered handler holds this event, and behind which event; None when not held."""
        if not self.held_by:
            return None
        handler, _, behind = self.held_by.partition(" ")
        return {"handler": handler, "behind": behind}

    @property
    def received_at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.received_ms) or ""

    def to_json(self) -> dict[str, Any]:
        """The `events list --json` object."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "received_at": self.received_at,
            "lead_id": _json_id(self.lead_id),
            "invoice_id": _json_id(self.invoice_id),
            "attempts": self.attempts,
            "handlers": self.handlers,
            "replays": self.replays,
            "held": self.held,
        }


def _json_id(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


@dataclass(frozen=True, slots=True)
class Page:
    """One page of `list_events`; `next_cursor` is None on the last."""

    events: list[EventSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """Every event of one lead, oldest first, and its progress through `LEAD_STAGES`."""

    lead_id: str
    events: list[EventSummary]

    def stages(self) -> list[tuple[str, list[EventSummary]]]:
        """Each lead stage with its events ([] when it has not happened)."""
        return [(stage, [e for e in self.events if e.type == stage]) for stage in LEAD_STAGES]


def handlers_of(entry: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each handler's decoded record (`h:<name>` fields) of a decoded ledger entry, by name."""
    return {k[2:]: json.loads(v) for k, v in entry.items() if k.startswith("h:")}


def summary_of(event_id: str, entry: dict[str, str], position: str = "") -> EventSummary:
    """The summary row of one event from its decoded ledger hash."""
    handlers = handlers_of(entry)
    received_ms, seq = int(entry.get("received_ms") or 0), int(entry.get("seq") or 0)
    return EventSummary(
        id=event_id,
        type=entry.get("type", ""),
        state=event_state(entry.get("state", ""), unhandled=bool(entry.get("unhandled"))),
        received_ms=received_ms,
        seq=seq,
        lead_id=entry.get("lead_id"),
        invoice_id=entry.get("invoice_id"),
        attempts=sum(int(h.get("attempts") or 0) for h in handlers.values()),
        handlers={name: str(h.get("state", "")) for name, h in handlers.items()},
        replays=len(json.loads(entry.get("replays") or "[]")),
        held_by=entry.get("held_by"),
        position=position or f"{received_ms}-{seq}",
    )


def decode_entry(entry: dict[bytes, bytes]) -> dict[str, str]:
    """The text fields of a ledger hash, without the body."""
    return {k.decode(): v.decode(errors="replace") for k, v in entry.items() if k != b"body"}
