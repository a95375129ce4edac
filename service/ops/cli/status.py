"""`oa-webhooks status`: queue depth, lag, counters, workers and secrets at a glance.

Exit status 1 when no worker is alive or the lag passes `--max-lag-s`, so it doubles as a probe;
2 when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.live import Live

from service.ops.cli.handlers import handlers_table
from service.ops.cli.redis_access import operator_redis, operator_settings
from service.ops.cli.render import Column, fitted_table
from service.store.stats import Snapshot, read_snapshot

if TYPE_CHECKING:
    from service.settings import OperatorSettings

_COUNTERS = ("received", "processed", "retried", "failed", "unhandled")


async def _snapshot(settings: OperatorSettings) -> Snapshot:
    async with operator_redis(settings) as redis:
        return await read_snapshot(redis, heartbeat_interval_s=settings.heartbeat_interval_s)


def _when(epoch_s: float | None, now_s: float) -> str:
    if epoch_s is None:
        return "never"
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({now_s - epoch_s:.0f}s ago)"


Counts = tuple[str, dict[str, int]]  # a row of the events table: its label, and a count per counter
# Narrow terminals lose these counters first (unhandled first), never the event type.
_DROP = {"retried": 2, "unhandled": 3}


def _queue(s: Snapshot) -> list[tuple[str, str]]:
    """The queue, one line per figure: it reads at any width."""
    return [
        ("ready now", str(s.ready)),
        ("scheduled (retry, order)", str(s.scheduled)),
        ("in progress", str(s.in_progress)),
        ("dead letters", str(s.dead)),
        ("held (behind a dead one)", f"{s.held} (oldest {s.oldest_held_age_s:.0f}s)" if s.held else "0"),
        ("lag (oldest ready)", f"{s.oldest_ready_age_s:.1f}s"),
    ]


_QUEUE_COLUMNS: tuple[Column[tuple[str, str]], ...] = (
    Column("", "figure", lambda row: row[0], wrap=True),
    Column("", "value", lambda row: row[1]),
)


def _counter(name: str) -> Column[Counts]:
    return Column(name, name, lambda row: str(row[1][name]), justify="right", drop=_DROP.get(name, 0))


def _worker_columns(now_s: float) -> tuple[Column[dict[str, Any]], ...]:
    def beat(worker: dict[str, Any]) -> str:
        return f"{now_s - int(worker.get('heartbeat_ms', 0)) / 1000:.1f}s ago"

    def count(header: str, field: str, drop: int = 0) -> Column[dict[str, Any]]:
        return Column(header, field, lambda w: str(w.get(field, "")), justify="right", drop=drop)

    return (
        Column("worker", "id", lambda w: str(w["id"])),
        Column("last heartbeat", "heartbeat", beat),
        count("running", "running"),
        count("complete", "jobs_complete", 1),
        count("failed", "jobs_failed", 2),
        count("retried", "jobs_retried", 3),
    )


_SECRET_COLUMNS: tuple[Column[tuple[str, int]], ...] = (
    Column("secret (position in OA_WEBHOOK_SECRET)", "secret", lambda row: f"#{int(row[0]) + 1}", wrap=True),
    Column("events verified", "events", lambda row: str(row[1]), justify="right", wrap=True),
)


def tables(snapshot: Snapshot, console: Console) -> Group:
    """The tables `status` prints, each fitted to `console`'s width (worker ids and types whole)."""
    s = snapshot
    rows: list[Counts] = [
        ("total", {n: s.total(n) for n in _COUNTERS}),
        ("last 5 min", {n: s.recent.get(n, 0) for n in _COUNTERS}),
    ]
    types = sorted({t for name in _COUNTERS for t in s.per_type(name)})
    rows += [(t, {n: s.per_type(n).get(t, 0) for n in _COUNTERS}) for t in types]
    label: Column[Counts] = Column("events", "events", lambda row: row[0])
    event_columns = (label, *map(_counter, _COUNTERS))
    return Group(
        fitted_table(console, _QUEUE_COLUMNS, _queue(s), title="Queue", show_header=False),
        fitted_table(
            console,
            event_columns,
            rows,
            title=f"Events (last received: {_when(s.last_received_s, s.now_s)})",
            caption=(
                f"duplicates {s.total('duplicate')}, conflicts {s.total('conflict')}, "
                f"payloads not fitting their model {s.total('payload_mismatch')}"
            ),
        ),
        fitted_table(console, _worker_columns(s.now_s), s.workers, title=f"Live workers: {len(s.workers)}"),
        *([handlers_table(s.handlers, console)] if s.handlers else []),
        fitted_table(console, _SECRET_COLUMNS, sorted(s.per_type("secret").items()), title="Secrets used"),
    )


def _verdict(snapshot: Snapshot, max_lag_s: float | None) -> list[str]:
    problems = []
    if not snapshot.workers:
        problems.append("no worker is alive")
    if max_lag_s is not None and snapshot.oldest_ready_age_s > max_lag_s:
        problems.append(f"lag {snapshot.oldest_ready_age_s:.1f}s is over {max_lag_s}s")
    return problems


def status(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    watch: Annotated[float | None, typer.Option(help="redraw every SECONDS (default 2) until Ctrl-C")] = None,
    max_lag_s: Annotated[float | None, typer.Option("--max-lag-s", help="exit 1 past this lag")] = None,
) -> None:
    """Queue depth, lag, event counts (total, per type, last 5 min), live workers, secrets used."""
    settings = operator_settings()
    try:
        if watch:
            with Live(auto_refresh=False) as live:
                while True:
                    live.update(tables(asyncio.run(_snapshot(settings)), live.console), refresh=True)
                    time.sleep(watch)
        snapshot = asyncio.run(_snapshot(settings))
    except (RedisError, OSError) as exc:
        typer.echo(f"cannot read Redis ({type(exc).__name__}); is REDIS_URL right and Redis up?", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    problems = _verdict(snapshot, max_lag_s)
    if as_json:
        typer.echo(json.dumps(snapshot.as_json(), indent=2))
    else:
        console = Console()
        console.print(tables(snapshot, console))
        for problem in problems:
            typer.echo(f"UNHEALTHY: {problem}", err=True)
    raise typer.Exit(1 if problems else 0)
