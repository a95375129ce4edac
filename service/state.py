"""What the API holds for its lifetime: opened in lifespan, reached by requests through app state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.requests import Request

    from service.ledger import Ledger
    from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Runtime:
    """The settings and the Redis connections of one API process."""

    settings: Settings
    redis: Redis
    ledger: Ledger


def runtime_of(request: Request) -> Runtime:
    """The process's `Runtime`, set by the app's lifespan."""
    return cast("Runtime", request.app.state.runtime)
