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
from rich.table import Table

from service.ops.cli.options import parse_duration_ms
from service.ops.cli.redis_access import operator_redis, operator_settings
from service.store.handlers import HandlerView, UnknownHandler, handler_views, pause, resume
from service.store.summary import iso

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

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


def handlers_table(views: list[HandlerView]) -> Table:
    """The `handlers` table (also under `status`)."""
    out = Table("handler", "state", "since (UTC)", "waiting", "running", "limits", title="Handlers")
    for v in views:
        limits = ", ".join(
            part
            for part in (
                f"concurrency {v.concurrency}" if v.concurrency else "",
                f"rate {v.rate}" if v.rate else "",
                "" if v.breaker else "no breaker",
            )
            if part
        )
        state = v.state + (f" until {iso(v.until_ms)}" if v.until_ms else "")
        out.add_row(
            v.name,
            f"[{_STYLE[v.state]}]{state}[/]",
            iso(v.since_ms) or "",
            str(v.waiting),
            "" if v.running is None else str(v.running),
            limits or "-",
        )
    return out


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
    if not views:
        typer.echo("no handlers yet: a worker lists its handlers when it starts")
        return
    Console().print(handlers_table(views))


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
