"""`oa-webhooks events`: list, show and replay any event in the ledger (service/store/history.py)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.ops.cli import event_views, render
from service.ops.cli.options import (
    CursorOpt,
    InvoiceOpt,
    LeadOpt,
    SinceOpt,
    StateOpt,
    TypeOpt,
    UntilOpt,
    build_filters,
    parse_rate,
)
from service.ops.cli.redis_access import operator_redis, operator_settings, run_writes
from service.store.history import (
    FINAL_STATES,
    Filters,
    Replayer,
    ReplayResult,
    ReplayStatus,
    iter_events,
    list_events,
    show_event,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

    from service.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find any event, see what happened to it, and replay it (or backfill a handler).",
)
T = TypeVar("T")
_HANDLER_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_<>][\w<>]*)+")


def _settings() -> Settings:
    """The settings of every `events` command: as `dlq` and `status`, only REDIS_URL is needed."""
    return operator_settings()


def _run(action: Callable[[Redis, Settings], Awaitable[T]]) -> T:
    settings = _settings()

    async def go() -> T:
        async with operator_redis(settings) as redis:
            return await action(redis, settings)

    return run_writes(go)


@app.command("list")
def list_(  # noqa: PLR0917 - typer: one parameter per option
    types: TypeOpt = None,
    state: StateOpt = None,
    lead: LeadOpt = None,
    invoice: InvoiceOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="at most this many")] = 50,
    cursor: CursorOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array instead of a table")] = False,
) -> None:
    """Events, newest first; the filters combine. With --lead, the lead's timeline. Piped: tab-separated."""
    filters = build_filters(
        types=types,
        state=state,
        lead=lead,
        invoice=invoice,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
    page = _run(lambda redis, _: list_events(redis, filters))
    console = Console()
    if as_json:
        typer.echo(json.dumps([e.to_json() for e in page.events], indent=2))
    elif lead is not None:
        event_views.print_timeline(console, lead, page.events[::-1])
    else:
        event_views.print_events(console, page.events)
        render.hint(console, f"{len(page.events)} event(s). Details: oa-webhooks events show ID")
    if page.next_cursor:  # on stderr where stdout is for scripts, so that the rows stay rows
        typer.echo(f"more: --cursor {page.next_cursor}", err=as_json or not console.is_terminal)


@app.command()
def show(
    event_id: Annotated[str, typer.Argument(help="the event id")],
    as_json: Annotated[bool, typer.Option("--json", help="the record as JSON")] = False,
) -> None:
    """The whole record: body, secret, times, and per handler every attempt (and trace), error and replay."""
    record = _run(lambda redis, _: show_event(redis, event_id))
    if record is None:
        typer.echo(f"no event {event_id!r} in the ledger (unknown, or expired after the retention)", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(record.to_json(), indent=2, ensure_ascii=False))
        return
    event_views.record(Console(), record, trace_url_template=_settings().trace_url_template)


def _check_handler(name: str, settings: Settings) -> None:
    """Refuse a NAME that is not a registered handler's dotted name (exit 2, with the names)."""
    if not _HANDLER_NAME.fullmatch(name):
        raise typer.BadParameter(f"{name!r} is not a handler name: the dotted name `events show` prints")
    from workers.registry import load_handlers  # noqa: PLC0415 - only --handler needs the handler modules

    known = sorted(h.name for h in load_handlers(settings.handlers_package))
    if name not in known:
        raise typer.BadParameter(
            f"no handler {name!r} in {settings.handlers_package}; there are: {', '.join(known)}"
        )


async def _targets(redis: Redis, ids: list[str], filters: Filters | None) -> tuple[list[str], int]:
    """The ids to replay and how many selected events were passed over for not being finished."""
    if filters is None:
        return ids, 0
    chosen, unfinished = [], 0
    async for event in iter_events(redis, filters):
        if event.state in FINAL_STATES:
            chosen.append(event.id)
        else:
            unfinished += 1
    return chosen, unfinished


@app.command()
def replay(  # noqa: PLR0917 - typer: one parameter per option
    event_ids: Annotated[
        list[str] | None, typer.Argument(help="event ids (or select them with filters)")
    ] = None,
    types: TypeOpt = None,
    state: StateOpt = None,
    lead: LeadOpt = None,
    invoice: InvoiceOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    handler: Annotated[
        str | None, typer.Option("--handler", metavar="NAME", help="run only this handler (as show names it)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would run; change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask before a bulk replay")] = False,
    rate: Annotated[str, typer.Option("--rate", metavar="N/s", help="at most N replays a second")] = "50/s",
) -> None:
    """Re-run handlers of finished events (done, dead, unhandled) through the queue, as live events run."""
    per_s = parse_rate(rate)
    given = [types, state, lead, invoice, since, until]
    filters = None
    if any(x is not None for x in given):
        if event_ids:
            raise typer.BadParameter("give event IDs or filters (--type, --state, ...), not both")
        filters = build_filters(
            types=types, state=state, lead=lead, invoice=invoice, since=since, until=until
        )
    elif not event_ids:
        raise typer.BadParameter("give event IDs, or filters such as --type invoice.paid --since 30d")
    settings = _settings()
    if handler is not None:
        _check_handler(handler, settings)

    async def go(redis: Redis, settings: Settings) -> None:
        ids, unfinished = await _targets(redis, event_ids or [], filters)
        replayer = Replayer(
            redis,
            queue_expiry_ms=settings.queue_expiry_ms,
            min_replicas=settings.redis_min_replicas,
            timeout_s=settings.redis_timeout_s,
        )
        bulk = filters is not None or len(ids) > 1
        if dry_run or (bulk and not yes):
            planned = await replayer.replay_many(ids, handler=handler, dry_run=True)
            typer.echo(event_views.replay_plan(planned, unfinished=unfinished, dry_run=dry_run))
            if dry_run or not any(r.status is ReplayStatus.DRY_RUN for r in planned):
                _exit_if_single_refused(event_ids, filters, planned)
                return
            typer.confirm("Replay them?", abort=True)
            ids = [r.id for r in planned if r.status is ReplayStatus.DRY_RUN]
        results = await _replay_with_progress(replayer, ids, handler=handler, rate_per_s=per_s)
        typer.echo(event_views.replay_done(results, unfinished=unfinished))
        _exit_if_single_refused(event_ids, filters, results)

    _run(go)


def _exit_if_single_refused(
    ids: list[str] | None, filters: Filters | None, results: list[ReplayResult]
) -> None:
    if (
        filters is None
        and ids
        and not any(r.status in (ReplayStatus.REPLAYED, ReplayStatus.DRY_RUN) for r in results)
    ):
        raise typer.Exit(1)


async def _replay_with_progress(
    replayer: Replayer, ids: list[str], *, handler: str | None, rate_per_s: float
) -> list[ReplayResult]:
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("replay", total=len(ids))
        return await replayer.replay_many(
            ids, handler=handler, rate_per_s=rate_per_s, on_result=lambda _: progress.advance(task)
        )
