"""`oa-webhooks status`: queue depth, lag, counters, workers and secrets at a glance.

Exit status 1 when no worker is alive or the lag passes `--max-lag-s`, so it doubles as a probe;
2 when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from service.ops.cli.handlers import handlers_table
from service.ops.cli.redis_access import operator_redis, operator_settings
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


def render(snapshot: Snapshot) -> Group:
    """The tables `status` prints."""
    s = snapshot
    queue_table = Table(
        "ready now",
        "scheduled (retry)",
        "in progress",
        "dead letters",
        "held (behind a dead one)",
        "lag (oldest ready)",
        title="Queue",
    )
    queue_table.add_row(
        str(s.ready),
        str(s.scheduled),
        str(s.in_progress),
        str(s.dead),
        f"{s.held} (oldest {s.oldest_held_age_s:.0f}s)" if s.held else "0",
        f"{s.oldest_ready_age_s:.1f}s",
    )
    types = sorted({t for name in _COUNTERS for t in s.per_type(name)})
    events = Table("events", *_COUNTERS, title=f"Events (last received: {_when(s.last_received_s, s.now_s)})")
    events.add_row("total", *(str(s.total(n)) for n in _COUNTERS))
    events.add_row("last 5 min", *(str(s.recent.get(n, 0)) for n in _COUNTERS))
    for event_type in types:
        events.add_row(event_type, *(str(s.per_type(n).get(event_type, 0)) for n in _COUNTERS))
    events.caption = (
        f"duplicates {s.total('duplicate')}, conflicts {s.total('conflict')}, "
        f"payloads not fitting their model {s.total('payload_mismatch')}"
    )
    workers = Table(
        "worker",
        "last heartbeat",
        "running",
        "complete",
        "failed",
        "retried",
        title=f"Live workers: {len(s.workers)}",
    )
    for w in s.workers:
        beat = int(w.get("heartbeat_ms", 0)) / 1000
        workers.add_row(
            w["id"],
            f"{s.now_s - beat:.1f}s ago",
            w.get("running", ""),
            w.get("jobs_complete", ""),
            w.get("jobs_failed", ""),
            w.get("jobs_retried", ""),
        )
    secrets = Table("secret (position in OA_WEBHOOK_SECRET)", "events verified", title="Secrets used")
    for index, count in sorted(s.per_type("secret").items()):
        secrets.add_row(f"#{int(index) + 1}", str(count))
    tables = [queue_table, events, workers]
    if s.handlers:
        tables.append(handlers_table(s.handlers))
    return Group(*tables, secrets)


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
                    live.update(render(asyncio.run(_snapshot(settings))), refresh=True)
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
        Console().print(render(snapshot))
        for problem in problems:
            typer.echo(f"UNHEALTHY: {problem}", err=True)
    raise typer.Exit(1 if problems else 0)
