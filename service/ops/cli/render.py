"""How `oa-webhooks events` prints: the list table, a lead's timeline, one record, replay summaries."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from service.store.handlers import WAIT_REASONS
from service.store.history import LEAD_STAGES, EventState, ReplayStatus, iso

if TYPE_CHECKING:
    from rich.console import Console

    from service.store.history import EventRecord, EventSummary, ReplayResult

_STYLE = {
    EventState.DONE: "green",
    EventState.DEAD: "red",
    EventState.RETRYING: "yellow",
    EventState.RUNNING: "cyan",
    EventState.QUEUED: "cyan",
    EventState.UNHANDLED: "dim",
    EventState.PURGED: "dim",
}


def _handlers(event: EventSummary) -> str:
    return ", ".join(f"{name.rsplit('.', 1)[-1]}: {state}" for name, state in sorted(event.handlers.items()))


def _state(event: EventSummary) -> Text:
    return Text(event.state.value + (" (held)" if event.held else ""), style=_STYLE[event.state])


def table(events: list[EventSummary]) -> Table:
    """The `events list` table."""
    out = Table("id", "type", "state", "received (UTC)", "lead", "invoice", "attempts", "handlers")
    for e in events:
        out.add_row(
            e.id,
            e.type,
            _state(e),
            e.received_at,
            e.lead_id or "",
            e.invoice_id or "",
            str(e.attempts),
            _handlers(e),
        )
    return out


def timeline(lead_id: str, events: list[EventSummary]) -> Table:
    """A lead's timeline, oldest first: created -> sold -> invoiced -> paid, with each handler's outcome."""
    reached = {e.type: e.state for e in events}
    steps = " -> ".join(
        f"{stage.removeprefix('lead.')} ({reached[stage].value})"
        if stage in reached
        else f"{stage.removeprefix('lead.')} (not yet)"
        for stage in LEAD_STAGES
    )
    out = Table("received (UTC)", "type", "id", "state", "handlers", title=f"lead {lead_id}: {steps}")
    for e in events:
        out.add_row(e.received_at, e.type, e.id, _state(e), _handlers(e))
    return out


def record(console: Console, rec: EventRecord) -> None:
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
            outcome = "ok" if a.error is None else f"{a.error.type}: {a.error.message}"
            console.print(
                f"  attempt {a.number}  {a.started_at}  {a.duration_ms:.1f} ms  {outcome}", markup=False
            )
            if a.error is not None and a.error.traceback:
                console.print(_indent(a.error.traceback), markup=False, highlight=False, style="dim")
        for r in h.replays:
            console.print(f"  replayed {r.at}")
    for r in rec.replays:
        which = ", ".join(r.handlers) if r.handlers else "every handler of its type"
        console.print(f"replay {r.at}: {which}", markup=False)


def _waits(console: Console, rec: EventRecord) -> None:
    for name, (why, since) in sorted(rec.waiting.items()):
        console.print(f"[yellow]waiting[/yellow]: {name} {WAIT_REASONS.get(why, why)}, since {iso(since)}")


def _indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.rstrip().splitlines())


def _which(results: list[ReplayResult], status: ReplayStatus) -> str:
    counts = Counter(
        ", ".join(r.handlers) or "every handler of its type" for r in results if r.status is status
    )
    return "; ".join(f"{handlers} ({n})" for handlers, n in sorted(counts.items()))


def _skipped(results: list[ReplayResult], unfinished: int) -> str:
    not_final = unfinished + sum(r.status is ReplayStatus.NOT_FINAL for r in results)
    missing = sum(r.status is ReplayStatus.MISSING for r in results)
    parts = [f"{not_final} not finished (queued, running or retrying) or purged"] if not_final else []
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
