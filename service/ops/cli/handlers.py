"""`oa-webhooks handlers`: every handler the workers registered, its state and limits; pause and resume.

A pause is kept in Redis (service/store/handlers.py): it holds across worker restarts and for every
worker at once. A paused handler's events wait, using no try; the other handlers of those events run.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from service.ops.cli.options import parse_duration_ms
from service.ops.cli.redis_access import operator_redis, operator_settings
from service.ops.cli.render import Column, fitted_table, print_rows, when
from service.store.handlers import HandlerView, UnknownHandler, handler_views, pause, resume
from service.store.summary import iso

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis
    from rich.table import Table

app = typer.Typer(
    pretty_exceptions_enable=False,
    help="List the handlers (state, waiting events, limits); pause or resume one for every worker.",
)
T = TypeVar("T")
_STYLE = {"active": "green", "paused": "yellow", "tripped": "red"}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _run(action: Callable[[Redis], Awaitable[T]]) -> T:
    settings = operator_settings()

    async def go() -> T:
        async with operator_redis(settings) as redis:
            return await action(redis)

    return asyncio.run(go())


def _limits(v: HandlerView) -> str:
    parts = [
        f"concurrency {v.concurrency}" if v.concurrency else "",
        f"rate {v.rate}" if v.rate else "",
        "" if v.breaker else "no breaker",
    ]
    return ", ".join(p for p in parts if p) or "-"


def _state(v: HandlerView) -> Text:
    until = f" until {when(iso(v.until_ms))}" if v.until_ms else ""
    return Text(v.state + until, style=_STYLE[v.state])


COLUMNS: tuple[Column[HandlerView], ...] = (
    Column("handler", "name", lambda v: v.name),
    Column("state", "state", _state, value=lambda v: v.state),
    Column("waiting", "waiting", lambda v: str(v.waiting), justify="right"),
    Column(
        "since (UTC)", "since", lambda v: when(iso(v.since_ms)), value=lambda v: iso(v.since_ms) or "", drop=1
    ),
    Column(
        "running", "running", lambda v: "" if v.running is None else str(v.running), justify="right", drop=3
    ),
    Column("limits", "limits", _limits, wrap=True, drop=2),
)


def handlers_table(views: list[HandlerView], console: Console) -> Table:
    """The handlers as a table fitted to `console` (also under `status`): names are never cut."""
    return fitted_table(console, COLUMNS, views, title="Handlers")


@app.callback(invoke_without_command=True)
def handlers(
    context: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array instead of a table")] = False,
) -> None:
    """Every registered handler: active, paused or tripped, since when, events waiting, limits."""
    if context.invoked_subcommand is not None:
        return
    views = _run(lambda redis: handler_views(redis, now_ms=_now_ms()))
    if as_json:
        typer.echo(json.dumps([v.to_json() for v in views], indent=2))
        return
    console = Console()
    if not views:
        typer.echo("no handlers yet: a worker lists its handlers when it starts", err=not console.is_terminal)
        return
    print_rows(console, COLUMNS, views)


def _unknown(exc: UnknownHandler) -> typer.Exit:
    typer.echo(f"oa-webhooks handlers: {exc}", err=True)
    return typer.Exit(1)


@app.command("pause")
def pause_(
    name: Annotated[str, typer.Argument(help="the handler's full name, as `handlers` lists it")],
    for_: Annotated[
        str | None, typer.Option("--for", metavar="DURATION", help="end the pause after 30m, 2h, 1d...")
    ] = None,
) -> None:
    """Pause a handler on every worker (until `resume`, or for DURATION): its events wait, using no try."""
    until_ms = None if for_ is None else _now_ms() + parse_duration_ms(for_)
    try:
        _run(lambda redis: pause(redis, name, now_ms=_now_ms(), until_ms=until_ms))
    except UnknownHandler as exc:
        raise _unknown(exc) from None
    ends = f"until {iso(until_ms)}" if until_ms else "until `oa-webhooks handlers resume " + name + "`"
    typer.echo(f"paused {name} {ends}; its events wait, and its other events' handlers run")


@app.command("resume")
def resume_(name: Annotated[str, typer.Argument(help="the handler's full name")]) -> None:
    """End a handler's pause: the events that waited for it run now."""
    try:
        woken = _run(lambda redis: resume(redis, name, now_ms=_now_ms()))
    except UnknownHandler as exc:
        raise _unknown(exc) from None
    typer.echo(f"resumed {name}; {woken} waiting events are due now")
