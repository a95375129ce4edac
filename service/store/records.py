"""The whole record of one event (`events show`): each handler's story, its attempts, errors and replays.

Plain frozen dataclasses built from a ledger entry (service/store/ledger.py), with the JSON form that
`events show --json` prints. The summary rows of `events list` are in service/store/summary.py; the
queries are in service/store/history.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from service.store.summary import EventSummary, decode_entry, handlers_of, iso, summary_of


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
    """One run of one handler: when it started, how long it took, its error if it failed, and its span.

    `trace_id` and `span_id` (hex) name the run's span when the worker traced it (docs/tracing.md).
    """

    number: int
    started_ms: int
    duration_ms: float
    error: ErrorInfo | None
    trace_id: str | None = None
    span_id: str | None = None

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
    # Handler -> (why it waits: "paused", "tripped", "concurrency" or "rate"; since when, ms), for the
    # handlers that wait to start on this event (workers/runtime/protect.py).
    waiting: dict[str, tuple[str, int]] = field(default_factory=dict)

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
            "waiting": [
                {"handler": name, "reason": why, "since": iso(since)}
                for name, (why, since) in sorted(self.waiting.items())
            ],
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
                "trace_id": a.trace_id,
                "span_id": a.span_id,
            }
            for a in h.runs
        ],
        "next_at": iso(h.next_ms),
        "finished_at": iso(h.finished_ms),
        "first_error": _error_json(h.first_error),
        "last_error": _error_json(h.last_error),
        "replays": [r.at for r in h.replays],
    }


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


def _attempts(state: dict[str, Any]) -> tuple[Attempt, ...]:
    stored = state.get("runs")
    runs: list[list[Any]] = stored if isinstance(stored, list) else []
    # Each run is [start ms, duration ms, attempt number] and, when it failed, the error; a traced run
    # then has its trace id and span id (after a null when it did not fail).
    return tuple(
        Attempt(
            number=int(run[2]),
            started_ms=int(run[0]),
            duration_ms=float(run[1]),
            error=ErrorInfo.of(run[3] if len(run) > 3 else None),  # the error is the fourth item
            trace_id=str(run[4]) if len(run) > 5 else None,
            span_id=str(run[5]) if len(run) > 5 else None,
        )
        for run in runs
    )


def _waiting(entry: dict[str, str]) -> dict[str, tuple[str, int]]:
    """The `wait:<handler>` fields of an unfinished event whose handler has not run since."""
    if entry.get("state") in ("done", "dead", "purged"):
        return {}
    handlers = handlers_of(entry)
    waiting = {}
    for key, value in entry.items():
        name = key.removeprefix("wait:")
        why, _, since = value.partition(" ")
        if name != key and since.isdigit() and handlers.get(name, {}).get("state", "pending") == "pending":
            waiting[name] = (why, int(since))
    return waiting


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
        for name, h in sorted(handlers_of(entry).items())
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
        waiting=_waiting(entry),
    )
