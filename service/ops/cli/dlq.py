"""`oa-webhooks dlq`: list, show, replay and purge dead letters."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from service.ops.cli import render
from service.ops.cli.event_views import FINISHING_TEXT
from service.ops.cli.redis_access import operator_redis, operator_settings, run_writes
from service.store.dlq import DeadLetter, DeadLetters
from service.store.replay import ReplayResult, ReplayStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_enable=False, help="Inspect and replay dead letters."
)
T = TypeVar("T")
TypeOption = Annotated[str | None, typer.Option("--type", help="only events of this type")]


def _run(action: Callable[[DeadLetters], Awaitable[T]]) -> T:
    settings = operator_settings()

    async def go() -> T:
        async with operator_redis(settings) as redis:
            return await action(
                DeadLetters(
                    redis,
                    retention_s=settings.retention_s,
                    queue_expiry_ms=settings.queue_expiry_ms,
                    min_replicas=settings.redis_min_replicas,
                    timeout_s=settings.redis_timeout_s,
                )
            )

    return run_writes(go)


def _error(letter: DeadLetter, *, limit: int | None = None) -> str:
    error = letter.last_error
    text = "" if not error else f"{error.get('type', '')}: {error.get('message', '')}"
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


COLUMNS: tuple[render.Column[DeadLetter], ...] = (
    render.Column("id", "id", lambda x: x.id),
    render.Column("handler", "handler", lambda x: x.handler),
    render.Column("type", "type", lambda x: x.type, drop=2),
    render.Column("tries", "attempts", lambda x: str(x.attempts), justify="right", drop=3),
    # The table shows the start of the message; the tab-separated line has it whole.
    render.Column(
        "last error",
        "last_error",
        lambda x: _error(x, limit=80),
        _error,
        prose=True,
        min_width=24,
        max_width=40,
        drop=1,
    ),
    render.Column(
        "dead at (UTC)", "dead_at", lambda x: render.when(x.dead_at), lambda x: x.dead_at or "", drop=4
    ),
)


@app.command("list")
def list_(event_type: TypeOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One row per dead handler of each dead event, oldest first. Piped: tab-separated."""
    letters = _run(lambda dlq: dlq.letters(event_type=event_type))
    if as_json:
        typer.echo(json.dumps([x.summary() for x in letters], indent=2))
        return
    console = Console()
    render.print_rows(console, COLUMNS, letters)
    render.hint(console, f"{len(letters)} dead letter(s). Replay: oa-webhooks dlq replay ID (or --all)")


@app.command()
def show(event_id: Annotated[str, typer.Argument(help="the event id")]) -> None:
    """The whole ledger entry of one event: body, state, and each handler's attempts and errors."""
    entry = _run(lambda dlq: dlq.show(event_id))
    if entry is None:
        typer.echo(f"no event {event_id!r} in the ledger", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(entry, indent=2, ensure_ascii=False))


@app.command()
def replay(
    event_id: Annotated[str | None, typer.Argument(help="the event id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead event (of --type)")] = False,
    event_type: TypeOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be replayed")] = False,
) -> None:
    """Re-queue dead events for the handlers that failed; dedup does not block a replay."""
    if (event_id is None) == (not all_):
        raise typer.BadParameter("give an event ID or --all")

    async def go(dlq: DeadLetters) -> list[ReplayResult]:
        letters = await dlq.letters(event_type=event_type)
        ids = sorted({x.id for x in letters if all_ or x.id == event_id})
        if dry_run:
            return [
                ReplayResult(i, ReplayStatus.DRY_RUN, tuple(x.handler for x in letters if x.id == i))
                for i in ids
            ]
        now_ms = time.time_ns() // 1_000_000
        return [await dlq.replay_result(i, now_ms=now_ms) for i in ids]

    results = _run(go)
    done = [r for r in results if r.status in (ReplayStatus.REPLAYED, ReplayStatus.DRY_RUN) and r.handlers]
    finishing = [r.id for r in results if r.status is ReplayStatus.FINISHING]
    verb = "would replay" if dry_run else "replayed"
    for result in done:
        typer.echo(f"{verb} {result.id} for {', '.join(result.handlers)}")
    for event in finishing:
        typer.echo(f"not replayed {event}: {FINISHING_TEXT}", err=True)
    if event_id is not None and not done:
        if not finishing:
            typer.echo(f"{event_id!r} is not a dead letter", err=True)
        raise typer.Exit(1)
    typer.echo(f"{verb} {len(done)} event(s)" + (f"; {len(finishing)} {FINISHING_TEXT}" if finishing else ""))


@app.command()
def purge(
    event_id: Annotated[str | None, typer.Argument(help="the event id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead event")] = False,
    older_than: Annotated[float | None, typer.Option("--older-than", help="only dead for more DAYS")] = None,
) -> None:
    """Drop dead events' bodies and errors (a tombstone keeps dedup for the retention period)."""
    if (event_id is None) == (not all_):
        raise typer.BadParameter("give an event ID or --all")

    async def go(dlq: DeadLetters) -> list[str]:
        ids = (
            [event_id]
            if event_id
            else await dlq.ids(older_than_s=None if older_than is None else older_than * 86_400)
        )
        return [i for i in ids if await dlq.purge(i)]

    purged = _run(go)
    if event_id is not None and not purged:
        typer.echo(f"{event_id!r} is not a dead letter", err=True)
        raise typer.Exit(1)
    typer.echo(f"purged {len(purged)} event(s)")
