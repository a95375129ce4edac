"""What the event history returns: an event's state, its summary row, its whole record, a page.

Plain frozen dataclasses built from a ledger entry (service/store/ledger.py), with the JSON forms that
`events list --json` and `events show --json` print. The queries are in service/store/history.py.
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
class ErrorInfo:
    """An exception a handler raised."""

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> ErrorInfo | None:
        """From the stored form, or None."""
        if not raw:
            return None
        return cls(str(raw.get("type", "")), str(raw.get("message", "")), str(raw.get("traceback", "")))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of one handler: when it started, how long it took, and its error if it failed."""

    number: int
    started_ms: int
    duration_ms: float
    error: ErrorInfo | None

    @property
    def started_at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.started_ms) or ""


@dataclass(frozen=True, slots=True)
class Replay:
    """One replay of an event: when, and which handlers it reset (empty: every handler of its type)."""

    at_ms: int
    handlers: tuple[str, ...]
    restricted: bool

    @property
    def at(self) -> str:
        """ISO-8601 UTC."""
        return iso(self.at_ms) or ""

    def covers(self, handler: str) -> bool:
        """True when this replay ran (or reset) `handler`."""
        return not self.handlers or handler in self.handlers


@dataclass(frozen=True, slots=True)
class HandlerRecord:
    """One handler's story for one event.

    `attempts` counts every attempt since the last replay; `runs` has the last few
    (workers/runtime/journal.py RUNS_KEPT) across replays, oldest first.
    """

    name: str
    state: str
    attempts: int
    runs: tuple[Attempt, ...]
    next_ms: int | None
    finished_ms: int | None
    first_error: ErrorInfo | None
    last_error: ErrorInfo | None
    replays: tuple[Replay, ...]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """The whole ledger entry of one event (`events show`)."""

    summary: EventSummary
    body: bytes
    sha256: str
    secret_index: int | None
    queued_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    handlers: tuple[HandlerRecord, ...]
    replays: tuple[Replay, ...]

    @property
    def body_text(self) -> str:
        """The body pretty-printed when it is JSON, else as received."""
        text = self.body.decode(errors="replace")
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text

    def to_json(self) -> dict[str, Any]:
        """The `events show --json` object."""
        try:
            body: Any = json.loads(self.body)
        except ValueError:
            body = self.body.decode(errors="replace")
        return {
            **self.summary.to_json(),
            "body": body,
            "sha256": self.sha256,
            "secret_index": self.secret_index,
            "queued_at": iso(self.queued_ms),
            "started_at": iso(self.started_ms),
            "finished_at": iso(self.finished_ms),
            "handlers": [_handler_json(h) for h in self.handlers],
            "replays": [{"at": r.at, "handlers": list(r.handlers)} for r in self.replays],
        }


def _error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    return (
        None
        if error is None
        else {"type": error.type, "message": error.message, "traceback": error.traceback}
    )


def _handler_json(h: HandlerRecord) -> dict[str, Any]:
    return {
        "name": h.name,
        "state": h.state,
        "attempts": h.attempts,
        "runs": [
            {
                "attempt": a.number,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "error": _error_json(a.error),
            }
            for a in h.runs
        ],
        "next_at": iso(h.next_ms),
        "finished_at": iso(h.finished_ms),
        "first_error": _error_json(h.first_error),
        "last_error": _error_json(h.last_error),
        "replays": [r.at for r in h.replays],
    }


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


def _handlers_of(entry: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {k[2:]: json.loads(v) for k, v in entry.items() if k.startswith("h:")}


def _replays_of(entry: dict[str, str]) -> tuple[Replay, ...]:
    raw = json.loads(entry.get("replays") or "[]")
    return tuple(
        Replay(
            int(r.get("at", 0)),
            tuple(r.get("handlers") or ()),  # Lua's cjson writes an empty list as {}
            restricted=not r.get("default"),
        )
        for r in raw
    )


def summary_of(event_id: str, entry: dict[str, str], position: str = "") -> EventSummary:
    """The summary row of one event from its decoded ledger hash."""
    handlers = _handlers_of(entry)
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
        replays=len(_replays_of(entry)),
        held_by=entry.get("held_by"),
        position=position or f"{received_ms}-{seq}",
    )


def decode_entry(entry: dict[bytes, bytes]) -> dict[str, str]:
    """The text fields of a ledger hash, without the body."""
    return {k.decode(): v.decode(errors="replace") for k, v in entry.items() if k != b"body"}


def _attempts(state: dict[str, Any]) -> tuple[Attempt, ...]:
    stored = state.get("runs")
    runs: list[list[Any]] = stored if isinstance(stored, list) else []
    # Each run is [start ms, duration ms, attempt number] and, when it failed, the error.
    return tuple(
        Attempt(
            number=int(run[2]),
            started_ms=int(run[0]),
            duration_ms=float(run[1]),
            error=ErrorInfo.of(run[3] if len(run) > 3 else None),  # the error is the fourth item
        )
        for run in runs
    )


def record_of(event_id: str, raw: dict[bytes, bytes]) -> EventRecord:
    """The record of one event from its ledger hash (HGETALL), body included."""
    entry = decode_entry(raw)
    replays = _replays_of(entry)
    handlers = tuple(
        HandlerRecord(
            name=name,
            state=str(h.get("state", "")),
            attempts=int(h.get("attempts") or 0),
            runs=_attempts(h),
            next_ms=int(h["next_ms"]) if h.get("next_ms") and h.get("state") == "pending" else None,
            finished_ms=int(h["finished_ms"]) if h.get("finished_ms") else None,
            first_error=ErrorInfo.of(h.get("first_error")),
            last_error=ErrorInfo.of(h.get("last_error")),
            replays=tuple(r for r in replays if r.covers(name)),
        )
        for name, h in sorted(_handlers_of(entry).items())
    )
    summary = summary_of(event_id, entry)
    finished = entry.get("done_ms") or entry.get("dead_ms")
    return EventRecord(
        summary=summary,
        body=raw.get(b"body", b""),
        sha256=entry.get("sha256", ""),
        secret_index=int(entry["secret"]) if entry.get("secret", "").isdigit() else None,
        queued_ms=int(entry.get("queued_ms") or summary.received_ms),
        started_ms=int(entry["processing_ms"]) if entry.get("processing_ms") else None,
        finished_ms=int(finished) if finished else None,
        handlers=handlers,
        replays=replays,
    )
