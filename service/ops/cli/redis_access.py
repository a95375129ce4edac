"""How the operator commands (`status`, `dlq`, `events`) reach Redis: no webhook secret, one client a run."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from service.settings import OperatorSettings, Settings, load_operator_settings_or_exit
from service.store import queue
from service.store.batching import NotReplicated

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from redis.asyncio import Redis

T = TypeVar("T")


def operator_settings() -> OperatorSettings:
    """The settings, read as an operator's laptop has them (only `REDIS_URL`); exit 2 if invalid."""
    return load_operator_settings_or_exit()


@asynccontextmanager
async def operator_redis(settings: Settings) -> AsyncIterator[Redis]:
    """A Redis client for one command, closed when it is done; with Sentinel, on the current primary."""
    redis = queue.connect(
        settings.redis_url.get_secret_value(), timeout_s=settings.redis_timeout_s, sentinel=settings.sentinel
    )
    try:
        yield redis
    finally:
        await redis.aclose()


def run_writes(go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command that writes (replay, purge); a write the replicas did not confirm ends it, exit 1.

    With `OA_REDIS_MIN_REPLICAS`, each replay or purge returns once that many replicas hold it, as
    ingest's 202 does; the first that is not confirmed stops the command (the ones before it are).
    """
    try:
        return asyncio.run(go())
    except NotReplicated as exc:
        typer.echo(
            f"oa-webhooks: stopped, not confirmed by the replicas (OA_REDIS_MIN_REPLICAS): {exc}. "
            "The primary has it, but a failover before a replica catches up could undo it. Check the "
            "replicas (redis-cli INFO replication), then see where it stands with oa-webhooks events "
            "show ID; run the command again once they confirm (what is done is skipped).",
            err=True,
        )
        raise typer.Exit(1) from None
