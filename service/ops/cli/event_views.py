"""How `oa-webhooks events` prints: the list, a lead's timeline, one whole record, replay summaries."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.text import Text

from service.ops.cli.render import Column, print_rows, when
from service.store.handlers import WAIT_REASONS
from service.store.history import LEAD_STAGES, EventState, ReplayStatus, iso
from service.tracing import trace_url

if TYPE_CHECKING:
    from rich.console import Console

    from service.store.history import Attempt, EventRecord, EventSummary, ReplayResult

_STYLE = {
    EventState.DONE: "green",
    EventState.DEAD: "red",
    EventState.RETRYING: "yellow",
    EventState.RUNNING: "cyan",
    EventState.QUEUED: "cyan",
    EventState.UNHANDLED: "dim",
    EventState.PURGED: "dim",
}


def _state(event: EventSummary) -> Text:
    return Text(event.state.value + (" (held)" if event.held else ""), style=_STYLE[event.state])


def _handlers(event: EventSummary, *, whole: bool) -> str:
    """Each handler's state; the table names a handler by its module and function (`leads.log_lead`)."""
    return ", ".join(
        f"{name if whole else '.'.join(name.split('.')[-2:])}: {state}"
        for name, state in sorted(event.handlers.items())
    )


EVENT_COLUMNS: tuple[Column[EventSummary], ...] = (
    Column("id", "id", lambda e: e.id),
    Column("type", "type", lambda e: e.type),
    Column("state", "state", _state, wrap=True),
    Column("received (UTC)", "received_at", lambda e: when(e.received_at), lambda e: e.received_at, drop=1),
    Column("lead", "lead_id", lambda e: e.lead_id or "", drop=2),
    Column("invoice", "invoice_id", lambda e: e.invoice_id or "", drop=5),
    Column("tries", "attempts", lambda e: str(e.attempts), justify="right", drop=4),
    Column(
        "handlers",
        "handlers",
        lambda e: _handlers(e, whole=False),
        lambda e: _handlers(e, whole=True),
        drop=3,
        wrap=True,
    ),
)


def print_events(console: Console, events: list[EventSummary]) -> None:
    """`events list`: newest first."""
    print_rows(console, EVENT_COLUMNS, events)


def print_timeline(console: Console, lead_id: str, events: list[EventSummary]) -> None:
    """A lead's timeline, oldest first: created -> sold -> invoiced -> paid, with each handler's outcome."""
    reached = {e.type: e.state for e in events}
    steps = " -> ".join(
        f"{stage.removeprefix('lead.')} ({reached[stage].value})"
        if stage in reached
        else f"{stage.removeprefix('lead.')} (not yet)"
        for stage in LEAD_STAGES
    )
    print_rows(console, EVENT_COLUMNS, events, title=f"lead {lead_id}: {steps}")


def _waits(console: Console, rec: EventRecord) -> None:
    """Which handlers wait to start on the event, and why (issue 20's protection)."""
    for name, (why, since) in sorted(rec.waiting.items()):
        console.print(f"[yellow]waiting[/yellow]: {name} {WAIT_REASONS.get(why, why)}, since {iso(since)}")


def _attempt(console: Console, a: Attempt, trace_url_template: str) -> None:
    """One attempt: start, duration, outcome; its trace (a link with OA_TRACE_URL_TEMPLATE); its traceback."""
    outcome = "ok" if a.error is None else f"{a.error.type}: {a.error.message}"
    console.print(f"  attempt {a.number}  {a.started_at}  {a.duration_ms:.1f} ms  {outcome}", markup=False)
    if a.trace_id is not None:
        link = trace_url(trace_url_template, a.trace_id, a.span_id or "") or a.trace_id
        # Unwrapped: a trace link cut in two would not open.
        console.print(f"    trace {link}", markup=False, soft_wrap=True)
    if a.error is not None and a.error.traceback:
        console.print(_indent(a.error.traceback), markup=False, highlight=False, style="dim")


def record(console: Console, rec: EventRecord, *, trace_url_template: str = "") -> None:
    """`events show`: the whole record."""
    s = rec.summary
    secret = "unknown" if rec.secret_index is None else f"#{rec.secret_index + 1} of OA_WEBHOOK_SECRET"
    console.print(f"[bold]{s.id}[/bold]  {s.type}  [{_STYLE[s.state]}]{s.state.value}[/]")
    if s.held:
        console.print(
            f"[red]held[/red]: ordered handler {s.held['handler']} waits for {s.held['behind']}, which is "
            "dead (replay it) or held itself"
        )
    _waits(console, rec)
    for label, value in (
        ("received", s.received_at),
        ("queued", iso(rec.queued_ms)),
        ("started", iso(rec.started_ms)),
        ("finished", iso(rec.finished_ms)),
        ("secret", secret),
        ("sha256", rec.sha256),
        ("lead", s.lead_id),
        ("invoice", s.invoice_id),
    ):
        if value:
            console.print(f"  {label:<9} {value}")
    console.print("body:", style="bold")
    console.print(rec.body_text, markup=False, highlight=False)
    for h in rec.handlers:
        console.print(f"handler [bold]{h.name}[/bold]: {h.state}, {h.attempts} attempt(s)")
        if h.runs and h.runs[0].number > 1:
            console.print(f"  (the last {len(h.runs)} attempts are kept)")
        for a in h.runs:
            _attempt(console, a, trace_url_template)
        for r in h.replays:
            console.print(f"  replayed {r.at}")
    for r in rec.replays:
        which = ", ".join(r.handlers) if r.handlers else "every handler of its type"
        console.print(f"replay {r.at}: {which}", markup=False)


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.rstrip().splitlines())


def _which(results: list[ReplayResult], status: ReplayStatus) -> str:
    counts = Counter(
        ", ".join(r.handlers) or "every handler of its type" for r in results if r.status is status
    )
    return "; ".join(f"{handlers} ({n})" for handlers, n in sorted(counts.items()))


FINISHING_TEXT = "still being finished by a worker (replay again in a moment)"


def _skipped(results: list[ReplayResult], unfinished: int) -> str:
    not_final = unfinished + sum(r.status is ReplayStatus.NOT_FINAL for r in results)
    missing = sum(r.status is ReplayStatus.MISSING for r in results)
    finishing = sum(r.status is ReplayStatus.FINISHING for r in results)
    parts = [f"{not_final} not finished (queued, running or retrying) or purged"] if not_final else []
    parts += [f"{finishing} {FINISHING_TEXT}"] if finishing else []
    parts += [f"{missing} not in the ledger"] if missing else []
    return f"; skipped {', '.join(parts)}" if parts else ""


def replay_plan(results: list[ReplayResult], *, unfinished: int, dry_run: bool) -> str:
    """What a replay would do: how many events, which handlers."""
    count = sum(r.status is ReplayStatus.DRY_RUN for r in results)
    verb = "would replay" if dry_run else "will replay"
    handlers = _which(results, ReplayStatus.DRY_RUN)
    return f"{verb} {count} event(s){': ' + handlers if handlers else ''}{_skipped(results, unfinished)}"


def replay_done(results: list[ReplayResult], *, unfinished: int) -> str:
    """What a replay did."""
    count = sum(r.status is ReplayStatus.REPLAYED for r in results)
    handlers = _which(results, ReplayStatus.REPLAYED)
    return f"replayed {count} event(s){': ' + handlers if handlers else ''}{_skipped(results, unfinished)}"
