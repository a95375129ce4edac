"""The filter options of `oa-webhooks events list` and `events replay`, parsed and checked.

A bad value is a usage error (exit 2) with a line that says what is accepted: each parser raises
`typer.BadParameter`, which typer turns into exactly that.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from service.store.history import FILTER_STATES, EventState, Filters, valid_type_pattern
from service.store.summary import DEFAULT_LIMIT, parse_cursor

_DURATION = re.compile(r"(\d+)(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # what the ledger indexes (service/store/ledger.py)
_RATE = re.compile(r"(\d+(?:\.\d+)?)(?:/s)?")
TIME_HELP = "a duration such as 15m, 2h or 7d (that long ago), or an ISO-8601 time such as 2026-03-01T08:00Z"


def parse_time_ms(value: str, *, now_ms: int | None = None) -> int:
    """`15m`, `2h`, `7d`, `1w`, `30s` ago, or an ISO-8601 time (UTC when it has no offset), in ms."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    text = value.strip()
    if match := _DURATION.fullmatch(text):
        return now - int(match[1]) * _UNIT_S[match[2]] * 1000
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a time: give {TIME_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_duration_ms(value: str) -> int:
    """`30s`, `15m`, `2h`, `7d`, `1w`: a length of time, in ms, more than 0."""
    match = _DURATION.fullmatch(value.strip())
    if not match or int(match[1]) == 0:
        raise typer.BadParameter(f"{value!r} is not a duration: give one such as 30m, 2h or 1d")
    return int(match[1]) * _UNIT_S[match[2]] * 1000


def parse_rate(value: str) -> float:
    """`50`, `50/s` or `2.5/s`: replays per second, more than 0."""
    match = _RATE.fullmatch(value.strip())
    if not match or float(match[1]) <= 0:
        raise typer.BadParameter(f"{value!r} is not a rate: give replays per second, such as 50/s or 10")
    return float(match[1])


def _state(value: str | None) -> EventState | None:
    if value is None:
        return None
    if value not in FILTER_STATES:
        raise typer.BadParameter(f"{value!r} is not a state: one of {', '.join(FILTER_STATES)}")
    return EventState(value)


def _types(values: list[str] | None) -> tuple[str, ...]:
    for value in values or []:
        if not valid_type_pattern(value):
            raise typer.BadParameter(
                f"{value!r} is not an event type: give a type such as lead.paid, a wildcard such as "
                "lead.*, or *"
            )
    return tuple(values or ())


def _id(value: str | None, what: str) -> str | None:
    if value is not None and not _ID.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not a {what} id: a number such as 12345 (or a short token)")
    return value


def _cursor(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_cursor(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


TypeOpt = Annotated[
    list[str] | None,
    typer.Option("--type", help="event type, or a wildcard as in on(): lead.*, *; repeat for several"),
]
StateOpt = Annotated[str | None, typer.Option("--state", help=f"one of {', '.join(FILTER_STATES)}")]
LeadOpt = Annotated[
    str | None, typer.Option("--lead", metavar="N", help="events whose payload names this lead_id")
]
InvoiceOpt = Annotated[
    str | None, typer.Option("--invoice", metavar="N", help="events whose payload names this invoice_id")
]
SinceOpt = Annotated[str | None, typer.Option("--since", help=f"received at or after: {TIME_HELP}")]
UntilOpt = Annotated[str | None, typer.Option("--until", help=f"received at or before: {TIME_HELP}")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="continue after the page that printed it")]


def build_filters(
    *,
    types: list[str] | None,
    state: str | None,
    lead: str | None,
    invoice: str | None,
    since: str | None,
    until: str | None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Filters:
    """The `Filters` the options ask for; a bad value raises `typer.BadParameter` (exit 2)."""
    now_ms = time.time_ns() // 1_000_000
    return Filters(
        types=_types(types),
        state=_state(state),
        lead=_id(lead, "lead"),
        invoice=_id(invoice, "invoice"),
        since_ms=None if since is None else parse_time_ms(since, now_ms=now_ms),
        until_ms=None if until is None else parse_time_ms(until, now_ms=now_ms),
        limit=limit,
        cursor=_cursor(cursor),
    )
