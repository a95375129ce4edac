"""How the operator commands (`status`, `dlq`, `events`) reach Redis: no webhook secret, one client a run."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from service.settings import OperatorSettings, Settings, load_operator_settings_or_exit
from service.store import queue

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis


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
